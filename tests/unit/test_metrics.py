"""``/metrics`` as a Prometheus client reads it: the text of a real controller (and of a
stand-alone sink) parsed with ``prometheus_client``'s own parser, its names, types and labels
as documented, its values moving as ADS and access-log events happen, and one registry per
controller so several run side by side in one process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from controlplane.analytics.scope import Scope
from controlplane.analytics.sink import AccessLogSink
from controlplane.api.app import create_health_app
from controlplane.controller import Controller
from controlplane.metrics import CONTENT_TYPE, Registry
from controlplane.settings import Settings
from controlplane.store import Store
from tests.unit.test_sink_scope import _entry, _policy

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"

#: family name (as the parser names it: counters without ``_total``) -> (type, label names)
CONTROLLER_FAMILIES = {
    "gateway_policy_checks": ("counter", {"result"}),
    "gateway_policy_check_seconds": ("histogram", {"stage"}),
    "gateway_xds_pushes": ("counter", {"gateway", "type"}),
    "gateway_xds_acks": ("counter", {"gateway", "type"}),
    "gateway_xds_nacks": ("counter", {"gateway", "type"}),
    "gateway_xds_rollbacks_refused": ("counter", {"gateway"}),
    "gateway_xds_push_latency_seconds": ("histogram", {"type"}),
    "gateway_connected_proxies": ("gauge", {"gateway"}),
    "gateway_policy_revision": ("gauge", set()),
    "gateway_store_refusals": ("gauge", set()),
    "gateway_streams_held": ("gauge", set()),
    "gateway_xds_tls_handshakes": ("gauge", set()),
    "gateway_xds_streams_refused": ("gauge", set()),
    "gateway_xds_initial_syncs_in_flight": ("gauge", set()),
    "gateway_xds_initial_syncs_waiting": ("gauge", set()),
    "gateway_xds_initial_syncs_peak": ("gauge", set()),
    "gateway_xds_initial_syncs_queued": ("gauge", set()),
    "gateway_xds_initial_sync_longest_wait_seconds": ("gauge", set()),
    "gateway_xds_initial_syncs_timed_out": ("gauge", set()),
}
#: registered once the embedded sink's are (the quota service is built after the sink)
QUOTA_FAMILIES = {
    "gateway_quota_streams": ("gauge", set()),
    "gateway_quota_reports": ("gauge", set()),
}
SINK_FAMILIES = {
    "gateway_analytics_entries": ("counter", {"gateway"}),
    "gateway_analytics_dropped_total": ("gauge", set()),
    "gateway_analytics_refused": ("counter", {"reason"}),
    "gateway_analytics_refused_streams": ("counter", {"reason"}),
    "gateway_analytics_folded": ("counter", {"gateway", "field"}),
    "gateway_analytics_flushes": ("counter", {"result"}),
    "gateway_analytics_flush_seconds": ("histogram", set()),
    "gateway_analytics_streams": ("gauge", set()),
    "gateway_analytics_pending_cells": ("gauge", set()),
}


def _scrape(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Sample (name, labels) -> value, through the library's parser (which rejects bad text)."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(text: str, name: str, **labels: str) -> float:
    return _scrape(text).get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[Controller]:
    """A controller built (not started): its registry holds the xDS, the runner's and the
    embedded sink's metrics, as its health port serves them."""
    c = Controller(
        Settings(
            db=str(tmp_path / "g.db"),
            create_database=True,
            health_address=None,
            admin_address=None,
            admin_token_file=str(tmp_path / "admin-token"),
        )
    )
    yield c
    c.sink.close()
    c.store.close()


def test_controller_metrics_parse_with_documented_names_and_move(
    controller: Controller,
) -> None:
    app = create_health_app(controller._health_source())
    with TestClient(app) as http:
        first = http.get("/metrics")
        assert first.status_code == 200
        assert first.headers["content-type"] == CONTENT_TYPE
        assert CONTENT_TYPE.startswith("text/plain; version=0.0.4")
        families = {f.name: (f.type, f.samples) for f in text_string_to_metric_families(first.text)}
        expected = {**CONTROLLER_FAMILIES, **SINK_FAMILIES, **QUOTA_FAMILIES}
        assert list(families) == list(expected)  # every name, in registration order, no more
        for name, (kind, _) in expected.items():
            assert families[name][0] == kind, name
        # no ``_created`` series: the names exposed are the documented ones
        assert "_created" not in first.text

        xds = controller.ads.metrics
        assert xds is not None
        xds.pushed("public", CLUSTER)
        xds.pushed("public", CLUSTER)
        xds.acked("public", CLUSTER, 0.003)
        xds.acked("public", CLUSTER, 2.0)
        xds.nacked("public", LISTENER)
        xds.held("public")
        controller.sink.m_refused.labels(reason="unknown_gateway").inc(7)
        controller.validator.observer.checked("accepted", 0.002, 0.012)
        controller.validator.observer.checked("refused", 0.003, 0.020)
        controller.validator.observer.checked("unvalidated", 0.0, None)
        text = http.get("/metrics").text

    for family in text_string_to_metric_families(text):
        _, labels = expected[family.name]
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == labels, (family.name, sample.labels)
    assert _value(text, "gateway_xds_pushes_total", gateway="public", type="Cluster") == 2
    assert _value(text, "gateway_xds_acks_total", gateway="public", type="Cluster") == 2
    assert _value(text, "gateway_xds_nacks_total", gateway="public", type="Listener") == 1
    assert _value(text, "gateway_xds_rollbacks_refused_total", gateway="public") == 1
    latency = "gateway_xds_push_latency_seconds"
    assert _value(text, f"{latency}_count", type="Cluster") == 2
    assert _value(text, f"{latency}_sum", type="Cluster") == pytest.approx(2.003)
    assert _value(text, f"{latency}_bucket", type="Cluster", le="0.005") == 1
    assert _value(text, f"{latency}_bucket", type="Cluster", le="2.5") == 2
    assert _value(text, f"{latency}_bucket", type="Cluster", le="+Inf") == 2
    assert _value(text, "gateway_analytics_refused_total", reason="unknown_gateway") == 7
    assert _value(text, "gateway_policy_revision") == controller.runner.revision
    assert _value(text, "gateway_policy_checks_total", result="accepted") == 1
    assert _value(text, "gateway_policy_checks_total", result="refused") == 1
    assert _value(text, "gateway_policy_checks_total", result="unvalidated") == 1
    checks = "gateway_policy_check_seconds"
    assert _value(text, f"{checks}_count", stage="render") == 2  # not the unvalidated one
    assert _value(text, f"{checks}_count", stage="envoy") == 2
    assert _value(text, f"{checks}_sum", stage="envoy") == pytest.approx(0.032)
    assert _value(text, f"{checks}_bucket", stage="envoy", le="0.01") == 0
    assert _value(text, f"{checks}_bucket", stage="envoy", le="0.025") == 2


def test_sink_metrics_move_with_ingest_and_flush(tmp_path: Path) -> None:
    """The stand-alone sink's registry (``analytics serve``): entries, refusals, flushes."""
    db = str(tmp_path / "g.db")
    Store(db, create=True).close()
    sink = AccessLogSink(db, Scope(*_policy()))
    try:
        before = sink.registry.render()
        assert [f.name for f in text_string_to_metric_families(before)] == list(SINK_FAMILIES)
        assert _value(before, "gateway_analytics_flush_seconds_count") == 0
        assert sink.ingest("public", [_entry("api", "a"), _entry("nope", "a")]) == 2
        assert sink.ingest("quiet", [_entry("secret", "a")] * 3) == 0  # analytics off
        assert _value(sink.registry.render(), "gateway_analytics_pending_cells") == 2
        asyncio.run(sink.flush())
        text = sink.registry.render()
    finally:
        sink.close()
    assert _value(text, "gateway_analytics_entries_total", gateway="public") == 2
    assert _value(text, "gateway_analytics_folded_total", gateway="public", field="route") == 1
    assert _value(text, "gateway_analytics_refused_total", reason="analytics_off") == 3
    assert _value(text, "gateway_analytics_flushes_total", result="ok") == 1
    assert _value(text, "gateway_analytics_flush_seconds_count") == 1
    assert _value(text, "gateway_analytics_flush_seconds_bucket", le="+Inf") == 1
    assert _value(text, "gateway_analytics_pending_cells") == 0


def test_registries_are_per_object() -> None:
    """Two controllers in one process each count their own events under the same names."""
    from controlplane.xds.metrics import XdsMetrics

    one, two = Registry(), Registry()
    a, b = XdsMetrics(one), XdsMetrics(two)
    a.pushed("public", CLUSTER)
    b.pushed("public", CLUSTER)
    b.pushed("public", CLUSTER)
    assert _value(one.render(), "gateway_xds_pushes_total", gateway="public", type="Cluster") == 1
    assert _value(two.render(), "gateway_xds_pushes_total", gateway="public", type="Cluster") == 2
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        XdsMetrics(one)  # but one registry refuses a second copy of a name


def test_scrape_time_gauge_escapes_label_values() -> None:
    reg = Registry()
    state = {(('q"x\\y\nz',)): 1.5}
    reg.gauge("g", "A gauge.", lambda: dict(state), ("gateway",))
    reg.gauge("n", "A number.", lambda: 3.0)
    assert _value(reg.render(), "g", gateway='q"x\\y\nz') == 1.5
    state[("other",)] = 2
    text = reg.render()
    assert _value(text, "g", gateway="other") == 2 and _value(text, "n") == 3
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        reg.gauge("n", "Again.", lambda: 0.0)

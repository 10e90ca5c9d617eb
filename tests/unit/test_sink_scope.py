"""The access-log sink's scope and bounds, in-process (no gRPC): what entries may write."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from envoy.data.accesslog.v3 import accesslog_pb2

from controlplane.analytics.rollup import Filter, RollupReader
from controlplane.analytics.scope import ANALYTICS_OFF, OTHER, UNKNOWN_GATEWAY, Scope, StoreScope
from controlplane.analytics.sink import AccessLogSink, Bounds
from controlplane.policy import Consumer, Gateway, Route
from controlplane.store import Store


def _entry(
    route: str, consumer: str, start: float | None = None
) -> accesslog_pb2.HTTPAccessLogEntry:
    e = accesslog_pb2.HTTPAccessLogEntry()
    e.common_properties.route_name = route
    e.common_properties.start_time.FromSeconds(int(start if start is not None else time.time()))
    e.request.request_headers["x-consumer-id"] = consumer
    e.response.response_code.value = 200
    return e


def _gateway(name: str, analytics: bool) -> Gateway:
    spec = {"name": name, "port": 8080}
    if analytics:
        spec["analytics"] = {"enabled": True}
    return Gateway.model_validate(spec)


def _policy() -> tuple[dict[str, Gateway], dict[str, dict[str, object]], dict[str, object]]:
    gateways = {"public": _gateway("public", True), "quiet": _gateway("quiet", False)}
    routes: dict[str, dict[str, object]] = {
        "public": {"api": object()},
        "quiet": {"secret": object()},
    }
    consumers: dict[str, object] = {name: object() for name in ("a", "b", "c", "d")}
    return gateways, routes, consumers


def _per_consumer(sink: AccessLogSink) -> dict[str, int]:
    out: dict[str, int] = {}
    for key, cell in sink.rollups.cells.items():
        out[key[3]] = out.get(key[3], 0) + cell.requests
    return out


def test_refusals() -> None:
    scope = Scope(*_policy())
    assert scope.refusal("public") is None
    assert scope.refusal("quiet") == ANALYTICS_OFF
    assert scope.refusal("ghost") == UNKNOWN_GATEWAY
    assert scope.is_route("public", "api") and not scope.is_route("public", "secret")
    assert scope.is_consumer("a") and not scope.is_consumer("mallory")


def test_consumers_per_minute_bound_folds_even_known_consumers(tmp_path: Path) -> None:
    sink = AccessLogSink(
        str(tmp_path / "g.db"), Scope(*_policy()), bounds=Bounds(consumers_per_minute=2)
    )
    now = time.time() // 60 * 60 + 30  # mid-minute: all entries fall in one minute
    names = ["a", "b", "c", "d", "a", "b", "mallory", "c"]
    assert sink.ingest("public", [_entry("api", n, now) for n in names]) == len(names)
    # the first two distinct known consumers keep their names; later ones and unknown fold
    assert _per_consumer(sink) == {"a": 2, "b": 2, OTHER: 4}
    # the bound is per minute: the next minute starts afresh
    sink.ingest("public", [_entry("api", "c", now - 60)])
    assert _per_consumer(sink)["c"] == 1
    sink.close()


def test_analytics_switched_off_mid_stream_drops_entries(tmp_path: Path) -> None:
    gateways, routes, consumers = _policy()
    sink = AccessLogSink(str(tmp_path / "g.db"), Scope(gateways, routes, consumers))
    assert sink.ingest("public", [_entry("api", "a")]) == 1
    gateways["public"] = _gateway("public", False)  # the runner applies a policy change
    assert sink.ingest("public", [_entry("api", "a") for _ in range(5)]) == 0
    del gateways["public"]
    assert sink.ingest("public", [_entry("api", "a") for _ in range(7)]) == 0
    text = sink.registry.render()
    assert 'gateway_analytics_refused_total{reason="analytics_off"} 5' in text
    assert 'gateway_analytics_refused_total{reason="unknown_gateway"} 7' in text
    assert sum(c.requests for c in sink.rollups.cells.values()) == 1
    sink.close()


def test_consumer_memory_forgets_minutes_outside_the_window(tmp_path: Path) -> None:
    sink = AccessLogSink(str(tmp_path / "g.db"), Scope(*_policy()))
    sink.ingest("public", [_entry("api", "a")])
    old = int(time.time() // 60) - sink.bounds.window_minutes - 1
    sink._consumers[("public", old)] = {"b"}
    asyncio.run(sink.flush())
    assert ("public", old) not in sink._consumers and len(sink._consumers) == 1
    sink.close()


def test_flush_in_batches_writes_everything(tmp_path: Path) -> None:
    db = str(tmp_path / "g.db")
    Store(db, create=True).close()
    gateways, routes, _ = _policy()
    consumers = {f"c{i}": object() for i in range(1200)}
    sink = AccessLogSink(db, Scope(gateways, routes, consumers), bounds=Bounds(batch=100, pause=0))
    now = time.time() // 60 * 60 + 30
    sink.ingest("public", [_entry("api", f"c{i}", now) for i in range(1000)])
    asyncio.run(sink.flush())
    rows = list(RollupReader.open(db).rows(Filter(0, 1e12)))
    assert len(rows) == 1000 and sum(c.requests for _, c in rows) == 1000
    assert 'gateway_analytics_flushes_total{result="ok"} 1' in sink.registry.render()
    sink.close()


def test_store_scope_follows_the_policy(tmp_path: Path) -> None:
    db = str(tmp_path / "g.db")
    store = Store(db, create=True)
    store.create(_gateway("public", False))
    store.create(Consumer(name="acme"))

    async def check() -> None:
        scope = StoreScope(db, interval=0)
        try:
            await scope.refresh()
            assert scope.refusal("public") == ANALYTICS_OFF
            store.replace(_gateway("public", True))
            store.create(
                Route.model_validate(
                    {
                        "name": "api",
                        "gateway": "public",
                        "match": {"path_prefix": "/"},
                        "direct_response": {"status": 200},
                    }
                )
            )
            await scope.refresh()
            assert scope.refusal("public") is None
            assert scope.is_route("public", "api") and scope.is_consumer("acme")
        finally:
            scope.close()

    asyncio.run(check())
    store.close()

"""Latency buckets, rollup deltas, reports and the Prometheus text format."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from controlplane.analytics import histogram
from controlplane.analytics.report import series, summarise, top
from controlplane.analytics.rollup import Filter, RollupReader, Rollups, RollupWriter, status_class
from controlplane.cli.analytics import parse_time
from controlplane.errors import PolicyInvalid
from controlplane.store import Store


def test_percentile_within_one_bucket_of_exact() -> None:
    rng = random.Random(7)
    samples = [rng.lognormvariate(2.0, 1.0) for _ in range(5000)]
    hist = histogram.from_samples(samples)
    ordered = sorted(samples)
    for q in (0.5, 0.9, 0.95, 0.99, 0.999):
        exact = ordered[math.ceil(q * len(ordered)) - 1]
        estimate = histogram.percentile(hist, q)
        assert estimate is not None
        # the estimate is the upper bound of the exact value's bucket: >= exact, < 19 % above
        assert exact <= estimate <= exact * histogram.RATIO
        assert histogram.bucket_of(exact) == histogram.bucket_of(estimate * 0.9999)


def test_bucket_edges_and_encoding() -> None:
    assert histogram.bucket_of(0.05) == 0
    assert histogram.bucket_of(0.1) == 1
    assert histogram.bucket_of(1e12) == histogram.BUCKETS - 1
    for ms in (0.3, 1.0, 7.5, 250.0, 9000.0):
        i = histogram.bucket_of(ms)
        assert histogram.upper_bound(i - 1) <= ms < histogram.upper_bound(i)
    hist = {3: 2, 40: 1}
    assert histogram.decode(histogram.encode(hist)) == hist
    assert histogram.percentile({}, 0.5) is None


def test_status_class() -> None:
    assert [status_class(c) for c in (200, 302, 404, 503, 0)] == [
        "2xx",
        "3xx",
        "4xx",
        "5xx",
        "none",
    ]


def test_rollups_add_up_across_flushes_and_sinks(tmp_path: Path) -> None:
    db = str(tmp_path / "g.db")
    store = Store(db, create=True)
    revision = store.revision()
    minute = 29_000_000
    a, b = RollupWriter(db, "sink-a"), RollupWriter(db, "sink-b")
    for writer, n in ((a, 3), (a, 4), (b, 5)):
        r = Rollups()
        for _ in range(n):
            r.add((minute, "public", "api", "acme", "2xx"), 100, 1000, 2.0)
        r.add((minute + 1, "public", "api", "", "5xx"), 10, 20, 50.0)
        writer.write(r.take())
    reader = RollupReader.open(db)
    rows = list(reader.rows(Filter(minute * 60, (minute + 2) * 60)))
    assert [(k, c.requests) for k, c in rows] == [
        ((minute, "public", "api", "acme", "2xx"), 12),
        ((minute + 1, "public", "api", "", "5xx"), 3),
    ]
    assert rows[0][1].bytes_in == 1200 and rows[0][1].hist == {histogram.bucket_of(2.0): 12}
    s = summarise(rows)
    assert s["requests"] == 15 and s["status"] == {"2xx": 12, "5xx": 3}
    assert s["error_rate"] == pytest.approx(0.2)
    assert [e["consumer"] for e in top(rows, "consumer")] == ["acme", "-"]
    points = series(rows, minute * 60, (minute + 2) * 60)
    assert [(p["requests"], p["errors"]) for p in points] == [(12, 0), (3, 3)]
    # not policy: the revision did not move
    assert store.revision() == revision
    assert a.prune(minute + 1) == 2 and reader.total_requests(Filter(0, 1e12)) == 3


def test_rollups_bounded() -> None:
    r = Rollups(max_cells=1)
    r.add((1, "g", "r", "c", "2xx"), 0, 0, 1.0)
    r.add((1, "g", "r", "d", "2xx"), 0, 0, 1.0)
    assert r.dropped == 1 and r.added == 1


def test_parse_time() -> None:
    now = 1_000_000.0
    assert parse_time("1h", "--since", now) == now - 3600
    assert parse_time("now", "--until", now) == now
    assert parse_time("today", "--since", now) == 950_400.0
    assert parse_time("1970-01-01T00:01:00", "--since", now) == 60.0
    with pytest.raises(PolicyInvalid, match="--since: 'yesterday-ish' is not a time"):
        parse_time("yesterday-ish", "--since", now)


def test_usage_classes_tell_the_gateways_refusals_from_the_backends_answers() -> None:
    from controlplane.analytics.rollup import rollup_class, split_class, usage_class

    cases = [
        # (code, details, RL flag) -> class
        ((200, "via_upstream", False), "admitted"),
        ((429, "via_upstream", False), "admitted"),  # the backend's own 429
        ((401, "via_upstream", False), "admitted"),  # the backend's own 401
        ((404, "via_upstream", False), "admitted"),
        ((200, "direct_response", False), "admitted"),
        ((429, "local_rate_limited", True), "throttled"),
        ((429, "local_rate_limited", False), "throttled"),
        ((429, "rate_limited_by_quota", False), "throttled"),  # the quota filter (RLQS)
        ((401, "jwt_authn_access_denied{Jwt_is_missing}", False), "unauthenticated"),
        ((403, "rbac_access_denied_matched_policy[consumer]", False), "unauthenticated"),
        ((503, "via_upstream", False), "upstream_errors"),
        (
            (503, "upstream_reset_before_response_started{connection_failure}", False),
            "upstream_errors",
        ),
        ((404, "route_not_found", False), "refused"),
        ((0, "", False), "refused"),
    ]
    for (code, details, flag), expected in cases:
        got = usage_class(code, details, flag)
        assert got == expected, (code, details, flag, got)
        column = rollup_class(code, got)
        assert len(column) <= 8  # the column is VARCHAR(8)
        assert split_class(column)[1] == expected
    # rows written before usage classes existed read as they always did
    assert [split_class(c) for c in ("2xx", "4xx", "5xx", "none")] == [
        ("2xx", "admitted"),
        ("4xx", "admitted"),
        ("5xx", "upstream_errors"),
        ("none", "refused"),
    ]


def test_export_rows_per_hour_route_and_consumer(tmp_path: Path) -> None:
    import csv
    import io
    import json

    from controlplane.analytics.export import COLUMNS, export_rows, render

    hour = 480_000  # hours since the epoch
    m = hour * 60
    r = Rollups()
    for minute, consumer, klass, n, ms in (
        (m, "acme", "2xx", 5, 10.0),
        (m + 59, "acme", "4xx:t", 3, 0.2),
        (m + 1, "acme", "5xx", 2, 40.0),
        (m + 60, "acme", "2xx", 1, 10.0),  # the next hour
        (m + 2, "", "4xx:u", 4, 0.3),
    ):
        for _ in range(n):
            r.add((minute, "public", "api", consumer, klass), 10, 100, ms)
    items = export_rows(sorted(r.take().items()))
    assert [(i["hour"][11:13], i["consumer"], i["requests"]) for i in items] == [
        ("00", "", 4),
        ("00", "acme", 10),
        ("01", "acme", 1),
    ]
    acme = items[1]
    assert (acme["admitted"], acme["throttled"], acme["upstream_errors"]) == (5, 3, 2)
    assert acme["unauthenticated"] == acme["refused"] == 0
    assert items[0]["unauthenticated"] == 4 and items[0]["latency_p50_ms"] is None
    assert acme["bytes_in"] == 100 and acme["bytes_out"] == 1000
    # percentiles of the served requests only (the throttled 0.2 ms answers are not in them)
    assert acme["latency_p50_ms"] >= 10.0 and acme["latency_p99_ms"] >= 40.0
    assert acme["hour"].endswith("T00:00:00Z")

    rows = list(csv.reader(io.StringIO(render(items, "csv"), newline="")))
    assert tuple(rows[0]) == COLUMNS and len(rows) == 4
    assert rows[1][COLUMNS.index("latency_p50_ms")] == ""  # none: an empty cell
    lines = render(items, "jsonl").splitlines()
    assert [list(json.loads(line)) for line in lines] == [list(COLUMNS)] * 3


def test_usage_counts_by_class_and_limits_of_every_unit(tmp_path: Path) -> None:
    import time as _time

    from controlplane.analytics.usage import usage
    from controlplane.errors import NotFound
    from controlplane.policy import Consumer, Gateway
    from controlplane.policy.ratelimit import Per, Plan

    db = str(tmp_path / "g.db")
    store = Store(db, create=True)
    store.create(Gateway(name="public", port=8080, analytics={"enabled": True}))
    store.create(Gateway(name="internal", port=8081))
    store.create(
        Plan(name="pro", limits=[{"requests": 5, "per": "second"}, {"requests": 9, "per": "day"}])
    )
    store.create(Consumer(name="acme", plan="pro"))
    now = _time.time()
    minute = int(now // 60)
    r = Rollups()
    for klass, n in (("2xx", 4), ("4xx:t", 24), ("5xx", 1), ("4xx", 2)):
        for _ in range(n):
            r.add((minute, "public", "api", "acme", klass), 1, 1, 1.0)
    RollupWriter(db, "s").write(r.take())
    out = usage(store, RollupReader.open(db), "acme", now=now)
    assert out["warnings"] == ["analytics is off on gateway internal: its requests are not counted"]
    second, day = out["items"]
    # throttled requests are never counted as used; a backend's 4xx is
    assert second["per"] == "second" and second["used"] == 7
    assert second["text"].startswith("acme: 7 this minute against 5 per second")
    # a day quota counts from the quota counters, per route it applies on: none yet
    assert (day["per"], day["used"], day["route"]) == ("day", 0, None)
    assert day["text"] == "acme: 0 of 9 today (no route applies it)"

    from controlplane.policy import Cluster, Route
    from controlplane.quota.calendar import window
    from controlplane.quota.counters import CounterKey, QuotaCounters

    store.create(Cluster(name="c", endpoints=["127.0.0.1:9"]))
    store.create(Route(name="api", gateway="public", cluster="c", rate_limit={"key": "consumer"}))
    start, end = window(Per.day, now, "UTC")
    QuotaCounters(store._writer).add(
        {CounterKey("public", "api", "consumer:acme", "day", start): (3, end)}
    )
    day = usage(store, RollupReader.open(db), "acme", now=now)["items"][1]
    # used: the counters' 3 (not the rollups' 7); throttled: the rollups' 24 on that route
    assert (day["used"], day["throttled"], day["route"]) == (3, 24, "api")
    assert day["text"].startswith("acme: 3 of 9 today on public/api (since ")
    assert day["text"].endswith(", 24 throttled") and day["resets_at"] == end
    with pytest.raises(NotFound):
        usage(store, RollupReader.open(db), "nobody", now=now)

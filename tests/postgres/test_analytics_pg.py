"""Rollups and events on PostgreSQL: two sinks add up, and neither moves the revision."""

from __future__ import annotations

from controlplane.analytics.rollup import Filter, RollupReader, Rollups, RollupWriter
from controlplane.store import Store


def test_rollups_from_two_sinks_add_up_without_a_revision(pg_url: str) -> None:
    store = Store(pg_url, create=True)
    revision = store.revision()
    minute = 29_000_000
    for sink, n in (("a", 3), ("b", 4), ("a", 5)):
        rollups = Rollups()
        for _ in range(n):
            rollups.add((minute, "public", "api", "acme", "2xx"), 10, 20, 1.5)
        writer = RollupWriter(pg_url, sink)
        writer.write(rollups.take())
        writer.close()
    rows = list(RollupReader.open(pg_url).rows(Filter(minute * 60, (minute + 1) * 60)))
    assert len(rows) == 1 and rows[0][1].requests == 12 and rows[0][1].bytes_out == 240
    store.add_events(
        [{"at": 1.0, "kind": "push", "gateway": "g", "node": "n", "revision": 1, "detail": "x"}]
    )
    assert [e["kind"] for e in store.events()] == ["push"]
    assert store.revision() == revision
    store.close()

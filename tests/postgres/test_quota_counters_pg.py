"""Quota counters on PostgreSQL: two writers drawing on one budget at once never exceed it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from controlplane.quota.counters import Ask, CounterKey, QuotaCounters
from controlplane.store import Store
from controlplane.store.db import make_engines


def test_concurrent_reservations_share_one_budget_exactly(pg_url: str) -> None:
    Store(pg_url, create=True).close()  # migrated
    engines = [make_engines(pg_url)[0] for _ in range(2)]  # as two controllers would
    key = CounterKey("gw", "r", "consumer:acme", "day", 0)

    def take(i: int) -> int:
        counters = QuotaCounters(engines[i % 2])
        return sum(counters.reserve([Ask(key, 7, 1000, 86400)])[0] for _ in range(20))

    with ThreadPoolExecutor(8) as pool:
        granted = sum(pool.map(take, range(8)))  # asks for 8 x 20 x 7 = 1,120
    assert granted == 1000
    assert QuotaCounters(engines[0]).used([key]) == {key: 1000}

"""The lease allocator of shared budgets: uneven splits, replicas leaving, and the fleet
never holding or admitting more than the budget (real quota counters on SQLite)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from controlplane.policy.ratelimit import Per
from controlplane.quota.allocator import Allocator, BucketKey, Budget, Decision, Usage, rows_of
from controlplane.quota.counters import QuotaCounters
from controlplane.store import Store
from controlplane.store.db import make_engines

BUCKET = BucketKey("gw", "api", Per.minute, "consumer:acme")
DAY = BucketKey("gw", "api", Per.day, "consumer:acme")


@pytest.fixture
def counters(tmp_path: Path) -> QuotaCounters:
    db = tmp_path / "gw.db"
    Store(str(db), create=True).close()
    writer, _ = make_engines(f"sqlite:///{db}")
    return QuotaCounters(writer)


class Replica:
    """An Envoy's side of one bucket as Envoy 1.40 implements it: the first request of a
    new bucket is admitted (no assignment yet), a fresh lease starts full, an equal one
    keeps its tokens, DENY_ALL refuses."""

    def __init__(self, name: str, allocator: Allocator, bucket: BucketKey = BUCKET) -> None:
        self.name = name
        self.allocator = allocator
        self.bucket = bucket
        self.tokens: int | None = None  # None: no assignment yet (ALLOW_ALL)
        self.allowed = self.denied = 0
        self.admitted = 0
        self.now = 0.0

    def request(self) -> bool:
        if self.tokens is None and self.admitted == 0:
            # a new bucket: admitted, and reported at once (the answer takes milliseconds)
            self.allowed += 1
            self.admitted += 1
            self.report(self.allocator, self.bucket, self.now)
            return True
        if self.tokens is None or self.tokens > 0:
            if self.tokens is not None:
                self.tokens -= 1
            self.allowed += 1
            self.admitted += 1
            return True
        self.denied += 1
        return False

    def report(self, allocator: Allocator, bucket: BucketKey, now: float) -> Decision:
        self.now = now
        usage = Usage(bucket, self.allowed, self.denied)
        self.allowed = self.denied = 0
        (decision,) = allocator.report(self.name, [usage], now)
        if decision.kind == "deny":
            self.tokens = 0
        elif decision.kind == "lease" and decision.fresh:
            self.tokens = decision.tokens
        elif decision.kind == "allow":
            self.tokens = None
        return decision


def _allocator(counters: QuotaCounters, limit: int = 100) -> Allocator:
    return Allocator(counters, lambda b: Budget(limit) if b.route == "api" else None)


def _run(
    counters: QuotaCounters, split: list[float], requests: int, seconds: float, limit: int = 100
) -> tuple[list[Replica], Allocator]:
    rng = random.Random(7)
    allocator = _allocator(counters, limit)
    replicas = [Replica(f"envoy-{i}", allocator) for i in range(len(split))]
    t0 = 1_000_020.0  # 20 s into a minute: a 40 s run stays inside 60-70 s windows
    step = seconds / requests
    next_report = t0 + 1.0
    for i in range(requests):
        now = t0 + i * step
        while now >= next_report:
            for r in replicas:
                r.report(allocator, BUCKET, next_report)
            next_report += 1.0
        replica = rng.choices(replicas, weights=split)[0]
        replica.now = now
        replica.request()
    return replicas, allocator


@pytest.mark.parametrize("split", [[0.8, 0.15, 0.05], [1 / 3] * 3, [0.98, 0.01, 0.01], [1.0]])
def test_uneven_splits_admit_the_budget(counters: QuotaCounters, split: list[float]) -> None:
    replicas, _ = _run(counters, split, 300, 40.0)
    admitted = sum(r.admitted for r in replicas)
    # the first request of each replica's bucket is admitted before any assignment
    assert 95 <= admitted <= 100 + len(split), [r.admitted for r in replicas]


def test_reservations_never_exceed_the_budget(counters: QuotaCounters) -> None:
    allocator = _allocator(counters, 50)
    replicas = [Replica(f"envoy-{i}", allocator) for i in range(4)]
    rng = random.Random(3)
    now = 1_000_020.0
    for _ in range(30):
        for r in replicas:
            r.now = now
            for _ in range(rng.randint(0, 30)):
                r.request()
            r.report(allocator, BUCKET, now)
            row, _, earlier = rows_of(BUCKET, Budget(50), now)
            total = sum(counters.used([row, *earlier]).values())
            assert total <= 50 + len(replicas)  # unleased first requests only
            assert sum(allocator.reserved().values()) <= 50
        now += 1.0 / 6  # stay within one minute window: nothing expires
    assert sum(r.admitted for r in replicas) <= 50 + len(replicas)


def test_a_replica_leaving_gives_its_lease_back(counters: QuotaCounters) -> None:
    allocator = _allocator(counters, 100)
    busy, leaving = Replica("a", allocator), Replica("b", allocator)
    now = 1_000_020.0
    busy.now = leaving.now = now
    for _ in range(3):  # b is busy first and gets a large lease
        for _ in range(30):
            leaving.request()
        leaving.report(allocator, BUCKET, now)
        busy.report(allocator, BUCKET, now)
        now += 1
    held = allocator.reserved()[BUCKET]
    assert held > 0
    allocator.close("b")
    assert allocator.reserved()[BUCKET] < held
    for _ in range(10):  # a now gets all that is left
        for _ in range(40):
            busy.request()
        busy.report(allocator, BUCKET, now)
        now += 1
    assert busy.admitted + leaving.admitted == pytest.approx(100, abs=2)


def test_unlimited_buckets_are_allowed_without_accounting(counters: QuotaCounters) -> None:
    allocator = _allocator(counters)
    other = BucketKey("gw", "free", Per.minute, "all")
    (decision,) = allocator.report("a", [Usage(other, 10, 0)], 1_000_000.0)
    assert decision.kind == "allow"
    assert counters.rows(at=1_000_000) == []


def _spend(replica: Replica, allocator: Allocator, now: float, target: int) -> float:
    """Up to 50 requests a second until ``target`` are admitted or 60 s have passed."""
    for _ in range(60):
        for _ in range(50):
            if replica.admitted >= target:
                break
            replica.now = now
            replica.request()
        replica.report(allocator, replica.bucket, now)
        now += 1
    return now


def test_a_day_quota_continues_after_a_restart(counters: QuotaCounters) -> None:
    """A new allocator (restarted controller) and a new replica (restarted Envoy) continue
    from the counter: the day's window is a row of quota_counters."""
    now = 1_700_000_000.0
    first = _allocator(counters, 1000)
    replica = Replica("a", first, DAY)
    replica.now = now
    now = _spend(replica, first, now, 400)
    replica.report(first, DAY, now)
    first.close("a")
    assert replica.admitted == 400
    second = _allocator(counters, 1000)
    again = Replica("a2", second, DAY)
    again.now = now
    now = _spend(again, second, now, 10_000)
    assert replica.admitted + again.admitted == 1000
    assert again.tokens == 0 and not again.request()  # nothing left: DENY_ALL


def test_sliding_window_rows_are_not_listed_as_quotas(counters: QuotaCounters) -> None:
    """``quota show`` lists calendar quotas: the minute sub-windows stay out of rows()."""
    allocator = _allocator(counters)
    now = 1_000_020.0
    allocator.report("a", [Usage(BUCKET, 3, 0), Usage(DAY, 3, 0)], now)
    assert [r.unit for r in counters.rows(at=int(now))] == ["day"]
    minute = counters.rows(at=int(now), units=["minute"])
    assert [r.unit for r in minute] == ["minute"] and minute[0].used >= 3

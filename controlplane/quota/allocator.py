"""Shared budgets as leases: how much each Envoy may admit until its next usage report.

Envoy's ``rate_limit_quota`` filter enforces what the quota service assigns and reports,
every ``report_interval``, how many requests each bucket admitted and refused since the
last report. Envoy 1.40 supports two assignments that matter here: a blanket rule
(ALLOW_ALL / DENY_ALL) and a token bucket. A token bucket is converted to a rate of
``tokens_per_fill / whole seconds of fill_interval`` and a re-sent bucket equal to the one
in place keeps its tokens. So a *lease* is a token bucket with a negligible refill (one
token per 30 days): ``max_tokens`` requests to spend until the next report.

The allocator keeps the budget exact across replicas whatever the split of traffic:

* a lease is taken from the shared counter (:class:`Ledger`, the ``quota_counters`` rows)
  *before* it is handed out, so the counter always holds admitted requests plus every
  outstanding lease, and the fleet never admits more than the budget;
* a replica's lease is replaced only right after its report, and only when it runs low
  (or far exceeds its demand). Requests it admitted between the report and the arrival of
  the new lease spend the old lease, so the old remainder stays reserved until the next
  report says how much of it was spent; what was not spent is given back then;
* a lease is sized from the replica's recent demand (admitted + refused per second, for
  :data:`LEASE_SECONDS`), never more than the budget left, so a busy replica gets most of
  the budget and an idle one holds little of it;
* requests admitted without a lease (before the first assignment of a bucket, or under the
  fallback while the service was unreachable) are added to the counter when reported.

Minute and hour budgets count a sliding window made of six sub-windows (10 s of a minute,
10 min of an hour): what was taken in the last six sub-windows, the current one included,
holds the budget, so any 60 s (70 s at most) admits at most the limit. Day, week and month
budgets count one calendar window (:mod:`controlplane.quota.calendar`).

Everything here is pure logic over a :class:`Ledger`; the gRPC service (``service.py``)
feeds it the reports and sends back the :class:`Decision` list.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from ..policy.ratelimit import QUOTA_UNITS, SECONDS, Per
from .calendar import window
from .counters import Ask, CounterKey

__all__ = [
    "ASSIGNMENT_TTL_S",
    "LEASE_SECONDS",
    "REPORT_INTERVAL_S",
    "SUB_WINDOWS",
    "Allocator",
    "BucketKey",
    "Budget",
    "Decision",
    "Ledger",
    "Usage",
    "rows_of",
]

#: how often Envoy 1.40 reports usage: a fixed 5 s (the filter's ``reporting_interval`` is
#: not used yet: filter_persistence.cc hardcodes it)
REPORT_INTERVAL_S = 5.0
#: a lease covers this many seconds of the replica's recent demand (two reports)
LEASE_SECONDS = 2 * REPORT_INTERVAL_S
#: an assignment not refreshed for this long expires (the service is unreachable): three
#: reports missed
ASSIGNMENT_TTL_S = 15
#: the smallest lease handed to a replica that asks (its next requests need no round trip)
MIN_LEASE = 1
#: every lease is at least this share of the budget divided by the replicas holding one
#: (the first one's demand is not known; a quiet replica's demand may jump)
FIRST_SHARE = 0.1
#: sub-windows of a sliding minute/hour window
SUB_WINDOWS = 6


class BucketKey(NamedTuple):
    """One counted budget: gateway x route x unit x who (``consumer:NAME``, ``ip:ADDR``,
    ``header:VALUE`` or ``all``), the key format of ``quota_counters``."""

    gateway: str
    route: str
    unit: Per
    key: str


@dataclass(frozen=True)
class Budget:
    """``limit`` requests per ``unit``; calendar windows in ``time_zone``."""

    limit: int
    time_zone: str = "UTC"


@dataclass(frozen=True)
class Usage:
    """One bucket of a usage report: admitted and refused since the previous report."""

    bucket: BucketKey
    allowed: int
    denied: int


@dataclass(frozen=True)
class Decision:
    """What Envoy is told for one bucket.

    ``kind``: ``allow`` (no limit applies), ``deny`` (nothing left) or ``lease`` (spend
    ``tokens``). ``fresh``: the lease is new and must start full (the service sends DENY_ALL
    then the token bucket, which makes Envoy build a new bucket); otherwise an equal token
    bucket is re-sent and Envoy keeps the tokens it has.
    """

    bucket: BucketKey
    kind: str
    tokens: int = 0
    fresh: bool = False


class Ledger(Protocol):
    """The shared counter (``QuotaCounters``)."""

    def exchange(
        self,
        adds: Mapping[CounterKey, tuple[int, int]],
        asks: Sequence[Ask],
        earlier: Mapping[CounterKey, Sequence[CounterKey]],
    ) -> list[int]: ...


@dataclass
class Lease:
    """What one replica holds of one bucket."""

    #: tokens of the current lease not yet reported spent (an upper bound)
    outstanding: int = 0
    #: the row the current lease was taken from
    row: CounterKey | None = None
    row_end: int = 0
    #: the previous lease's remainder, spendable until the new lease arrived
    pending: int = 0
    pending_row: CounterKey | None = None
    pending_end: int = 0
    #: max_tokens last sent (0: DENY_ALL or nothing sent yet)
    tokens: int = 0
    #: demand (admitted + refused) per second, smoothed
    rate: float = 0.0
    last_report: float | None = None


def rows_of(
    bucket: BucketKey, budget: Budget, now: float
) -> tuple[CounterKey, int, list[CounterKey]]:
    """The counter row new budget is taken from at ``now``, its end, and the earlier rows
    of the same window whose counts also hold the budget (sliding windows)."""
    g, r, unit, k = bucket
    if unit in QUOTA_UNITS:
        start, end = window(unit, now, budget.time_zone)
        return CounterKey(g, r, k, str(unit), start), end, []
    step = SECONDS[unit] // SUB_WINDOWS
    start = int(now // step) * step
    earlier = [CounterKey(g, r, k, str(unit), start - i * step) for i in range(1, SUB_WINDOWS)]
    return CounterKey(g, r, k, str(unit), start), start + step, earlier


@dataclass
class Allocator:
    """Leases per (stream, bucket) over a :class:`Ledger`; ``budget`` says the limit of a
    bucket from the current policy (None: unlimited)."""

    ledger: Ledger
    budget: Callable[[BucketKey], Budget | None]
    report_interval: float = REPORT_INTERVAL_S
    streams: dict[object, dict[BucketKey, Lease]] = field(default_factory=dict)
    #: how many streams hold a lease of each bucket
    holders: dict[BucketKey, int] = field(default_factory=dict)

    def report(self, stream: object, usages: Iterable[Usage], now: float) -> list[Decision]:
        """Account one usage report of ``stream`` and decide each reported bucket; ONE
        ledger transaction for the whole report."""
        held = self.streams.setdefault(stream, {})
        adds: dict[CounterKey, tuple[int, int]] = {}
        asks: list[Ask] = []
        earlier: dict[CounterKey, Sequence[CounterKey]] = {}
        plan: list[tuple[BucketKey, Lease | None, int, CounterKey | None, int]] = []

        def add(row: CounterKey | None, n: int, end: int) -> None:
            if row is None or n == 0:
                return
            prev = adds.get(row, (0, end))[0]
            adds[row] = (prev + n, end)

        for usage in usages:
            budget = self.budget(usage.bucket)
            if budget is None:
                if held.pop(usage.bucket, None) is not None:
                    self._release(usage.bucket)
                plan.append((usage.bucket, None, 0, None, 0))
                continue
            lease = held.get(usage.bucket)
            if lease is None:
                lease = held[usage.bucket] = Lease()
                self.holders[usage.bucket] = self.holders.get(usage.bucket, 0) + 1
            row, end, before = rows_of(usage.bucket, budget, now)
            allowed = max(0, usage.allowed)
            # the old remainder was spent first (it was in place before the new lease)
            from_pending = min(allowed, lease.pending)
            add(lease.pending_row, -(lease.pending - from_pending), lease.pending_end)
            lease.pending, lease.pending_row = 0, None
            spent = allowed - from_pending
            unleased = max(0, spent - lease.outstanding)  # admitted without a lease
            add(row, unleased, end)
            lease.outstanding = max(0, lease.outstanding - spent)
            dt = (
                max(now - lease.last_report, 1e-3)
                if lease.last_report is not None
                else self.report_interval
            )
            demand = (allowed + max(0, usage.denied)) / dt
            lease.rate = max(demand, lease.rate * 0.5)
            lease.last_report = now
            want = max(MIN_LEASE, math.ceil(lease.rate * LEASE_SECONDS))
            # never less than a share of the budget split between the replicas holding it:
            # demand may jump between two reports (5 s), and a large budget loses nothing
            # by being leased generously (all leases together hold at most FIRST_SHARE)
            holders = self.holders.get(usage.bucket, 1)
            want = max(want, math.ceil(budget.limit * FIRST_SHARE / holders))
            if usage.denied > 0 and lease.tokens > 0:
                # refused for want of tokens: the demand seen is what the lease allowed, so
                # grow geometrically until the replica stops running dry
                want = max(want, 2 * lease.tokens)
            renew = (
                lease.tokens == 0
                or lease.outstanding * 3 < want * 2
                or lease.outstanding > 4 * want + MIN_LEASE
                or lease.row is None
                or (
                    lease.row.window_start != row.window_start and usage.bucket.unit in QUOTA_UNITS
                )  # a new calendar window: new lease
            )
            if not renew:
                plan.append((usage.bucket, lease, -1, None, 0))
                continue
            if (
                lease.row is not None
                and lease.row.window_start != row.window_start
                and (usage.bucket.unit in QUOTA_UNITS)
            ):
                # the old calendar window is over: its remainder is no longer spendable there
                add(lease.row, -lease.outstanding, lease.row_end)
                lease.outstanding = 0
            asks.append(Ask(row, want, budget.limit, end))
            earlier[row] = before
            plan.append((usage.bucket, lease, len(asks) - 1, row, end))

        granted = self.ledger.exchange(adds, asks, earlier) if adds or asks else []
        out: list[Decision] = []
        for bucket, held_lease, index, new_row, new_end in plan:
            if held_lease is None:
                out.append(Decision(bucket, "allow"))
            elif index < 0:
                out.append(Decision(bucket, "lease", held_lease.tokens))
            else:
                got = granted[index]
                lease = held_lease
                lease.pending, lease.pending_row, lease.pending_end = (
                    lease.outstanding,
                    lease.row,
                    lease.row_end,
                )
                lease.outstanding, lease.row, lease.row_end = got, new_row, new_end
                lease.tokens = got
                out.append(
                    Decision(bucket, "lease", got, True) if got else Decision(bucket, "deny")
                )
        return out

    def close(self, stream: object) -> None:
        """The stream ended: give back what its leases did not spend. (A replica that lost
        its stream may still spend its lease until the assignment expires; those requests
        are counted if it reconnects and reports them.)"""
        held = self.streams.pop(stream, {})
        for bucket in held:
            self._release(bucket)
        adds: dict[CounterKey, tuple[int, int]] = {}
        for lease in held.values():
            for row, n, end in (
                (lease.row, lease.outstanding, lease.row_end),
                (lease.pending_row, lease.pending, lease.pending_end),
            ):
                if row is not None and n:
                    prev = adds.get(row, (0, end))[0]
                    adds[row] = (prev - n, end)
        if adds:
            self.ledger.exchange(adds, [], {})

    def _release(self, bucket: BucketKey) -> None:
        left = self.holders.get(bucket, 1) - 1
        if left > 0:
            self.holders[bucket] = left
        else:
            self.holders.pop(bucket, None)

    def reserved(self) -> dict[BucketKey, int]:
        """Tokens held by leases (outstanding + pending), per bucket."""
        out: dict[BucketKey, int] = {}
        for held in self.streams.values():
            for bucket, lease in held.items():
                out[bucket] = out.get(bucket, 0) + lease.outstanding + lease.pending
        return out

"""Counters of requests per limit window, in the policy database.

The quota service keeps here what must be shared by controllers (one PostgreSQL) and
outlive restarts: how much of each window's budget is spent. :meth:`QuotaCounters.reserve`
takes budget atomically - it never hands out more than the limit, whatever the number of
controllers asking at once - so a controller can give its Envoys a share of a budget that
another controller also draws on. Each call is ONE transaction: the service batches the
buckets of a usage report into one call instead of one transaction per bucket.

Rows are not policy: they never bump the revision and are not in ``export``. Rows whose
window ended more than a day ago are pruned.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import Engine, and_, delete, select, true, tuple_, update

from ..policy.ratelimit import QUOTA_UNITS
from ..store.tables import QuotaCounterRow

__all__ = ["Ask", "CounterKey", "CounterRow", "QuotaCounters"]

#: rows of windows that ended longer ago than this are deleted by :meth:`prune`
KEEP_ENDED = 86400


class CounterKey(NamedTuple):
    gateway: str
    route: str
    key: str  # consumer:NAME, ip:ADDR, header:VALUE or all
    unit: str
    window_start: int


@dataclass(frozen=True)
class Ask:
    """Take up to ``want`` requests of ``key``'s window, which holds ``limit`` in all."""

    key: CounterKey
    want: int
    limit: int
    window_end: int


@dataclass(frozen=True)
class CounterRow:
    gateway: str
    route: str
    key: str
    unit: str
    window_start: int
    window_end: int
    used: int


class QuotaCounters:
    """Quota counters over the store's writer engine (``make_engines(url)[0]``)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def _ensure(self, conn: Any, rows: Mapping[CounterKey, int]) -> None:
        """Create missing rows at 0 (``window_end`` given per key) without touching others."""
        from sqlalchemy.dialects import postgresql, sqlite

        table: Any = QuotaCounterRow.__table__
        statement: Any = (
            postgresql.insert(table) if conn.dialect.name == "postgresql" else sqlite.insert(table)
        )
        conn.execute(
            statement.on_conflict_do_nothing(),
            [{**key._asdict(), "used": 0, "window_end": end} for key, end in rows.items()],
        )

    def _locked(self, conn: Any, keys: Sequence[CounterKey]) -> dict[CounterKey, int]:
        """Current counts of ``keys``, rows locked until the transaction ends (PostgreSQL;
        SQLite's writer transactions are serialised as a whole)."""
        columns = _key_columns()
        found: dict[CounterKey, int] = {}
        for chunk in _chunks(sorted(set(keys)), 200):  # sorted: locks in one order, no deadlock
            query = (
                select(*columns, QuotaCounterRow.used)
                .where(tuple_(*columns).in_([tuple(k) for k in chunk]))
                .order_by(*columns)
                .with_for_update()
            )
            for row in conn.execute(query):
                found[CounterKey(*row[:5])] = int(row[5])
        return found

    def _set(self, conn: Any, values: Mapping[CounterKey, int]) -> None:
        if not values:
            return
        from sqlalchemy import bindparam

        conn.execute(
            update(QuotaCounterRow)
            .where(
                and_(
                    QuotaCounterRow.gateway == bindparam("k_gateway"),
                    QuotaCounterRow.route == bindparam("k_route"),
                    QuotaCounterRow.key == bindparam("k_key"),
                    QuotaCounterRow.unit == bindparam("k_unit"),
                    QuotaCounterRow.window_start == bindparam("k_window_start"),
                )
            )
            .values(used=bindparam("k_used")),
            [
                {**{f"k_{n}": v for n, v in key._asdict().items()}, "k_used": used}
                for key, used in values.items()
            ],
        )

    def reserve(self, asks: Sequence[Ask]) -> list[int]:
        """How much of each ask was granted (0 .. want), counted as used, in one transaction.

        Asks for the same key are served in order from what the earlier ones left.
        """
        if not asks:
            return []
        with self._engine.begin() as conn:
            self._ensure(conn, {a.key: a.window_end for a in asks})
            used = self._locked(conn, [a.key for a in asks])
            granted: list[int] = []
            changed: dict[CounterKey, int] = {}
            for ask in asks:
                have = changed.get(ask.key, used.get(ask.key, 0))
                take = max(0, min(ask.want, ask.limit - have))
                granted.append(take)
                if take:
                    changed[ask.key] = have + take
            self._set(conn, changed)
        return granted

    def exchange(
        self,
        adds: Mapping[CounterKey, tuple[int, int]],
        asks: Sequence[Ask],
        earlier: Mapping[CounterKey, Sequence[CounterKey]] | None = None,
    ) -> list[int]:
        """:meth:`add` then :meth:`reserve` in ONE transaction (one usage report).

        ``earlier`` names, per ask key, rows of the same sliding window that also hold its
        limit: the ask may take at most ``limit`` minus their counts. Those rows belong to
        past sub-windows, which only ever decrease (budget given back), so reading them
        without a lock never lets two controllers grant more than the limit.
        """
        if not adds and not asks:
            return []
        earlier = earlier or {}
        with self._engine.begin() as conn:
            ends = {k: end for k, (_, end) in adds.items()}
            ends.update({a.key: a.window_end for a in asks})
            self._ensure(conn, ends)
            used = self._locked(conn, list(ends))
            current = dict(used)
            for key, (n, _) in adds.items():
                current[key] = max(0, current.get(key, 0) + n)
            before = sorted({k for a in asks for k in earlier.get(a.key, ())} - set(ends))
            past = self._read(conn, before)
            granted: list[int] = []
            for ask in asks:
                held = sum(past.get(k, current.get(k, 0)) for k in earlier.get(ask.key, ()))
                have = current.get(ask.key, 0)
                take = max(0, min(ask.want, ask.limit - held - have))
                granted.append(take)
                current[ask.key] = have + take
            self._set(conn, {k: v for k, v in current.items() if v != used.get(k, 0)})
        return granted

    def _read(self, conn: Any, keys: Sequence[CounterKey]) -> dict[CounterKey, int]:
        """Counts of ``keys`` without locking them (missing rows are absent)."""
        columns = _key_columns()
        out: dict[CounterKey, int] = {}
        for chunk in _chunks(sorted(set(keys)), 200):
            query = select(*columns, QuotaCounterRow.used).where(
                tuple_(*columns).in_([tuple(k) for k in chunk])
            )
            for row in conn.execute(query):
                out[CounterKey(*row[:5])] = int(row[5])
        return out

    def add(self, amounts: Mapping[CounterKey, tuple[int, int]]) -> dict[CounterKey, int]:
        """Add ``n`` (negative gives budget back, never below 0) to each key; ``amounts`` maps
        a key to ``(n, window_end)``. Returns the new counts."""
        if not amounts:
            return {}
        with self._engine.begin() as conn:
            self._ensure(conn, {k: end for k, (_, end) in amounts.items()})
            used = self._locked(conn, list(amounts))
            new = {k: max(0, used.get(k, 0) + n) for k, (n, _) in amounts.items()}
            self._set(conn, {k: v for k, v in new.items() if v != used.get(k, 0)})
        return new

    def used(self, keys: Iterable[CounterKey]) -> dict[CounterKey, int]:
        """The counts of ``keys`` (missing rows count 0)."""
        wanted = sorted(set(keys))
        with self._engine.connect() as conn:
            return {**dict.fromkeys(wanted, 0), **self._read(conn, wanted)}

    def rows(
        self,
        *,
        at: int,
        gateway: str | None = None,
        route: str | None = None,
        key: str | None = None,
        units: Iterable[str] = tuple(sorted(QUOTA_UNITS)),
    ) -> list[CounterRow]:
        """Counters of the windows open at unix time ``at``, filtered; calendar quotas only
        unless ``units`` says otherwise (the sub-windows of shared minute/hour budgets are
        the quota service's bookkeeping, not quotas to show)."""
        t = QuotaCounterRow
        query = (
            select(t.gateway, t.route, t.key, t.unit, t.window_start, t.window_end, t.used)
            .where(
                t.window_start <= at,
                t.window_end > at,
                t.unit.in_([str(u) for u in units]),
                *_filters(gateway, route, key, None),
            )
            .order_by(t.gateway, t.route, t.key, t.window_start)
        )
        with self._engine.connect() as conn:
            return [CounterRow(*row) for row in conn.execute(query)]

    def reset(
        self,
        *,
        at: int,
        gateway: str | None = None,
        route: str | None = None,
        key: str | None = None,
        unit: str | None = None,
    ) -> int:
        """Forget what the windows open at ``at`` (filtered) have counted; how many rows."""
        with self._engine.begin() as conn:
            done = conn.execute(
                delete(QuotaCounterRow).where(
                    QuotaCounterRow.window_start <= at,
                    QuotaCounterRow.window_end > at,
                    *_filters(gateway, route, key, unit),
                )
            )
        return int(done.rowcount or 0)

    def prune_units(self, units: Iterable[str], before: int) -> int:
        """Delete counters of ``units`` whose window ended before ``before`` (the sub-windows
        of sliding minute/hour budgets, which matter for minutes, not a day)."""
        with self._engine.begin() as conn:
            done = conn.execute(
                delete(QuotaCounterRow).where(
                    QuotaCounterRow.unit.in_(list(units)), QuotaCounterRow.window_end < before
                )
            )
        return int(done.rowcount or 0)

    def prune(self, now: int) -> int:
        """Delete counters of windows that ended more than a day before ``now``."""
        with self._engine.begin() as conn:
            done = conn.execute(
                delete(QuotaCounterRow).where(QuotaCounterRow.window_end < now - KEEP_ENDED)
            )
        return int(done.rowcount or 0)


def _filters(
    gateway: str | None, route: str | None, key: str | None, unit: str | None
) -> list[Any]:
    out: list[Any] = []
    if gateway is not None:
        out.append(QuotaCounterRow.gateway == gateway)
    if route is not None:
        out.append(QuotaCounterRow.route == route)
    if key is not None:
        out.append(QuotaCounterRow.key == key)
    if unit is not None:
        out.append(QuotaCounterRow.unit == unit)
    return out or [true()]


def _key_columns() -> tuple[Any, ...]:
    """The primary key of a counter row, in :class:`CounterKey` order."""
    return (
        QuotaCounterRow.gateway,
        QuotaCounterRow.route,
        QuotaCounterRow.key,
        QuotaCounterRow.unit,
        QuotaCounterRow.window_start,
    )


def _chunks(items: Sequence[CounterKey], size: int) -> Iterable[Sequence[CounterKey]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]

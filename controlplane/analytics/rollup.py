"""Per-minute rollups of access-log entries: aggregated in memory, written as deltas.

The sink adds each entry to a :class:`Cell` keyed by minute x gateway x route x consumer x
status class, and every second hands the cells changed since the last flush to
:class:`RollupWriter`, which adds them to the database rows in one transaction. Rows carry
the writing sink's id, so a sink only ever updates its own rows: no lock contention between
sinks, and no lost update. Rollups are not policy: they are written here, never through
``Store._commit``, so they never bump the policy revision.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, and_, bindparam, delete, func, insert, select, update

from ..store.db import make_engines, normalize_url
from ..store.tables import RollupRow
from . import histogram
from .classes import USAGE_CLASSES, rollup_class, split_class, status_class, usage_class

__all__ = [
    "USAGE_CLASSES",
    "Cell",
    "Key",
    "RollupReader",
    "RollupWriter",
    "Rollups",
    "rollup_class",
    "split_class",
    "status_class",
    "usage_class",
]

#: (minute, gateway, route, consumer, status class)
Key = tuple[int, str, str, str, str]


#: a rollup row's key (minute, gateway, route, consumer, status class) and its cell
_CELL_COLUMNS = (
    RollupRow.minute,
    RollupRow.gateway,
    RollupRow.route,
    RollupRow.consumer,
    RollupRow.status_class,
    RollupRow.requests,
    RollupRow.bytes_in,
    RollupRow.bytes_out,
    RollupRow.latency_ms_sum,
    RollupRow.latency_hist,
)


@dataclass(slots=True)
class Cell:
    requests: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    latency_ms_sum: float = 0.0
    hist: dict[int, int] = field(default_factory=dict)

    def add(self, other: Cell) -> None:
        self.requests += other.requests
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out
        self.latency_ms_sum += other.latency_ms_sum
        histogram.merge(self.hist, other.hist)


class Rollups:
    """Cells changed since the last :meth:`take`, bounded so a dead database cannot eat memory."""

    def __init__(self, max_cells: int = 200_000) -> None:
        self.max_cells = max_cells
        self.cells: dict[Key, Cell] = {}
        self.added = 0
        self.dropped = 0

    def add(self, key: Key, bytes_in: int, bytes_out: int, latency_ms: float) -> None:
        cell = self.cells.get(key)
        if cell is None:
            if len(self.cells) >= self.max_cells:
                self.dropped += 1
                return
            cell = self.cells[key] = Cell()
        cell.requests += 1
        cell.bytes_in += bytes_in
        cell.bytes_out += bytes_out
        cell.latency_ms_sum += latency_ms
        b = histogram.bucket_of(latency_ms)
        cell.hist[b] = cell.hist.get(b, 0) + 1
        self.added += 1

    def take(self) -> dict[Key, Cell]:
        cells, self.cells = self.cells, {}
        return cells

    def give_back(self, cells: dict[Key, Cell]) -> None:
        """Cells whose write failed: merged back to be written with the next flush."""
        for key, cell in cells.items():
            mine = self.cells.get(key)
            if mine is None:
                if len(self.cells) >= self.max_cells:
                    self.dropped += cell.requests
                    continue
                self.cells[key] = cell
            else:
                mine.add(cell)


class RollupWriter:
    """Adds cells to the sink's rows: one transaction per :meth:`write` (the sink calls it
    with batches of a bounded size)."""

    def __init__(self, db: str | None, sink: str, engine: Engine | None = None) -> None:
        """``engine``: a store's writer engine to share (the controller's sink: its
        connections then follow the store's file pin, ADR 0059), else one of its own."""
        self.sink = sink
        self._owned = engine is None
        self._writer = engine if engine is not None else make_engines(normalize_url(db))[0]

    def close(self) -> None:
        if self._owned:
            self._writer.dispose()

    def write(self, cells: dict[Key, Cell]) -> None:
        if not cells:
            return
        with self._writer.begin() as conn:
            existing: dict[Key, Cell] = {}
            rows = conn.execute(  # this sink's rows that may match a cell (a few extra at most)
                select(*_CELL_COLUMNS).where(
                    RollupRow.sink == self.sink,
                    RollupRow.minute.in_(sorted({k[0] for k in cells})),
                    RollupRow.gateway.in_(sorted({k[1] for k in cells})),
                    RollupRow.route.in_(sorted({k[2] for k in cells})),
                    RollupRow.consumer.in_(sorted({k[3] for k in cells})),
                )
            )
            for m, g, r, c, s, n, bi, bo, lat, hist in rows:
                existing[(m, g, r, c, s)] = Cell(n, bi, bo, lat, histogram.decode(hist))
            updates, inserts = [], []
            for key, cell in cells.items():
                old = existing.get(key)
                if old is not None:
                    old.add(cell)
                    updates.append(_row(key, old, self.sink, prefix="b_"))
                else:
                    inserts.append(_row(key, cell, self.sink))
            if updates:
                conn.execute(
                    update(RollupRow)
                    .where(
                        and_(
                            RollupRow.minute == bindparam("b_minute"),
                            RollupRow.gateway == bindparam("b_gateway"),
                            RollupRow.route == bindparam("b_route"),
                            RollupRow.consumer == bindparam("b_consumer"),
                            RollupRow.status_class == bindparam("b_status_class"),
                            RollupRow.sink == bindparam("b_sink"),
                        )
                    )
                    .values(
                        requests=bindparam("b_requests"),
                        bytes_in=bindparam("b_bytes_in"),
                        bytes_out=bindparam("b_bytes_out"),
                        latency_ms_sum=bindparam("b_latency_ms_sum"),
                        latency_hist=bindparam("b_latency_hist"),
                    ),
                    updates,
                )
            if inserts:
                conn.execute(insert(RollupRow), inserts)

    def prune(self, before_minute: int) -> int:
        """Delete rollups older than the retention (every sink's: the oldest are nobody's)."""
        with self._writer.begin() as conn:
            done = conn.execute(delete(RollupRow).where(RollupRow.minute < before_minute))
        return int(done.rowcount or 0)


#: the columns are BIGINT: a total saturates rather than failing the flush (and every later one)
_MAX_INT64 = (1 << 63) - 1


def _row(key: Key, cell: Cell, sink: str, prefix: str = "") -> dict[str, Any]:
    minute, gateway, route, consumer, klass = key
    values = {
        "minute": minute,
        "gateway": gateway,
        "route": route,
        "consumer": consumer,
        "status_class": klass,
        "sink": sink,
        "requests": min(cell.requests, _MAX_INT64),
        "bytes_in": min(cell.bytes_in, _MAX_INT64),
        "bytes_out": min(cell.bytes_out, _MAX_INT64),
        "latency_ms_sum": cell.latency_ms_sum,
        "latency_hist": histogram.encode(cell.hist),
    }
    return {prefix + k: v for k, v in values.items()}


@dataclass(frozen=True)
class Filter:
    since: float
    until: float
    gateway: str | None = None
    route: str | None = None
    consumer: str | None = None


class RollupReader:
    """Rollups summed over sinks, for ``gatewayctl analytics``."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @classmethod
    def open(cls, db: str | None) -> RollupReader:
        return cls(make_engines(normalize_url(db))[1])

    def rows(self, f: Filter) -> Iterator[tuple[Key, Cell]]:
        """Every (key, cell) in ``[since, until)`` at minute granularity, summed over sinks."""
        query = select(*_CELL_COLUMNS).where(
            RollupRow.minute >= int(f.since // 60),
            RollupRow.minute < int(-(-f.until // 60)),
        )
        if f.gateway:
            query = query.where(RollupRow.gateway == f.gateway)
        if f.route:
            query = query.where(RollupRow.route == f.route)
        if f.consumer is not None:
            query = query.where(RollupRow.consumer == f.consumer)
        merged: dict[Key, Cell] = {}
        with self._engine.connect() as conn:
            for m, g, r, c, s, n, bi, bo, lat, hist in conn.execute(query):
                cell = Cell(n, bi, bo, lat, histogram.decode(hist))
                key = (m, g, r, c, s)
                if key in merged:
                    merged[key].add(cell)
                else:
                    merged[key] = cell
        yield from sorted(merged.items())

    def usage_counts(self, f: Filter) -> dict[str, int]:
        """Requests per usage class in ``[since, until)`` (minute granularity), over sinks."""
        query = (
            select(RollupRow.status_class, func.coalesce(func.sum(RollupRow.requests), 0))
            .where(
                RollupRow.minute >= int(f.since // 60),
                RollupRow.minute < int(-(-f.until // 60)),
            )
            .group_by(RollupRow.status_class)
        )
        if f.gateway:
            query = query.where(RollupRow.gateway == f.gateway)
        if f.route:
            query = query.where(RollupRow.route == f.route)
        if f.consumer is not None:
            query = query.where(RollupRow.consumer == f.consumer)
        out = dict.fromkeys(USAGE_CLASSES, 0)
        with self._engine.connect() as conn:
            for klass, n in conn.execute(query):
                out[split_class(klass)[1]] += int(n)
        return out

    def total_requests(self, f: Filter) -> int:
        query = select(func.coalesce(func.sum(RollupRow.requests), 0)).where(
            RollupRow.minute >= int(f.since // 60), RollupRow.minute < int(-(-f.until // 60))
        )
        if f.gateway:
            query = query.where(RollupRow.gateway == f.gateway)
        if f.route:
            query = query.where(RollupRow.route == f.route)
        if f.consumer is not None:
            query = query.where(RollupRow.consumer == f.consumer)
        with self._engine.connect() as conn:
            return int(conn.execute(query).scalar_one())


def now_minute() -> int:
    return int(time.time() // 60)


def group(rows: Iterable[tuple[Key, Cell]], by: Any) -> dict[Any, Cell]:
    """Sum cells by ``by(key)``."""
    out: dict[Any, Cell] = {}
    for key, cell in rows:
        k = by(key)
        if k in out:
            out[k].add(cell)
        else:
            out[k] = Cell(
                cell.requests, cell.bytes_in, cell.bytes_out, cell.latency_ms_sum, dict(cell.hist)
            )
    return out

"""Usage export for billing: one row per hour x gateway x route x consumer.

``gatewayctl analytics export`` and ``GET /v1/analytics/export`` produce the same rows from
the rollups (:data:`COLUMNS`, in this order, is a stable interface: columns are only ever
added at the end). The request columns are the usage classes of
:func:`~controlplane.analytics.rollup.usage_class`; they never overlap and add up to
``requests``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from . import histogram
from .classes import USAGE_CLASSES, split_class

if TYPE_CHECKING:
    from .rollup import Cell, Key

__all__ = ["COLUMNS", "FORMATS", "export_rows", "render"]

#: the export's columns, in order (README "Usage export" documents each)
COLUMNS: tuple[str, ...] = (
    "hour",
    "gateway",
    "route",
    "consumer",
    "requests",
    *USAGE_CLASSES,
    "bytes_in",
    "bytes_out",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
)
FORMATS = ("csv", "jsonl")

#: usage classes whose latency is the backend path's (the percentiles' population): the
#: gateway's own refusals are answered in microseconds and would hide a slow backend
_SERVED = frozenset({"admitted", "upstream_errors"})


def export_rows(rows: Iterable[tuple[Key, Cell]]) -> list[dict[str, Any]]:
    """Rollup cells -> export rows (sorted by hour, gateway, route, consumer)."""
    from .rollup import Cell

    per: dict[tuple[int, str, str, str], dict[str, Any]] = {}
    for (minute, gateway, route, consumer, klass), cell in rows:
        hour = minute // 60
        row = per.get((hour, gateway, route, consumer))
        if row is None:
            row = per[(hour, gateway, route, consumer)] = {
                "counts": dict.fromkeys(USAGE_CLASSES, 0),
                "cell": Cell(),
                "served": {},
            }
        usage = split_class(klass)[1]
        row["counts"][usage] += cell.requests
        row["cell"].add(cell)
        if usage in _SERVED:
            histogram.merge(row["served"], cell.hist)
    out = []
    for (hour, gateway, route, consumer), row in sorted(per.items()):
        total: Cell = row["cell"]
        served: dict[int, int] = row["served"]
        out.append(
            {
                "hour": datetime.fromtimestamp(hour * 3600, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "gateway": gateway,
                "route": route,
                "consumer": consumer,
                "requests": total.requests,
                **row["counts"],
                "bytes_in": total.bytes_in,
                "bytes_out": total.bytes_out,
                "latency_p50_ms": _ms(histogram.percentile(served, 0.50)),
                "latency_p95_ms": _ms(histogram.percentile(served, 0.95)),
                "latency_p99_ms": _ms(histogram.percentile(served, 0.99)),
            }
        )
    return out


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def render(items: list[dict[str, Any]], fmt: str) -> str:
    """CSV (RFC 4180: a header line, CRLF line ends, empty cell for none) or JSON Lines
    (one object per line, ``null`` for none), columns in :data:`COLUMNS` order."""
    if fmt == "jsonl":
        return "".join(
            json.dumps({c: item.get(c) for c in COLUMNS}, separators=(",", ":")) + "\n"
            for item in items
        )
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(COLUMNS)
    for item in items:
        writer.writerow(["" if item.get(c) is None else item.get(c) for c in COLUMNS])
    return buf.getvalue()

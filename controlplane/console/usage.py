"""The console's usage page: per-step series by status class (the gateway's 429s and
401/403s apart from other 4xx) and by usage class (admitted, throttled, ...), latency and
bytes, as JSON, CSV and server-drawn SVG charts.

The rows come from the same function as ``/v1/analytics/...`` (``controlplane.api.analytics``
``_rows``), with the caller's role and gateway scope checked there. Charts are drawn here as
SVG (no chart library, nothing to download or build; ADR 0042): every text in them is XML
escaped, and the browser shows them as images, where no script runs.
"""

from __future__ import annotations

import csv
import io
import math
from datetime import UTC, datetime
from typing import Annotated, Any
from xml.sax.saxutils import escape, quoteattr

from fastapi import APIRouter, Query
from fastapi.responses import Response

from ..api.analytics import ConsumerQuery, NameQuery
from ..api.deps import Caller, StoreDep
from ..api.errors import ApiError

__all__ = ["RANGES", "router", "usage_series"]

router = APIRouter(prefix="/ui", include_in_schema=False)

#: the time ranges the page offers, with the step of their points
RANGES = {
    "15m": (15 * 60, 60),
    "1h": (3600, 60),
    "6h": (6 * 3600, 300),
    "24h": (86400, 900),
    "7d": (7 * 86400, 3600),
    "30d": (30 * 86400, 6 * 3600),
}
#: the series of the status-class chart, in the order shown: the HTTP status class, except
#: that the gateway's own refusals are drawn apart from the backend's answers: ``429`` the
#: requests its rate limits throttled, ``401/403`` those it refused as unauthenticated
#: (a backend's own 429 or 401 stays in ``4xx``: it was admitted; ADR 0044)
_ORDER = ("2xx", "3xx", "4xx", "429", "401/403", "5xx", "1xx", "none")
#: the status series of the gateway's refusals, by usage class
_REFUSAL_SERIES = {"throttled": "429", "unauthenticated": "401/403"}
_COLOURS = {
    "2xx": "#2b7a3d",
    "3xx": "#5a6573",
    "4xx": "#b3a100",
    "429": "#c76b00",
    "401/403": "#7a5cad",
    "5xx": "#b3261e",
    "1xx": "#2b6cb0",
    "none": "#000000",
    "admitted": "#2b7a3d",
    "throttled": "#c76b00",
    "unauthenticated": "#7a5cad",
    "upstream_errors": "#b3261e",
    "refused": "#000000",
    "p50": "#2b6cb0",
    "p95": "#c76b00",
    "p99": "#b3261e",
    "bytes_in": "#2b6cb0",
    "bytes_out": "#2b7a3d",
}
RangeQuery = Annotated[str, Query(pattern="^(15m|1h|6h|24h|7d|30d)$")]


def _classes(seen: set[str]) -> list[str]:
    return [c for c in _ORDER if c in seen] + sorted(seen - set(_ORDER))


def series_of(rollup_class: str) -> tuple[str, str]:
    """A rollup's status class column (``4xx:t``) -> (status series, usage class): the
    series is the HTTP status class, or ``429`` / ``401/403`` for a 4xx the gateway itself
    answered because of its rate limits / authentication."""
    from ..analytics.classes import split_class

    klass, usage = split_class(rollup_class)
    if klass == "4xx" and usage in _REFUSAL_SERIES:
        return _REFUSAL_SERIES[usage], usage
    return klass, usage


def usage_series(
    store: Any,
    principal: Any,
    span: str,
    gateway: str | None,
    route: str | None,
    consumer: str | None,
    now: float | None = None,
) -> dict[str, Any]:
    """Points of ``span`` (a key of :data:`RANGES`) ending now: per step its time (UTC),
    requests per status series and per usage class (admitted, throttled, ...: the classes
    a plan's limits and billing count, ADR 0044), p50/p95/p99 latency and bytes in and out.

    Latency is of the requests that took the backend path (admitted and upstream errors),
    as in the billing export: the gateway's own refusals answer in microseconds and would
    hide a slow backend behind a burst of 429s."""
    import time

    from ..analytics import histogram
    from ..analytics.classes import USAGE_CLASSES
    from ..analytics.rollup import Cell, group
    from ..api.analytics import _rows

    seconds, step = RANGES[span]
    end = time.time() if now is None else now
    start = end - seconds
    iso = lambda t: datetime.fromtimestamp(t, UTC).isoformat()  # noqa: E731
    rows, _, _ = _rows(store, principal, iso(start), iso(end), gateway, route, consumer)
    step_min = step // 60
    first = int(start // 60) // step_min * step_min
    last = math.ceil(end / 60)
    by_bucket = group(rows, lambda k: (k[0] // step_min * step_min, *series_of(k[4])))
    classes = _classes({c for _, c, _ in by_bucket})
    cells: dict[int, list[tuple[str, str, Cell]]] = {}
    for (minute, series, usage), cell in by_bucket.items():
        cells.setdefault(minute, []).append((series, usage, cell))
    points = []
    for minute in range(first, last, step_min):
        counts = dict.fromkeys(classes, 0)
        usage_counts = dict.fromkeys(USAGE_CLASSES, 0)
        total = Cell()
        backend: dict[int, int] = {}
        for series, usage, cell in cells.get(minute, ()):
            counts[series] += cell.requests
            usage_counts[usage] += cell.requests
            total.add(cell)
            if usage in ("admitted", "upstream_errors"):
                histogram.merge(backend, cell.hist)
        points.append(
            {
                "time": datetime.fromtimestamp(minute * 60, UTC).isoformat(),
                "requests": total.requests,
                "status": counts,
                "usage": usage_counts,
                "p50_ms": _ms(histogram.percentile(backend, 0.50)),
                "p95_ms": _ms(histogram.percentile(backend, 0.95)),
                "p99_ms": _ms(histogram.percentile(backend, 0.99)),
                "bytes_in": total.bytes_in,
                "bytes_out": total.bytes_out,
            }
        )
    return {
        "range": span,
        "step_s": step,
        "zone": "UTC",
        "since": iso(start),
        "until": iso(end),
        "classes": classes,
        "usage_classes": list(USAGE_CLASSES),
        "points": points,
    }


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _label(time_iso: str, span: str) -> str:
    t = datetime.fromisoformat(time_iso)
    return t.strftime("%m-%d %H:%M" if span in ("7d", "30d", "24h") else "%H:%M")


def _svg(title: str, data: dict[str, Any], series: dict[str, list[float | None]], unit: str) -> str:
    """A line chart: one line per series, labelled axes (times in UTC), a legend."""
    width, height, left, right, top, bottom = 760, 240, 64, 12, 28, 46
    plot_w, plot_h = width - left - right, height - top - bottom
    points = data["points"]
    n = max(len(points), 1)
    peak = max((v for vs in series.values() for v in vs if v is not None), default=0) or 1
    x = lambda i: left + (plot_w * i / max(n - 1, 1))  # noqa: E731
    y = lambda v: top + plot_h - plot_h * v / peak  # noqa: E731
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label={quoteattr(title)} font-family="sans-serif" font-size="13">',
        f"<title>{escape(title)}</title>",
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff"/>',
    ]
    for frac in (0, 0.5, 1):
        yy = top + plot_h - plot_h * frac
        out.append(
            f'<line x1="{left}" x2="{width - right}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#d5dae1"/>'
        )
        out.append(
            f'<text x="{left - 6}" y="{yy + 4:.1f}" text-anchor="end">'
            f"{escape(_figure(peak * frac))}</text>"
        )
    out.append(f'<text x="4" y="14">{escape(unit)}</text>')
    for i in sorted({0, (n - 1) // 2, n - 1}):
        if i < len(points):
            anchor = "start" if i == 0 else "end" if i == n - 1 else "middle"
            out.append(
                f'<text x="{x(i):.1f}" y="{top + plot_h + 16}" text-anchor="{anchor}">'
                f"{escape(_label(points[i]['time'], data['range']))}</text>"
            )
    out.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle">'
        f"time (UTC), one point per {escape(_step(data['step_s']))}</text>"
    )
    lx = left + 100
    for name, values in series.items():
        colour = _COLOURS.get(name, "#333333")
        path: list[str] = []
        dots: list[str] = []
        for i, v in enumerate(values):
            if v is None:
                continue
            path.append(f"{'M' if not path else 'L'}{x(i):.1f},{y(v):.1f}")
            if v:  # a point with data stays visible even without neighbours to join
                dots.append(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="2.5" fill="{colour}"/>')
        out.extend(dots)
        if path:
            out.append(
                f'<path d="{" ".join(path)}" fill="none" stroke="{colour}" stroke-width="2"/>'
            )
        out.append(f'<rect x="{lx}" y="6" width="10" height="10" fill="{colour}"/>')
        out.append(f'<text x="{lx + 14}" y="15">{escape(name)}</text>')
        lx += 14 + 8 * len(name) + 16
    out.append("</svg>")
    return "\n".join(out)


def _figure(v: float) -> str:
    if v >= 1e9:
        return f"{v / 1e9:.1f}G"
    if v >= 1e6:
        return f"{v / 1e6:.1f}M"
    if v >= 1e4:
        return f"{v / 1e3:.0f}k"
    return f"{v:.0f}" if v >= 10 or v == 0 else f"{v:.1f}"


def _step(seconds: int) -> str:
    return f"{seconds // 3600} h" if seconds >= 3600 else f"{seconds // 60} min"


@router.get("/usage.json")
def usage_json(
    principal: Caller,
    store: StoreDep,
    range: RangeQuery = "1h",
    gateway: NameQuery = None,
    route: NameQuery = None,
    consumer: ConsumerQuery = None,
) -> dict[str, Any]:
    return usage_series(store, principal, range, gateway, route, consumer)


@router.get("/usage.csv")
def usage_csv(
    principal: Caller,
    store: StoreDep,
    range: RangeQuery = "1h",
    gateway: NameQuery = None,
    route: NameQuery = None,
    consumer: ConsumerQuery = None,
) -> Response:
    """The page's figures as CSV: one row per step, times in UTC. The usage classes and
    every status series are columns whether or not the range has any (0), so the columns
    do not change from one download to the next."""
    data = usage_series(store, principal, range, gateway, route, consumer)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    usage = data["usage_classes"]
    classes = list(_ORDER) + [c for c in data["classes"] if c not in _ORDER]
    writer.writerow(
        [
            "time_utc",
            "requests",
            *usage,
            *classes,
            "p50_ms",
            "p95_ms",
            "p99_ms",
            "bytes_in",
            "bytes_out",
        ]
    )
    for p in data["points"]:
        writer.writerow(
            [
                p["time"],
                p["requests"],
                *(p["usage"][c] for c in usage),
                *(p["status"].get(c, 0) for c in classes),
                *("" if p[k] is None else p[k] for k in ("p50_ms", "p95_ms", "p99_ms")),
                p["bytes_in"],
                p["bytes_out"],
            ]
        )
    name = "-".join(x for x in ("usage", range, gateway, route, consumer) if x)
    return Response(
        buf.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="{name}.csv"',
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )


@router.get("/usage.svg")
def usage_svg(
    principal: Caller,
    store: StoreDep,
    chart: Annotated[str, Query(pattern="^(requests|usage|latency|bytes)$")] = "requests",
    range: RangeQuery = "1h",
    gateway: NameQuery = None,
    route: NameQuery = None,
    consumer: ConsumerQuery = None,
) -> Response:
    data = usage_series(store, principal, range, gateway, route, consumer)
    points = data["points"]
    if chart == "requests":
        series: dict[str, list[float | None]] = {
            c: [p["status"][c] for p in points] for c in data["classes"]
        }
        svg = _svg("Requests per step by status class", data, series, "requests")
    elif chart == "usage":
        # the classes of the range (admitted always): five flat lines at 0 would hide the rest
        shown = [
            c
            for c in data["usage_classes"]
            if c == "admitted" or any(p["usage"][c] for p in points)
        ]
        series = {c: [p["usage"][c] for p in points] for c in shown}
        svg = _svg("Requests per step by usage class", data, series, "requests")
    elif chart == "latency":
        series = {q: [p[f"{q}_ms"] for p in points] for q in ("p50", "p95", "p99")}
        svg = _svg("Latency percentiles (admitted and upstream errors)", data, series, "ms")
    elif chart == "bytes":
        series = {k: [p[k] for p in points] for k in ("bytes_in", "bytes_out")}
        svg = _svg("Bytes per step", data, series, "bytes")
    else:  # pragma: no cover - the pattern admits nothing else
        raise ApiError(400, "invalid", f"chart: {chart!r}", "chart")
    return Response(
        svg,
        media_type="image/svg+xml",
        headers={
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
        },
    )

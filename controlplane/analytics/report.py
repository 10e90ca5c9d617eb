"""Questions asked of the rollups: totals, top consumers and routes, percentiles, series.

Everything here works on ``(key, cell)`` pairs read by :class:`RollupReader`, so the same
numbers come out as tables, JSON, a terminal chart or the HTML report.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from . import histogram
from .rollup import USAGE_CLASSES, Cell, Key, group, split_class

__all__ = ["html_report", "series", "summarise", "text_chart", "top"]

CLASSES = ("2xx", "3xx", "4xx", "5xx", "1xx", "none")


def _stats(cells: Iterable[Cell]) -> dict[str, Any]:
    """Requests, bytes, latency percentiles of a set of cells."""
    total = Cell()
    for c in cells:
        total.add(c)
    n = total.requests
    return {
        "requests": n,
        "bytes_in": total.bytes_in,
        "bytes_out": total.bytes_out,
        "latency_ms": {
            "mean": round(total.latency_ms_sum / n, 3) if n else None,
            "p50": _round(histogram.percentile(total.hist, 0.50)),
            "p95": _round(histogram.percentile(total.hist, 0.95)),
            "p99": _round(histogram.percentile(total.hist, 0.99)),
        },
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def summarise(rows: list[tuple[Key, Cell]]) -> dict[str, Any]:
    """All requests in the rows: totals, per status class, error rate, percentiles."""
    by_class = group(rows, lambda k: split_class(k[4])[0])
    by_usage = group(rows, lambda k: split_class(k[4])[1])
    out = _stats(c for _, c in rows)
    out["status"] = {k: by_class[k].requests for k in CLASSES if k in by_class}
    out["usage"] = {k: by_usage[k].requests if k in by_usage else 0 for k in USAGE_CLASSES}
    out["error_rate"] = _error_rate(out["status"], out["requests"])
    return out


def _error_rate(status: dict[str, int], total: int) -> float | None:
    """Share of requests answered 5xx or not at all (4xx are the caller's errors)."""
    if not total:
        return None
    return round((status.get("5xx", 0) + status.get("none", 0)) / total, 6)


def top(rows: list[tuple[Key, Cell]], by: str, limit: int = 10) -> list[dict[str, Any]]:
    """Consumers or routes (``by``) ordered by request count, each with its own figures."""
    index = {"gateway": 1, "route": 2, "consumer": 3}[by]
    per: dict[str, list[tuple[Key, Cell]]] = {}
    for key, cell in rows:
        per.setdefault(str(key[index]), []).append((key, cell))
    out = []
    for name, items in per.items():
        entry = {by: name or "-", **summarise(items)}
        out.append(entry)
    out.sort(key=lambda e: (-e["requests"], e[by]))
    return out[:limit] if limit else out


def series(
    rows: list[tuple[Key, Cell]], since: float, until: float, step_s: int = 60
) -> list[dict[str, Any]]:
    """Requests, errors (5xx and no response) and p99 per ``step_s`` over [since, until)."""
    step_min = max(1, step_s // 60)
    first = int(since // 60) // step_min * step_min
    last = math.ceil(until / 60)
    buckets: dict[int, list[tuple[Key, Cell]]] = {}
    for key, cell in rows:
        buckets.setdefault(key[0] // step_min * step_min, []).append((key, cell))
    out = []
    for minute in range(first, last, step_min):
        items = buckets.get(minute, [])
        s = summarise(items)
        out.append(
            {
                "time": datetime.fromtimestamp(minute * 60, UTC).isoformat(),
                "requests": s["requests"],
                "errors": s["status"].get("5xx", 0) + s["status"].get("none", 0),
                "p99_ms": s["latency_ms"]["p99"],
            }
        )
    return out


def text_chart(points: list[dict[str, Any]], width: int = 40) -> str:
    """One line per step: a bar of requests, then requests, errors and p99 in figures."""
    peak = max((p["requests"] for p in points), default=0) or 1
    lines = [f"{'TIME (UTC)':<16}  {'REQUESTS':<{width}}  {'REQ':>8} {'ERR':>6} {'P99 ms':>9}"]
    for p in points:
        bar = "█" * round(p["requests"] / peak * width) if p["requests"] else ""
        err = "!" if p["errors"] else " "
        p99 = "" if p["p99_ms"] is None else f"{p['p99_ms']:.1f}"
        lines.append(
            f"{p['time'][:16].replace('T', ' '):<16}  {bar:<{width}}  "
            f"{p['requests']:>8,} {p['errors']:>6,}{err}{p99:>9}"
        )
    return "\n".join(lines)


def html_report(
    title: str,
    points: list[dict[str, Any]],
    summary: dict[str, Any],
    consumers: list[dict[str, Any]],
    routes: list[dict[str, Any]],
) -> str:
    """A self-contained page: data as JSON, charts drawn as SVG by inline script (no CDN)."""
    data = json.dumps({"points": points}).replace("</", "<\\/")

    def table(rows: list[dict[str, Any]], by: str) -> str:
        head = (
            f"<tr><th>{by}</th><th>requests</th><th>2xx</th><th>4xx</th><th>5xx</th>"
            "<th>error rate</th><th>p50 ms</th><th>p95 ms</th><th>p99 ms</th></tr>"
        )
        body = "".join(
            f"<tr><td>{html.escape(str(r[by]))}</td><td>{r['requests']:,}</td>"
            f"<td>{r['status'].get('2xx', 0):,}</td><td>{r['status'].get('4xx', 0):,}</td>"
            f"<td>{r['status'].get('5xx', 0):,}</td><td>{_pct(r['error_rate'])}</td>"
            f"<td>{_num(r['latency_ms']['p50'])}</td><td>{_num(r['latency_ms']['p95'])}</td>"
            f"<td>{_num(r['latency_ms']['p99'])}</td></tr>"
            for r in rows
        )
        return f"<table class='{by}s'>{head}{body}</table>"

    lat = summary["latency_ms"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 2em; color: #222; }}
.chart {{ margin: 1em 0 2em; }} .chart h2 {{ font-size: 15px; margin: 0 0 .3em; }}
svg {{ background: #fafafa; border: 1px solid #ddd; }}
.bar {{ fill: #4a7bd0; }} .bar.errors {{ fill: #d0574a; }}
.line {{ fill: none; stroke: #7a4ad0; stroke-width: 2; }}
.axis {{ font-size: 10px; fill: #666; }}
table {{ border-collapse: collapse; margin: .5em 0 2em; }}
td, th {{ border: 1px solid #ddd; padding: 3px 8px; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p id="summary">{summary["requests"]:,} requests; error rate {_pct(summary["error_rate"])};
latency p50 {_num(lat["p50"])} ms, p95 {_num(lat["p95"])} ms, p99 {_num(lat["p99"])} ms
(upper bounds of 19 % wide buckets).</p>
<div class="chart"><h2>Requests per step</h2>
<svg id="chart-requests" width="900" height="160"></svg></div>
<div class="chart"><h2>Errors (5xx and no response) per step</h2>
<svg id="chart-errors" width="900" height="160"></svg></div>
<div class="chart"><h2>p99 latency (ms)</h2>
<svg id="chart-p99" width="900" height="160"></svg></div>
<h2>Top consumers</h2>{table(consumers, "consumer")}
<h2>Top routes</h2>{table(routes, "route")}
<script type="application/json" id="data">{data}</script>
<script>
(function () {{
  var NS = "http://www.w3.org/2000/svg";
  var points = JSON.parse(document.getElementById("data").textContent).points;
  function el(name, attrs, parent) {{
    var e = document.createElementNS(NS, name);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    parent.appendChild(e);
    return e;
  }}
  function axis(svg, max, h) {{
    el("text", {{x: 4, y: 12, "class": "axis"}}, svg).textContent = String(max);
    el("text", {{x: 4, y: h - 4, "class": "axis"}}, svg).textContent = "0";
    if (points.length) {{
      var first = points[0].time, last = points[points.length - 1].time;
      el("text", {{x: 40, y: h - 4, "class": "axis"}}, svg).textContent = first.slice(0, 16);
      el("text", {{x: 760, y: h - 4, "class": "axis"}}, svg).textContent = last.slice(0, 16);
    }}
  }}
  function bars(id, field, cls) {{
    var svg = document.getElementById(id), w = 900, h = 160, n = points.length || 1;
    var vals = points.map(function (p) {{ return p[field]; }});
    var max = Math.max.apply(null, vals.concat([1]));
    var bw = (w - 40) / n;
    points.forEach(function (p, i) {{
      var bh = (h - 24) * p[field] / max;
      var r = el("rect", {{x: 36 + i * bw, y: h - 16 - bh, width: Math.max(1, bw - 1),
                          height: bh, "class": cls, "data-value": p[field],
                          "data-time": p.time}}, svg);
      el("title", {{}}, r).textContent = p.time + ": " + p[field];
    }});
    axis(svg, max, h);
  }}
  function line(id, field) {{
    var svg = document.getElementById(id), w = 900, h = 160, n = points.length || 1;
    var vals = points.map(function (p) {{ return p[field] || 0; }});
    var max = Math.max.apply(null, vals.concat([1]));
    var step = (w - 40) / n, pts = [];
    points.forEach(function (p, i) {{
      if (p[field] === null) return;
      var x = 36 + i * step + step / 2, y = h - 16 - (h - 24) * p[field] / max;
      pts.push(x.toFixed(1) + "," + y.toFixed(1));
      el("circle", {{cx: x, cy: y, r: 2.5, "class": "point", "data-value": p[field]}}, svg);
    }});
    el("polyline", {{points: pts.join(" "), "class": "line"}}, svg);
    axis(svg, Math.round(max * 10) / 10, h);
  }}
  bars("chart-requests", "requests", "bar requests");
  bars("chart-errors", "errors", "bar errors");
  line("chart-p99", "p99_ms");
  document.body.setAttribute("data-rendered", "true");
}})();
</script>
</body></html>
"""


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.2f} %"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"

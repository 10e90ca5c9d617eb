"""Short routes into a sharded gateway: no new listener, each live within 30 ms p99.

Run from the repository root with the project's venv::

    nice -n 10 python -m bench.short_route                  # 10,000 routes, 50 short ones
    nice -n 10 python -m bench.short_route --routes 10000 --additions 50 --json out.json

A fresh stack (bench/harness.py: SQLite, two echo backends, ``gatewayctl serve``, one real
Envoy 1.40) starts with N routes ``/r/00000``.. preloaded, so the gateway is sharded by six
path characters from the start (docs/decisions/0017). Then routes whose path is shorter than
the shard key are added one at a time with ``Store.create``: first ``/new`` (issue 14), then
``/n000``, ``/n001``.. (5 characters). Each is timed from the commit returning to the first
200 through Envoy (it answered 404 before), on one keep-alive connection polled in a tight
loop. Envoy's listener counters (``listener_manager.*``) are read before and after: a new
layout would be a new listener (``listener_modified`` or ``listener_added`` +1, a listener
draining). Old routes are checked to answer throughout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import GATEWAY, Probe, Stack, make_route, route_path
from bench.run import fmt, loadavg, log
from bench.stats import summary
from controlplane.envoy_launcher import stats
from controlplane.policy import Route

TARGET_P99_MS = 30.0
LISTENER_STATS = (
    r"listener_manager\.(listener_added|listener_modified|listener_in_place_updated"
    r"|listener_removed|total_listeners_draining|total_listeners_warming|total_listeners_active)$"
)


def _short(i: int) -> Route:
    path = "/new" if i == 0 else f"/n{i - 1:03d}"
    return Route(name=f"short{i:03d}", gateways=[GATEWAY], match={"path_prefix": path}, cluster="b")


def run(routes: int, count: int, keep: bool) -> dict[str, Any]:
    with Stack(keep=keep) as stack:
        stack.start([make_route("r", i, "a") for i in range(routes)])
        probe = Probe(stack.ports["listener"])
        try:
            probe.wait_for(route_path("r", routes - 1), lambda st, _b: st == 200, timeout=300)
            time.sleep(2.0)  # let the first configuration settle (ACKs, status)
            admin = stack.ports["admin"]
            before = stats(admin, LISTENER_STATS)
            live: list[float] = []
            for i in range(count):
                route = _short(i)
                path = route.match.path_prefix or ""
                status, _ = probe.get(path + "/x")
                assert status == 404, f"{path} answered {status} before its route existed"
                assert stack.store is not None
                stack.store.create(route)
                t0 = time.perf_counter()
                live.append(
                    probe.wait_for(path + "/x", lambda st, _b: st == 200, timeout=30, start=t0)
                )
                status, backend = probe.get(route_path("r", (i * 197) % routes))
                assert (status, backend) == (200, "a"), (status, backend)
            after = stats(admin, LISTENER_STATS)
            out = {
                "routes": routes,
                "added": count,
                "live": summary(live),
                "raw_live_s": live,
                "listener_stats_before": before,
                "listener_stats_after": after,
                "loadavg": loadavg(),
            }
            log(f"  short routes, commit -> 404 becomes 200: {fmt(out['live'])}")
            log(f"  listener counters before {before}")
            log(f"  listener counters after  {after}")
            return out
        finally:
            probe.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.short_route", description=__doc__)
    p.add_argument("--routes", type=int, default=10_000)
    p.add_argument("--additions", type=int, default=50)
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--keep", action="store_true")
    args = p.parse_args(argv)
    log(f"load average at start: {loadavg()}")
    out = run(args.routes, args.additions, args.keep)
    same = out["listener_stats_before"] == out["listener_stats_after"]
    p99 = out["live"]["p99"]
    print(
        f"{args.routes} routes + {args.additions} short routes: live {fmt(out['live'])}; "
        f"listener counters unchanged: {same}; "
        f"p99 <= {TARGET_P99_MS:g} ms: {'MET' if p99 <= TARGET_P99_MS else 'MISSED'}; "
        f"load average {loadavg()}"
    )
    if args.json:
        Path(os.getcwd(), args.json).write_text(json.dumps(out, indent=1))
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""The controller's share of a push, in-process: ``Runner.poll`` after a one-route change.

No Envoy, no probe, no subprocess: a temporary SQLite store with N routes, a real
``Runner`` and ``SnapshotCache``, and one route moved between two clusters per change. This
isolates the controller's CPU cost per push from CPU contention with Envoy and the probe
loop on a small machine, and counts the full garbage collections that land in it::

    python -m bench.rebuild --routes 10000 --changes 40
    python -m bench.rebuild --routes 10000 --changes 20 --profile    # + cProfile top 25
    python -m bench.rebuild --routes 10000 --gc freeze                # gc.freeze() after load
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/rebuild.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import GATEWAY, make_route, route_name, set_cluster
from bench.stats import summary
from controlplane.policy import Cluster, Gateway
from controlplane.runner import Runner
from controlplane.store import Store
from controlplane.xds.cache import SnapshotCache


async def measure(store: Store, n: int, changes: int, gc_mode: str, profile: bool) -> None:
    runner = Runner(store, SnapshotCache(), controller="bench", xds_address="-")
    t = time.perf_counter()
    await runner.load()
    print(
        f"Runner.load with {n} routes: {(time.perf_counter() - t) * 1000:.0f} ms; "
        f"{len(gc.get_objects())} objects tracked by the GC"
    )
    if gc_mode == "freeze":
        gc.collect()
        gc.freeze()
    elif gc_mode == "off":
        gc.disable()
    pauses: list[float] = []
    started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        elif info["generation"] == 2:
            pauses.append(time.perf_counter() - started[0])

    gc.callbacks.append(on_gc)
    profiler = cProfile.Profile() if profile else None
    name = route_name("r", n // 2)
    polls: list[float] = []
    cpu0 = time.process_time()
    for i in range(changes):
        want = "b" if i % 2 == 0 else "a"
        store.update("route", name, set_cluster(want))
        if profiler:
            profiler.enable()
        t = time.perf_counter()
        assert await runner.poll()
        polls.append(time.perf_counter() - t)
        if profiler:
            profiler.disable()
    cpu = time.process_time() - cpu0
    gc.callbacks.remove(on_gc)
    s = summary(polls)
    print(
        f"Runner.poll after a one-route change (gc {gc_mode}): p50 {s['p50']:.1f} ms, "
        f"p90 {s['p90']:.1f}, p99 {s['p99']:.1f}, max {s['max']:.1f} (n={s['n']}); "
        f"process CPU {cpu * 1000 / changes:.1f} ms per change (incl. the Store.update)"
    )
    if pauses:
        p = summary(pauses)
        print(
            f"full GCs: {len(pauses)} in {changes} changes, pause p50 {p['p50']:.0f} ms, "
            f"max {p['max']:.0f} ms"
        )
    else:
        print(f"full GCs: none in {changes} changes")
    if profiler:
        stats = pstats.Stats(profiler)
        stats.sort_stats("tottime").print_stats(25)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.rebuild", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--routes", type=int, default=10000)
    p.add_argument("--changes", type=int, default=40)
    p.add_argument("--gc", choices=("default", "freeze", "off"), default="default")
    p.add_argument("--profile", action="store_true", help="print cProfile's top 25 by own time")
    args = p.parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="gw-rebuild-")
    try:
        store = Store(str(Path(workdir) / "gateway.db"), create=True)
        store.apply_objects(
            [
                Gateway(name=GATEWAY, port=10000, address="127.0.0.1"),
                Cluster(name="a", endpoints=["127.0.0.1:1"]),
                Cluster(name="b", endpoints=["127.0.0.1:2"]),
            ]
        )
        store.apply_objects(make_route("r", i, "b" if i == 0 else "a") for i in range(args.routes))
        asyncio.run(measure(store, args.routes, args.changes, args.gc, args.profile))
        store.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

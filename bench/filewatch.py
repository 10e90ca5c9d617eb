"""The SQLite file watch: how soon a commit by another process wakes the watcher, what one
wake costs, and what the watcher loop costs while other files in the database's folder
are written (ADR 0035)::

    python -m bench.filewatch                       # the installed (editable) tree
    python -m bench.filewatch --code HEAD~1         # a `git archive` snapshot of a revision
    python -m bench.filewatch --commits 500 --idle 10

* wake: a writer process (plain ``sqlite3``, WAL, one row per commit, every 10 ms) notes
  the monotonic clock before each ``commit()``; this process waits on the watch's
  descriptor in an asyncio loop (``loop.add_reader``, as ``Runner.run`` does), notes when
  it woke and times ``FileWatch.drain()`` (thread CPU). Latency = commit started -> woke.
* replaced: a real ``Runner.run()`` (default poll interval) per trial; an older copy of its
  database is renamed over the file; the time until the runner refuses it
  (``store_problem`` set, checked every millisecond from the same event loop).
* idle: a real ``Runner.run()`` on a temporary store for ``--idle`` seconds, first quiet,
  then while a process appends a line every 10 ms to a log file in the database's folder;
  the figure is this process's CPU time per second.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/filewatch.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stats import summary

_WRITER = r"""
import sqlite3, sys, time
n, gap = int(sys.argv[2]), float(sys.argv[3])
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("CREATE TABLE IF NOT EXISTS bench (i INTEGER)")
time.sleep(0.5)
starts = []
for i in range(n):
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO bench VALUES (?)", (i,))
    starts.append(time.monotonic_ns())
    conn.execute("COMMIT")
    time.sleep(gap)
print(" ".join(map(str, starts)))
"""

_NOISE = r"""
import sys, time
with open(sys.argv[1], "a") as log:
    while True:
        log.write("[info] a line of a log written next to the database\n")
        log.flush()
        time.sleep(0.01)
"""


def _fmt(s: dict[str, float], unit: str = "ms") -> str:
    return f"p50 {s['p50']:.3f} p90 {s['p90']:.3f} p99 {s['p99']:.3f} max {s['max']:.3f} {unit}"


async def wake(folder: Path, commits: int) -> None:
    from controlplane.store import Store
    from controlplane.store.db import FileWatch

    db = folder / "wake.db"
    Store(str(db), create=True).close()
    watch = FileWatch.for_url(f"sqlite:///{db}")
    assert watch is not None, "no file watch on this system"
    loop = asyncio.get_running_loop()
    woke: list[int] = []
    drains: list[float] = []

    def on_readable() -> None:
        woke.append(time.monotonic_ns())
        t = time.thread_time_ns()
        watch.drain()
        drains.append((time.thread_time_ns() - t) / 1e9)

    loop.add_reader(watch.fd, on_readable)
    writer = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _WRITER,
        str(db),
        str(commits),
        "0.01",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await writer.communicate()
    await asyncio.sleep(0.1)
    loop.remove_reader(watch.fd)
    watch.close()
    latencies = []
    for start in map(int, out.split()):
        first = next((w for w in woke if w >= start), None)
        if first is not None:
            latencies.append((first - start) / 1e9)
    print(f"wake: {len(latencies)}/{commits} commits woke the watcher, {len(woke)} wakes")
    print(f"  commit started -> watcher woke: {_fmt(summary(latencies))}")
    print(f"  drain() per wake (thread CPU):  {_fmt(summary(drains))}")


async def replaced(folder: Path, trials: int) -> None:
    from controlplane.policy import Cluster
    from controlplane.runner import Runner
    from controlplane.store import Store
    from controlplane.xds.cache import SnapshotCache

    took = []
    for i in range(trials):
        db = folder / f"replaced-{i}" / "gateway.db"
        store = Store(str(db), create=True)
        store.apply_objects([Cluster(name="a", endpoints=["127.0.0.1:9"])])
        older = folder / f"older-{i}.db"
        with sqlite3.connect(db) as src, sqlite3.connect(older) as dst:
            src.backup(dst)
        store.apply_objects([Cluster(name="b", endpoints=["127.0.0.1:9"])])
        runner = Runner(store, SnapshotCache(), controller="bench", xds_address="-")
        await runner.load()
        task = asyncio.create_task(runner.run())
        await asyncio.sleep(0.3)
        t = time.perf_counter()
        os.replace(older, db)
        while runner.store_problem is None and time.perf_counter() - t < 10:
            await asyncio.sleep(0.001)
        took.append(time.perf_counter() - t)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        store.close()
    print(f"replaced: older copy renamed over the file -> refused: {_fmt(summary(took))}")


async def idle(folder: Path, seconds: float) -> None:
    from controlplane.policy import Cluster
    from controlplane.runner import Runner
    from controlplane.store import Store
    from controlplane.xds.cache import SnapshotCache

    db = folder / "idle.db"
    store = Store(str(db), create=True)
    store.apply_objects([Cluster(name="a", endpoints=["127.0.0.1:9"])])
    runner = Runner(store, SnapshotCache(), controller="bench", xds_address="-")
    await runner.load()
    task = asyncio.create_task(runner.run())
    await asyncio.sleep(1)
    try:
        for label, noisy in (("quiet folder", False), ("log line every 10 ms", True)):
            noise = None
            if noisy:
                noise = subprocess.Popen([sys.executable, "-c", _NOISE, str(folder / "env.log")])
                await asyncio.sleep(0.5)
            cpu, t = time.process_time(), time.monotonic()
            await asyncio.sleep(seconds)
            share = (time.process_time() - cpu) / (time.monotonic() - t)
            print(f"idle watcher, {label}: {share * 100:.2f} % of a core")
            if noise is not None:
                noise.terminate()
                noise.wait()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        store.close()


def snapshot(rev: str, argv: list[str]) -> None:
    """Re-run on ``git archive <rev> controlplane envoy`` (PYTHONPATH puts it first)."""
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="gw-bench-code-") as target:
        archive = subprocess.run(
            ["git", "-C", str(root), "archive", rev, "controlplane", "envoy"],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", target], input=archive, check=True)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([target, str(root)]))
        code = subprocess.run(
            [sys.executable, "-m", "bench.filewatch", *argv], env=env, cwd=target, check=False
        ).returncode
    raise SystemExit(code)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--commits", type=int, default=300)
    p.add_argument("--trials", type=int, default=20, help="replaced-file trials")
    p.add_argument("--idle", type=float, default=10.0, metavar="SECONDS")
    p.add_argument("--code", metavar="REV", help="measure a git revision's snapshot")
    args = p.parse_args()
    if args.code:
        snapshot(args.code, [a for a in sys.argv[1:] if a not in ("--code", args.code)])
    import controlplane

    logging.getLogger("controlplane").setLevel(logging.CRITICAL)  # the refusals, by design
    print(f"code: {Path(controlplane.__file__).parent}  load: {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="gw-bench-watch-") as folder:
        asyncio.run(wake(Path(folder), args.commits))
        asyncio.run(replaced(Path(folder), args.trials))
        asyncio.run(idle(Path(folder), args.idle))


if __name__ == "__main__":
    main()

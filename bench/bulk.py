"""Bulk ingest: ``gatewayctl apply -f`` of N routes into a live gateway, until all are live.

Each run starts a fresh :class:`bench.harness.Stack` (SQLite file, echo backends, ``gatewayctl
serve``, one real Envoy), writes a YAML file of N routes (the format ``export`` writes), runs
``gatewayctl --db DB apply -f FILE`` as a subprocess and then polls Envoy until the first, a
middle and the last route answer 200. Reported per run:

* CLI wall time and the CLI's peak RSS (``ru_maxrss`` of that one child, from ``os.wait4``);
* apply start -> every probed route live (the figure the issue's targets are about);
* the controller's own ``revision R: ... rebuilt in X ms`` for the apply's revision.

::

    python -m bench.bulk --routes 10000 --runs 3
    python -m bench.bulk --routes 50000 --runs 3
    python -m bench.bulk --routes 10000 --runs 1 --profile-cli   # + cProfile of the CLI
    python -m bench.bulk --routes 10000 --code main    # on a `git archive` snapshot of main
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/bulk.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import GATEWAY, Probe, Stack, route_name, route_path
from bench.run import use_snapshot

TARGETS = {10_000: 4.0, 50_000: 20.0}
RSS_TARGET_MIB = 250


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def write_policy(path: Path, n: int) -> None:
    """N routes as ``apply`` reads them: /r/00000 -> b (both clusters in use), rest -> a."""
    with path.open("w") as out:
        out.write("routes:\n")
        for i in range(n):
            out.write(
                f"  - name: {route_name('r', i)}\n"
                f"    gateways: [{GATEWAY}]\n"
                f"    match:\n"
                f"      path_prefix: {route_path('r', i)}\n"
                f"    cluster: {'b' if i == 0 else 'a'}\n"
            )


def run_once(n: int, profile_cli: bool) -> dict[str, Any]:
    with Stack() as stack:
        stack.start_backends()
        stack.seed()
        stack.start_controller()
        stack.start_envoy()
        probe = Probe(stack.ports["listener"])
        policy = stack.workdir / "routes.yaml"
        write_policy(policy, n)
        command = [stack.gatewayctl]
        if profile_cli:
            command = [
                stack.python,
                "-m",
                "cProfile",
                "-o",
                str(Path.cwd() / f"bulk-cli-{n}.prof"),
                stack.gatewayctl,
            ]
        command += ["--db", stack.db, "apply", "-f", str(policy)]
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=stack.workdir
        )
        assert proc.stderr is not None
        err = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        cli_s = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"apply exited {proc.returncode}: {err.decode()[-500:]}")
        for i in (n - 1, n // 2, 0):
            probe.wait_for(route_path("r", i), lambda st, _b: st == 200, timeout=600)
        live_s = time.perf_counter() - t0
        probe.close()
        revision = stack.store.revision() if stack.store is not None else 0
        rebuilt = stack.rebuild_log().get(revision)
        return {
            "routes": n,
            "cli_s": cli_s,
            "live_s": live_s,
            "cli_peak_rss_mib": usage.ru_maxrss / 1024,  # KiB on Linux
            "rebuild_ms": rebuilt[1] if rebuilt else float("nan"),
        }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bulk", description=__doc__.split("\n\n")[0])
    p.add_argument("--routes", type=int, default=10_000)
    p.add_argument("--runs", type=int, default=3, help="fresh stacks; best and median reported")
    p.add_argument(
        "--profile-cli", action="store_true", help="run the CLI under cProfile (bulk-cli-N.prof)"
    )
    p.add_argument(
        "--code",
        default="worktree",
        metavar="REV",
        help="run on a git archive snapshot of REV (see python -m bench --help)",
    )
    raw = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(raw)
    if args.code != "worktree" and not os.environ.get("BENCH_CODE_SNAPSHOT"):
        rest = [a for a in raw if not a.startswith("--code") and a != args.code]
        use_snapshot(args.code, rest, module="bench.bulk")
    load = os.getloadavg()
    code = os.environ.get("BENCH_CODE_SNAPSHOT", "worktree")
    log(
        f"code {code}: {args.routes} routes, {args.runs} run(s); "
        f"load average {load[0]:.1f} {load[1]:.1f}"
    )
    results = []
    for i in range(args.runs):
        r = run_once(args.routes, args.profile_cli)
        results.append(r)
        log(
            f"  run {i + 1}: apply (CLI) {r['cli_s']:.2f} s, apply start -> all live "
            f"{r['live_s']:.2f} s, CLI peak RSS {r['cli_peak_rss_mib']:.0f} MiB, "
            f"controller rebuild {r['rebuild_ms']:.0f} ms"
        )
    live = [r["live_s"] for r in results]
    rss = [r["cli_peak_rss_mib"] for r in results]
    cli = [r["cli_s"] for r in results]
    target = TARGETS.get(args.routes)
    print(
        f"{args.routes} routes: apply start -> all live best {min(live):.2f} s, median "
        f"{statistics.median(live):.2f} s"
        + (f" (target <= {target:g} s)" if target else "")
        + f"; CLI best {min(cli):.2f} s, median {statistics.median(cli):.2f} s; "
        f"CLI peak RSS max {max(rss):.0f} MiB (target <= {RSS_TARGET_MIB} MiB at 50,000); "
        f"load average now {os.getloadavg()[0]:.1f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

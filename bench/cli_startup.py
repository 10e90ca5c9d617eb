"""Wall time of whole ``gatewayctl`` invocations, start-up included: ``--help`` and
``route list -o json`` against a 10,000-route policy. One command::

    python -m bench.cli_startup                       # local: a temporary 10,000-route SQLite
    python -m bench.cli_startup --runs 50 --routes 10000
    python -m bench.cli_startup --url http://127.0.0.1:18004 --token-env GATEWAY_TOKEN [--load]

Each run is a new process, as for a user at the keyboard: the figure is interpreter start,
imports, argument parsing, the work and the output. ``--url`` measures the same commands
through the admin API of a running controller (``--load`` first applies the 10,000 routes
through it). The 1-minute load average is printed with the figures: on a shared machine
it, not the CLI, often dominates.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/cli_startup.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stats import summary


def gatewayctl() -> list[str]:
    """The installed console script (what users run), else ``python -m controlplane.cli``."""
    script = Path(sys.executable).parent / "gatewayctl"
    return [str(script)] if script.exists() else [sys.executable, "-m", "controlplane.cli"]


def time_runs(args: list[str], env: dict[str, str], runs: int) -> list[float]:
    """Wall seconds of ``runs`` invocations (after one unmeasured warm-up run)."""
    out = []
    for i in range(runs + 1):
        start = time.perf_counter()
        proc = subprocess.run(
            [*gatewayctl(), *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"gatewayctl {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
        if i:
            out.append(elapsed)
    return out


def make_store(path: str, routes: int) -> None:
    from bench.harness import GATEWAY, make_route
    from controlplane.policy import Cluster, Gateway
    from controlplane.store import Store

    store = Store(path, create=True)
    store.apply_objects(
        [
            Gateway(name=GATEWAY, port=10000, address="127.0.0.1"),
            Cluster(name="a", endpoints=["127.0.0.1:1"]),
        ]
    )
    store.apply_objects(make_route("r", i, "a") for i in range(routes))
    store.close()


def load_remote(env: dict[str, str], routes: int, workdir: str) -> None:
    """The same policy as :func:`make_store`, applied through the admin API."""
    from bench.harness import GATEWAY, make_route

    doc = {
        "gateways": [{"name": GATEWAY, "port": 10000, "address": "127.0.0.1"}],
        "clusters": [{"name": "a", "endpoints": ["127.0.0.1:1"]}],
        "routes": [make_route("r", i, "a").spec() for i in range(routes)],
    }
    path = Path(workdir) / "policy.json"
    path.write_text(json.dumps(doc))
    subprocess.run([*gatewayctl(), "apply", "-f", str(path)], env=env, check=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.cli_startup", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--routes", type=int, default=10000)
    p.add_argument("--url", help="admin API URL: measure remote mode")
    p.add_argument("--token-env", default="GATEWAY_TOKEN", help="variable holding the token")
    p.add_argument("--load", action="store_true", help="with --url: apply the routes first")
    args = p.parse_args(argv)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="gw-clibench-config-")
    workdir = tempfile.mkdtemp(prefix="gw-clibench-")
    try:
        if args.url:
            env["GATEWAY_URL"] = args.url
            env["GATEWAY_TOKEN"] = os.environ.get(args.token_env, "")
            mode = f"remote {args.url}"
            if args.load:
                load_remote(env, args.routes, workdir)
        else:
            env["GATEWAY_DB"] = str(Path(workdir) / "gateway.db")
            make_store(env["GATEWAY_DB"], args.routes)
            mode = "local SQLite"
        print(f"mode: {mode}; {args.routes} routes; {args.runs} runs each")
        for command in (["--help"], ["route", "list", "-o", "json"]):
            s = summary(time_runs(command, env, args.runs))
            load = os.getloadavg()[0]
            print(
                f"gatewayctl {' '.join(command):24s} p50 {s['p50']:7.1f} ms  "
                f"p90 {s['p90']:7.1f} ms  min {s['min']:7.1f} ms  (load avg 1m {load:.2f})"
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(env["XDG_CONFIG_HOME"], ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Wall time of whole ``gatewayctl`` invocations, start-up included: ``--help`` and
``route list -o json`` against a 10,000-route policy. One command::

    python -m bench.cli_startup                       # local: a temporary 10,000-route SQLite
    python -m bench.cli_startup --runs 50 --routes 10000
    python -m bench.cli_startup --url http://127.0.0.1:18004 --token-env GATEWAY_TOKEN [--load]
    python -m bench.cli_startup --canned              # remote, against canned API answers

Each run is a new process, as for a user at the keyboard: the figure is interpreter start,
imports, argument parsing, the work and the output. ``--url`` measures the same commands
through the admin API of a running controller (``--load`` first applies the 10,000 routes
through it). The 1-minute load average is printed with the figures: on a shared machine
it, not the CLI, often dominates. ``--canned`` serves ``GET /v1/routes`` (10,000 routes
in the contract's shape) from this process: the client's share of a remote command, with
no controller work in it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # `python bench/cli_startup.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stats import summary


def gatewayctl() -> list[str]:
    """The installed console script (what users run), else ``python -m controlplane.cli``."""
    script = Path(sys.executable).parent / "gatewayctl"
    return [str(script)] if script.exists() else [sys.executable, "-m", "controlplane.cli"]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_runs(args: list[str], env: dict[str, str], runs: int) -> tuple[list[float], list[float]]:
    """Wall and CPU (user + system) seconds of ``runs`` invocations (after one unmeasured
    warm-up run). CPU time depends far less on the machine's load than wall time."""
    out: list[float] = []
    cpu: list[float] = []
    for i in range(runs + 1):
        cpu_start = _children_cpu()
        start = time.perf_counter()
        proc = subprocess.run(
            [*gatewayctl(), *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"gatewayctl {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
        if i:
            out.append(elapsed)
            cpu.append(_children_cpu() - cpu_start)
    return out, cpu


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


def canned_api(routes: int) -> tuple[str, Callable[[], None]]:
    """An HTTP server in a thread answering ``GET /v1/routes`` with ``routes`` routes, in
    both of the controller's shapes: the envelope, and ``?view=specs&pretty=true`` (the
    specs as ``-o json`` prints them, which the CLI copies to stdout undecoded)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import parse_qs, urlsplit

    import orjson

    from bench.harness import GATEWAY, route_name, route_path

    items = [
        {
            "kind": "route",
            "name": route_name("r", i),
            "spec": {
                "name": route_name("r", i),
                "gateways": [GATEWAY],
                "match": {"path_prefix": route_path("r", i)},
                "cluster": "a",
            },
        }
        for i in range(routes)
    ]
    envelope = orjson.dumps({"revision": 2, "items": items})
    # what the controller's listing encodes for the CLI (controlplane/api/policy.py)
    specs = orjson.dumps(
        [item["spec"] for item in items], option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE
    )

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            query = parse_qs(urlsplit(self.path).query)
            body = specs if query.get("view") == ["specs"] else envelope
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("ETag", '"2"')
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}", server.shutdown


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.cli_startup", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--routes", type=int, default=10000)
    p.add_argument("--url", help="admin API URL: measure remote mode")
    p.add_argument("--token-env", default="GATEWAY_TOKEN", help="variable holding the token")
    p.add_argument("--load", action="store_true", help="with --url: apply the routes first")
    p.add_argument("--canned", action="store_true", help="remote, against canned answers")
    args = p.parse_args(argv)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    # an installed CLI runs from cached bytecode: let the warm-up run write it
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="gw-clibench-config-")
    workdir = tempfile.mkdtemp(prefix="gw-clibench-")
    try:
        if args.canned:
            env["GATEWAY_URL"], _stop = canned_api(args.routes)
            env["GATEWAY_TOKEN"] = "gw_bench"
            mode = "remote, canned answers in-process"
        elif args.url:
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
            wall, cpu = time_runs(command, env, args.runs)
            s, c = summary(wall), summary(cpu)
            load = os.getloadavg()[0]
            print(
                f"gatewayctl {' '.join(command):24s} wall p50 {s['p50']:7.1f} ms  "
                f"p90 {s['p90']:7.1f} ms  min {s['min']:7.1f} ms | CPU p50 {c['p50']:6.1f} ms"
                f"  (load avg 1m {load:.2f})"
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(env["XDG_CONFIG_HOME"], ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Edge controls overhead: requests per second and latency with IP lists and ext_authz vs
without, in the same run.

Run from the repository root with the project's venv::

    python -m bench.edge                          # 5 rounds x 8 cells x 3 s (about 2.5 min)
    python -m bench.edge --duration 2 --rounds 2  # quick look

One stack (bench.harness.Stack: SQLite file, echo backend ``a``, ``gatewayctl serve``, one
Envoy) carries one gateway with eight routes, four protections x two endings:

* protection ``none``; ``ip`` (an allow list of 64 ranges, the caller's last, and a deny
  list of 64 ranges: Envoy checks every range of both for each request); ``ext_authz`` (a
  gRPC ``envoy.service.auth.v3.Authorization`` service, grpcio in this process, the
  protocol OPA-Envoy speaks, allowing every request and adding one header); ``ip+ext_authz``.
* ending ``upstream`` (forwarded to the Python echo backend) and ``direct``
  (``direct_response`` 200: Envoy answers itself, only the filters and the check differ).

Load comes from ``wrk`` with a fixed number of connections; the cells are interleaved over
rounds (order rotating) so drift on a shared machine hits them all alike; each figure is
the median over rounds. Any non-2xx answer, or an Envoy counter that disagrees (every
ext_authz cell must have as many allowed checks as requests), voids the run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/edge.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.rpc import code_pb2, status_pb2

from bench.auth import ensure_wrk, envoy_stats, machine_busy_s, parse_wrk, stat_delta
from bench.harness import GATEWAY, Stack, cpu_seconds
from bench.run import machine
from controlplane.policy import Cluster, Route

PROTECTIONS = ("none", "ip", "ext_authz", "ip+ext_authz")
ENDINGS = ("upstream", "direct")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class AllowAll(external_auth_pb2_grpc.AuthorizationServicer):
    def __init__(self) -> None:
        self.checks = 0
        self._ok = external_auth_pb2.CheckResponse(
            status=status_pb2.Status(code=code_pb2.OK),
            ok_response=external_auth_pb2.OkHttpResponse(
                headers=[
                    base_pb2.HeaderValueOption(
                        header=base_pb2.HeaderValue(key="x-authz-user", value="bench")
                    )
                ]
            ),
        )

    def Check(self, request: Any, context: Any) -> Any:
        self.checks += 1
        return self._ok


def ip_rules() -> dict[str, list[str]]:
    allow = [f"10.{i}.0.0/16" for i in range(63)] + ["127.0.0.0/8"]
    deny = [f"172.16.{i}.0/24" for i in range(32)] + [f"2001:db8:{i:x}::/48" for i in range(32)]
    return {"allow": allow, "deny": deny}


def path_of(ending: str, protection: str) -> str:
    return f"/{ending[0]}/{protection.replace('+', '-').replace('_', '-')}"


def build_policy(stack: Stack, authz_port: int) -> None:
    assert stack.store is not None
    objects: list[Any] = [
        Cluster(name="authz", endpoints=[f"127.0.0.1:{authz_port}"], protocol="http2")
    ]
    for ending in ENDINGS:
        for protection in PROTECTIONS:
            extra: dict[str, Any] = {}
            if "ip" in protection.split("+"):
                extra["ip_rules"] = ip_rules()
            if "ext_authz" in protection:
                extra["ext_authz"] = {"cluster": "authz", "timeout": "1s"}
            action: dict[str, Any] = (
                {"cluster": "a"}
                if ending == "upstream"
                else {"direct_response": {"status": 200, "body": "ok\n"}}
            )
            objects.append(
                Route(
                    name=f"{ending}-{protection.replace('+', '-').replace('_', '-')}",
                    gateways=[GATEWAY],
                    match={"path_prefix": path_of(ending, protection)},
                    **action,
                    **extra,
                )
            )
    stack.store.apply_objects(objects)


def run_cell(
    stack: Stack, wrk: str, ending: str, protection: str, args: argparse.Namespace, secs: float
) -> dict[str, Any]:
    url = f"http://127.0.0.1:{stack.ports['listener']}{path_of(ending, protection)}"
    command = [
        wrk,
        "-t1",
        f"-c{args.connections}",
        f"-d{secs:g}s",
        "--timeout",
        "5s",
        "--latency",
        url,
    ]
    stats0 = envoy_stats(stack.ports["admin"])
    envoy0, busy0, t0 = cpu_seconds(stack.envoy_pid), machine_busy_s(), time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    envoy1, busy1 = cpu_seconds(stack.envoy_pid), machine_busy_s()
    stats1 = envoy_stats(stack.ports["admin"])
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited with {done.returncode}:\n{done.stdout}{done.stderr}")
    res = parse_wrk(done.stdout)
    allowed = sum(
        stat_delta(stats0, stats1, name)
        for name in stats1
        if name.startswith(f"http.{GATEWAY}.ext_authz.") and name.endswith(".ok")
    )
    res.update(
        ending=ending,
        protection=protection,
        envoy_cpu_us_per_req=1e6 * (envoy1 - envoy0) / max(res["requests"], 1),
        busy_cores=(busy1 - busy0) / wall,
        authz_ok=allowed,
        envoy_2xx=stat_delta(stats0, stats1, f"http.{GATEWAY}.downstream_rq_2xx"),
    )
    problems = []
    if res["non_2xx"] or res["socket_errors"]:
        problems.append(f"{res['non_2xx']} non-2xx, {res['socket_errors']} socket errors")
    if res["envoy_2xx"] < res["requests"]:
        problems.append(f"Envoy counted {res['envoy_2xx']} 2xx < {res['requests']}")
    if ("ext_authz" in protection) != (allowed >= res["requests"]):
        problems.append(f"{allowed} ext_authz checks allowed for {res['requests']} requests")
    if problems:
        raise RuntimeError(f"{ending}/{protection}: " + "; ".join(problems))
    return res


def precheck(port: int, authorizer: AllowAll) -> None:
    import urllib.request

    deadline = time.monotonic() + 30
    for ending in ENDINGS:
        for protection in PROTECTIONS:
            url = f"http://127.0.0.1:{port}{path_of(ending, protection)}"
            while True:
                try:
                    with urllib.request.urlopen(url, timeout=5) as resp:
                        if resp.status == 200:
                            body = resp.read()
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{url}: no 200 after 30 s")
                time.sleep(0.1)
            if ending == "upstream" and "ext_authz" in protection:
                seen = json.loads(body)["headers"].get("x-authz-user")
                if seen != "bench":
                    raise RuntimeError(f"{url}: the decision header did not reach the backend")
    if authorizer.checks < 4:
        raise RuntimeError("the authorization service was not called")


def run(args: argparse.Namespace) -> int:
    wrk = ensure_wrk()
    info = machine()
    authorizer = AllowAll()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(authorizer, server)
    authz_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    results: list[dict[str, Any]] = []
    try:
        with Stack(keep=args.keep) as stack:
            stack.start_backends()
            stack.seed()
            build_policy(stack, authz_port)
            stack.start_controller()
            stack.start_envoy()
            precheck(stack.ports["listener"], authorizer)
            cells = [(e, p) for p in PROTECTIONS for e in ENDINGS]
            for ending, protection in cells:
                run_cell(stack, wrk, ending, protection, args, 1.0)  # warm-up
            for r in range(args.rounds):
                order = cells[r % len(cells) :] + cells[: r % len(cells)]
                for ending, protection in order:
                    res = run_cell(stack, wrk, ending, protection, args, args.duration)
                    res["round"] = r
                    results.append(res)
                log(f"  round {r + 1}/{args.rounds} done")
    finally:
        server.stop(0)
    info["loadavg_end"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(report(results, info, args))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


def report(results: list[dict[str, Any]], info: dict[str, str], args: argparse.Namespace) -> str:
    lines = [
        f"machine: {info['nproc']} cores ({info['cpu']}), Envoy {info['envoy']}, {info['date']}; "
        f"load average at start {info['loadavg_start']}, at end {info['loadavg_end']}",
        f"code: {info['code_start']}; wrk 1 thread, {args.connections} connections, closed loop; "
        f"{args.rounds} rounds x 8 cells x {args.duration:g} s",
        "",
        "| ending | protection | rps | p50 ms | p99 ms | Envoy CPU us/req | p99 vs none "
        "| rps vs none |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for ending in ENDINGS:
        rows = {}
        for protection in PROTECTIONS:
            cells = [c for c in results if c["ending"] == ending and c["protection"] == protection]
            rows[protection] = {
                k: statistics.median(c[k] for c in cells)
                for k in ("rps", "p50", "p99", "envoy_cpu_us_per_req", "busy_cores")
            }
        base = rows["none"]
        for protection, row in rows.items():
            vs = (
                ["", ""]
                if protection == "none"
                else [
                    f"{100 * (row['p99'] / base['p99'] - 1):+.0f} %",
                    f"{100 * (row['rps'] / base['rps'] - 1):+.0f} %",
                ]
            )
            lines.append(
                f"| {ending} | {protection} | {row['rps']:,.0f} | {row['p50']:.2f} | "
                f"{row['p99']:.2f} | {row['envoy_cpu_us_per_req']:.0f} | " + " | ".join(vs) + " |"
            )
    busy = statistics.median(c["busy_cores"] for c in results)
    lines += ["", f"machine busy (all processes) during cells: median {busy:.2f} cores"]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.edge",
        description="Requests/s and latency through Envoy: no edge controls vs IP lists vs "
        "ext_authz (gRPC) vs both.",
    )
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per cell (3)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (16)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the 8 cells (5)")
    parser.add_argument("--json", help="write every cell to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    try:
        return run(parse_args(argv))
    except RuntimeError as exc:
        log(f"FAILED: {exc}")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())

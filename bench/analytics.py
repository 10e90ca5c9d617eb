"""Usage analytics under load: does the sink keep up with one Envoy at full speed?

``python -m bench.analytics [--duration 10] [--connections 32] [--rounds 2]``

Real processes on loopback: ``gatewayctl serve``, ``gatewayctl analytics-sink`` (a process
of its own, so its CPU time is its own) and one Envoy 1.40, with one direct-response route
(the cheapest request Envoy can serve, so the rate is the highest this machine sustains).
``wrk`` drives the gateway with analytics off, then on, alternately. For each "on" cell:

* requests Envoy completed (``http.bench.downstream_rq_total``) against requests in the
  rollups: equal means the sink kept up and nothing was dropped anywhere;
* Envoy's own access-log counters (entries written, dropped) and the sink's drop counter;
* the sink's CPU seconds (user + system, from /proc) per 1,000 requests.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
import urllib.request
from typing import Any

from bench.auth import ensure_wrk, machine_busy_s, parse_wrk
from bench.harness import GATEWAY, Stack, _wait_port, cpu_seconds
from controlplane.analytics.rollup import Filter, RollupReader
from controlplane.envoy_launcher import free_port, stats
from controlplane.policy import Gateway, Route


def log(msg: str) -> None:
    print(f"[bench.analytics] {msg}", flush=True)


def start_sink(stack: Stack) -> tuple[subprocess.Popen[bytes], int, int]:
    port, http_port = free_port(), free_port()
    out = open(stack.workdir / "sink.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            stack.gatewayctl,
            "--db",
            stack.db,
            "analytics-sink",
            "--address",
            f"127.0.0.1:{port}",
            "--http-address",
            f"127.0.0.1:{http_port}",
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
        cwd=stack.workdir,
    )
    out.close()
    _wait_port(http_port, proc, 30)
    return proc, port, http_port


def sink_metric(http_port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def rollup_total(db: str) -> int:
    now = time.time()
    return RollupReader.open(db).total_requests(Filter(now - 3600, now + 60))


def envoy_counters(admin_port: int) -> dict[str, int]:
    return stats(admin_port, r"(http\.bench\.downstream_rq_total|access_logs)")


def set_analytics(stack: Stack, sink_port: int, on: bool) -> None:
    assert stack.store is not None
    gw = stack.store.get("gateway", GATEWAY)
    spec = gw.spec()
    spec["analytics"] = {"enabled": on, "sink": f"127.0.0.1:{sink_port}"}
    stack.store.replace(Gateway.model_validate(spec))
    target = stack.store.revision()
    deadline = time.monotonic() + 20
    while stack.acked_revision() < target:
        if time.monotonic() > deadline:
            raise SystemExit("Envoy did not take the analytics change within 20 s")
        time.sleep(0.05)
    time.sleep(0.5)


def run_cell(
    stack: Stack,
    wrk: str,
    sink: subprocess.Popen[bytes] | None,
    sink_http: int,
    on: bool,
    duration: int,
    connections: int,
) -> dict[str, Any]:
    admin = stack.ports["admin"]
    before_env = envoy_counters(admin)
    before_rollups = rollup_total(stack.db)
    before_cpu = cpu_seconds(sink.pid) if sink is not None else 0.0
    busy = machine_busy_s()
    url = f"http://127.0.0.1:{stack.ports['listener']}/ping"
    out = subprocess.run(
        [wrk, "-t2", f"-c{connections}", f"-d{duration}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    res = parse_wrk(out)
    busy = machine_busy_s() - busy
    # Envoy flushes its buffer every second; the sink writes every second
    settled, last = time.monotonic() + 30, -1
    while time.monotonic() < settled:
        time.sleep(2.5)
        now = rollup_total(stack.db)
        if now == last:
            break
        last = now
    after_env = envoy_counters(admin)
    served = (
        after_env["http.bench.downstream_rq_total"] - before_env["http.bench.downstream_rq_total"]
    )
    ingested = rollup_total(stack.db) - before_rollups
    cpu = cpu_seconds(sink.pid) - before_cpu if sink is not None else 0.0
    written = sum(
        v - before_env.get(k, 0) for k, v in after_env.items() if k.endswith("logs_written")
    )
    dropped = sum(
        v - before_env.get(k, 0) for k, v in after_env.items() if k.endswith("logs_dropped")
    )
    return {
        "analytics": on,
        "rps": res["rps"],
        "p50_ms": res["p50"],
        "p99_ms": res["p99"],
        "wrk_requests": res["requests"],
        "non_2xx": res["non_2xx"] + res["socket_errors"],
        "envoy_requests": served,
        "rollup_requests": ingested,
        "envoy_logs_written": written,
        "envoy_logs_dropped": dropped,
        "sink_dropped": sink_metric(sink_http, "gateway_analytics_dropped_total")
        if sink is not None
        else 0.0,
        "sink": "up" if sink is not None else "killed",
        "sink_cpu_s": round(cpu, 3),
        "sink_cpu_ms_per_1k": round(cpu / served * 1e6, 2)
        if on and served and sink is not None
        else None,
        "machine_busy_cores": round(busy / duration, 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.analytics", description=__doc__)
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2, help="off/on pairs")
    p.add_argument("--json", action="store_true", help="print the cells as JSON too")
    args = p.parse_args(argv)
    wrk = ensure_wrk()
    with Stack() as stack:
        stack.start_backends()
        store = stack.seed()
        store.apply_objects(
            [
                Route(
                    name="ping",
                    gateways=[GATEWAY],
                    match={"path": "/ping"},
                    direct_response={"status": 200, "body": "pong"},
                )
            ]
        )
        stack.start_controller()
        stack.start_envoy()
        sink, sink_port, sink_http = start_sink(stack)
        try:
            cells = []
            for r in range(args.rounds):
                for on in (False, True):
                    set_analytics(stack, sink_port, on)
                    cell = run_cell(
                        stack, wrk, sink, sink_http, on, args.duration, args.connections
                    )
                    log(f"round {r + 1} analytics {'on ' if on else 'off'}: {json.dumps(cell)}")
                    cells.append(cell)
            # the sink killed: Envoy must serve on at the same rate, dropping log entries
            sink.kill()
            sink.wait(10)
            cell = run_cell(stack, wrk, None, sink_http, True, args.duration, args.connections)
            log(f"analytics on, sink killed: {json.dumps(cell)}")
            killed = cell
        finally:
            if sink.poll() is None:
                sink.terminate()
                sink.wait(10)
    report(cells, args)
    print(
        f"sink killed: {killed['rps']:,.0f} requests/s, {killed['non_2xx']} failed, "
        f"Envoy dropped {killed['envoy_logs_dropped']:,} log entries, "
        f"{killed['rollup_requests']:,} reached the rollups"
    )
    if args.json:
        print(json.dumps([*cells, killed], indent=2))
    if killed["non_2xx"]:
        return 1
    bad = [
        c
        for c in cells
        if c["analytics"]
        and (
            c["rollup_requests"] != c["envoy_requests"]
            or c["envoy_logs_dropped"]
            or c["sink_dropped"]
        )
    ]
    return 1 if bad else 0


def report(cells: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(
        f"\nwrk -t2 -c{args.connections} -d{args.duration}s, direct-response route, "
        f"{os.cpu_count()} cores"
    )
    print(
        "| analytics | rps | p50 ms | p99 ms | Envoy requests | in rollups | Envoy dropped "
        "| sink dropped | sink CPU ms / 1k req | machine busy (cores) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for c in cells:
        print(
            f"| {'on' if c['analytics'] else 'off'} | {c['rps']:,.0f} | {c['p50_ms']:.2f} | "
            f"{c['p99_ms']:.2f} | {c['envoy_requests']:,} | "
            f"{c['rollup_requests']:,} | {c['envoy_logs_dropped']} | {c['sink_dropped']:.0f} | "
            f"{c['sink_cpu_ms_per_1k'] if c['sink_cpu_ms_per_1k'] is not None else '-'} | "
            f"{c['machine_busy_cores']} |"
        )
    on = [c for c in cells if c["analytics"]]
    off = [c for c in cells if not c["analytics"]]
    if on and off:
        print(
            f"\nmedian rps off {statistics.median(c['rps'] for c in off):,.0f}, "
            f"on {statistics.median(c['rps'] for c in on):,.0f}; sink CPU per 1,000 requests "
            f"{statistics.median(c['sink_cpu_ms_per_1k'] for c in on):.2f} ms"
        )


if __name__ == "__main__":
    raise SystemExit(main())

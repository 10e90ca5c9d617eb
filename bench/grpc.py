"""Transcoded JSON -> gRPC versus native gRPC: one Envoy, one gRPC backend, the same method.

Run from the repository root with the project's venv::

    python -m bench.grpc                              # 3 rounds x 2 cells x 2,000 requests
    python -m bench.grpc --requests 500 --rounds 1    # quick look
    python -m bench.grpc --concurrency 8
    python -m bench.grpc --help

Real processes on loopback: the demo gRPC service (``python -m controlplane.demo.grpc_users``,
grpcio, 16 worker threads), ``gatewayctl serve`` and one Envoy 1.40. One route to the
backend's HTTP/2 cluster transcodes with ``controlplane/demo/protos/users.proto``. The same
method, ``demo.users.v1.Users/GetUser``, is called two ways through the same route:

* ``native``: a grpcio client channel (HTTP/2) to Envoy;
* ``json``: ``POST /demo.users.v1.Users/GetUser`` with ``{"id": "42"}`` on keep-alive
  HTTP/1.1 connections (``http.client``); Envoy's grpc_json_transcoder turns it into gRPC.

Each round runs a fixed number of requests per cell with ``--concurrency`` client threads
(one channel or connection each); the cell order alternates between rounds. Reported per
cell: requests per second (median over rounds), p50/p99 latency over all rounds, and
Envoy's CPU time per request (``/proc/<pid>/stat`` before and after each cell), the most
direct measure of what transcoding costs Envoy. The clients are Python, so on a small
machine they (and the Python backend) are likely the bottleneck, not Envoy: the output says
so. Any failed call fails the run.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc

from bench.harness import cpu_seconds
from bench.processes import Processes, percentile
from bench.run import loadavg, machine
from controlplane.demo.grpc_users import SERVICE, UsersStubs, descriptor_set
from controlplane.envoy_launcher import free_port

CELLS = ("native", "json")
JSON_PATH = f"/{SERVICE}/GetUser"
JSON_BODY = json.dumps({"id": "42"})


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _policy(port: int, backend: int) -> str:
    proto = base64.b64encode(descriptor_set()).decode()
    return f"""
gateways:
  - {{name: bench, port: {port}, address: 127.0.0.1}}
clusters:
  - {{name: users, endpoints: ["127.0.0.1:{backend}"], protocol: http2}}
protos:
  - {{name: users, descriptor_set: "{proto}"}}
routes:
  - name: users
    gateway: bench
    cluster: users
    timeout: 30s
    transcoding: {{proto: users, services: [{SERVICE}]}}
"""


class JsonClient:
    """One keep-alive HTTP/1.1 connection; ``call`` returns the latency in ms."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def call(self) -> float:
        started = time.perf_counter()
        self.conn.request(
            "POST", JSON_PATH, body=JSON_BODY, headers={"content-type": "application/json"}
        )
        resp = self.conn.getresponse()
        body = resp.read()
        elapsed = (time.perf_counter() - started) * 1000
        if resp.status != 200 or json.loads(body).get("id") != "42":
            raise RuntimeError(f"json: {resp.status} {body[:200]!r}")
        return elapsed

    def close(self) -> None:
        self.conn.close()


class NativeClient:
    """One grpcio channel; ``call`` returns the latency in ms."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stubs = UsersStubs(self.channel)
        self.request = self.stubs.request("GetUser", id="42")
        self._call = self.stubs.method("GetUser")

    def call(self) -> float:
        started = time.perf_counter()
        reply = self._call(self.request, timeout=30)
        elapsed = (time.perf_counter() - started) * 1000
        if reply.id != "42":
            raise RuntimeError(f"native: unexpected reply {reply}")
        return elapsed

    def close(self) -> None:
        self.channel.close()


def run_cell(
    make: Callable[[], Any], requests: int, concurrency: int, envoy_pid: int
) -> dict[str, Any]:
    """``requests`` calls spread over ``concurrency`` threads; latencies, rps, Envoy CPU."""
    clients = [make() for _ in range(concurrency)]
    for client in clients:  # connect and warm up outside the measurement
        for _ in range(5):
            client.call()
    per = [
        requests // concurrency + (1 if i < requests % concurrency else 0)
        for i in range(concurrency)
    ]
    latencies: list[list[float]] = [[] for _ in clients]
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(per[i]):
                latencies[i].append(clients[i].call())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(concurrency)]
    cpu = cpu_seconds(envoy_pid)
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    cpu = cpu_seconds(envoy_pid) - cpu
    for client in clients:
        client.close()
    if errors:
        raise errors[0]
    flat = [x for lat in latencies for x in lat]
    return {"latencies": flat, "rps": len(flat) / wall, "envoy_cpu_us": cpu / len(flat) * 1e6}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="per cell and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4, help="client threads per cell")
    args = parser.parse_args(argv)
    info = machine()
    info["loadavg_start"] = loadavg()

    rounds: dict[str, list[dict[str, Any]]] = {cell: [] for cell in CELLS}
    with Processes("bench-grpc-") as run:
        backend = free_port()
        run.spawn(
            [sys.executable, "-m", "controlplane.demo.grpc_users", "--port", str(backend)],
            "backend",
        )
        gw = free_port()
        run.apply(_policy(gw, backend))
        envoy = run.start_envoy(run.start_controller())

        def ready() -> None:
            JsonClient(gw).call()
            NativeClient(gw).call()

        run.until(ready, interval=0.2)

        makers = {"native": lambda: NativeClient(gw), "json": lambda: JsonClient(gw)}
        log(
            f"{args.rounds} round(s) x {args.requests} requests per cell, "
            f"{args.concurrency} client thread(s)"
        )
        for r in range(args.rounds):
            order = CELLS if r % 2 == 0 else tuple(reversed(CELLS))
            for cell in order:
                result = run_cell(makers[cell], args.requests, args.concurrency, envoy.pid)
                rounds[cell].append(result)
                log(f"round {r + 1} {cell}: {result['rps']:.0f} req/s")

    info["loadavg_end"] = loadavg()
    out = {}
    for cell, results in rounds.items():
        latencies = [x for res in results for x in res["latencies"]]
        out[cell] = {
            "rps": statistics.median(res["rps"] for res in results),
            "p50": statistics.median(latencies),
            "p99": percentile(latencies, 99),
            "envoy_cpu_us": statistics.median(res["envoy_cpu_us"] for res in results),
            "n": len(latencies),
        }
    print(
        f"machine: {info['nproc']} cores ({info['cpu']}), Envoy {info['envoy']}, {info['date']}; "
        f"load average {info['loadavg_start']} -> {info['loadavg_end']}"
    )
    print(
        f"{args.rounds} round(s) x {args.requests} requests per cell, "
        f"{args.concurrency} client thread(s); method {SERVICE}/GetUser"
    )
    print(f"{'cell':<30}{'n':>7}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'Envoy CPU us/req':>18}")
    labels = {"native": "native gRPC (grpcio)", "json": "JSON -> gRPC (transcoded)"}
    for cell, row in out.items():
        print(
            f"{labels[cell]:<30}{row['n']:>7}{row['rps']:>9.0f}{row['p50']:>9.2f}"
            f"{row['p99']:>9.2f}{row['envoy_cpu_us']:>18.0f}"
        )
    nat, js = out["native"], out["json"]
    print(
        f"json vs native: req/s {js['rps'] / nat['rps'] - 1:+.0%}, "
        f"p99 {js['p99'] - nat['p99']:+.2f} ms, "
        f"Envoy CPU {js['envoy_cpu_us'] - nat['envoy_cpu_us']:+.0f} us/request"
    )
    print(
        "note: the clients and the backend are Python processes on the same machine; they, "
        "not Envoy, are likely the bottleneck, so req/s is a floor. Envoy CPU per request is "
        "the cleaner measure of the transcoding cost."
    )
    print(json.dumps({"args": vars(args), "results": out}))


if __name__ == "__main__":
    main()

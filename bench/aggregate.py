"""Aggregation latency versus its slowest part.

Run from the repository root with the project's venv::

    python -m bench.aggregate                          # 300 requests per cell
    python -m bench.aggregate --requests 100 --delays 10,20,40
    python -m bench.aggregate --concurrency 8          # 8 clients at once
    python -m bench.aggregate --help

Everything is a real process on loopback: three echo backends (``python -m
controlplane.demo.echo --delay-ms D``: every answer takes D ms), ``gatewayctl aggregator``
(``--replicas`` of them), ``gatewayctl serve`` and one Envoy. One gateway carries:

* ``/slowest``: a plain route to the slowest backend alone (the slowest part, through Envoy);
* ``/aggregate``: an aggregate of all three backends (``on_error: fail``, generous timeouts).

The two cells are interleaved request by request (the same client, keep-alive connections),
so drift on a shared machine hits both alike. Reported: p50/p90/p99/max per cell, the
aggregate's p50/p99 minus the slowest part's, and the sum of the delays (what calling the
parts one after the other would cost at least). Any non-200 answer fails the run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import threading
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/aggregate.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.processes import Processes, percentile
from bench.run import loadavg, machine
from controlplane.envoy_launcher import free_port

NAMES = ("users", "orders", "recs")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _policy(port: int, parts_port: int, backends: dict[str, int]) -> str:
    clusters = "\n".join(
        f'  - {{name: {n}, endpoints: ["127.0.0.1:{p}"]}}' for n, p in backends.items()
    )
    parts = "\n".join(
        f"        - {{name: {n}, cluster: {n}, path: /{n}, timeout: 10s}}" for n in backends
    )
    slowest = NAMES[-1]
    return f"""
gateways:
  - {{name: bench, port: {port}, address: 127.0.0.1, aggregation_port: {parts_port}}}
clusters:
{clusters}
routes:
  - {{name: slowest, gateway: bench, match: {{path: /slowest}}, cluster: {slowest}}}
  - name: aggregate
    gateway: bench
    match: {{path: /aggregate}}
    aggregate:
      parts:
{parts}
"""


class Client:
    """One keep-alive connection; ``get`` returns the latency in ms."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def get(self, path: str) -> float:
        started = time.perf_counter()
        self.conn.request("GET", path)
        resp = self.conn.getresponse()
        body = resp.read()
        elapsed = (time.perf_counter() - started) * 1000
        if resp.status != 200:
            raise RuntimeError(f"{path}: {resp.status} {body[:200]!r}")
        return elapsed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="per cell and client")
    parser.add_argument("--delays", default="20,50,100", help="ms of the three backends")
    parser.add_argument("--concurrency", type=int, default=1, help="clients at once")
    parser.add_argument("--replicas", type=int, default=1, help="aggregation services")
    args = parser.parse_args(argv)
    delays = dict(zip(NAMES, (float(d) for d in args.delays.split(",")), strict=True))
    info = machine()
    info["loadavg_start"] = loadavg()

    with Processes("bench-aggregate-") as run:
        backends = {n: free_port() for n in NAMES}
        for name, port in backends.items():
            run.spawn(
                [
                    *(sys.executable, "-m", "controlplane.demo.echo", "--name", name),
                    *("--host", "127.0.0.1", "--port", str(port)),
                    *("--delay-ms", str(delays[name])),
                ],
                name,
            )
        aggregators = [free_port() for _ in range(args.replicas)]
        for i, port in enumerate(aggregators):
            run.spawn(
                [*run.cli(), "aggregator", "--port", str(port), "--log-level", "warning"], f"agg{i}"
            )
        gw, parts = free_port(), free_port()
        run.apply(_policy(gw, parts, backends))
        xds = run.start_controller("--aggregator", ",".join(f"127.0.0.1:{p}" for p in aggregators))
        run.start_envoy(xds)
        run.until(lambda: Client(gw).get("/aggregate"), interval=0.2)

        results: dict[str, list[float]] = {"slowest": [], "aggregate": []}
        lock = threading.Lock()
        errors: list[BaseException] = []

        def run_client() -> None:
            try:
                client = Client(gw)
                for _ in range(5):  # warm the connection and the pools
                    client.get("/slowest")
                    client.get("/aggregate")
                mine: dict[str, list[float]] = {"slowest": [], "aggregate": []}
                for i in range(args.requests):
                    order = ("slowest", "aggregate") if i % 2 else ("aggregate", "slowest")
                    for cell in order:
                        mine[cell].append(client.get("/" + cell))
                with lock:
                    for cell, values in mine.items():
                        results[cell].extend(values)
            except BaseException as exc:
                errors.append(exc)

        log(
            f"{args.requests} requests per cell x {args.concurrency} client(s), "
            f"delays {args.delays} ms, {args.replicas} aggregator(s)"
        )
        started = time.perf_counter()
        threads = [threading.Thread(target=run_client) for _ in range(args.concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - started
        if errors:
            raise errors[0]

    info["loadavg_end"] = loadavg()
    total = sum(delays.values())
    slowest = max(delays.values())
    out = {
        cell: {
            "p50": statistics.median(v),
            "p90": percentile(v, 90),
            "p99": percentile(v, 99),
            "max": max(v),
            "n": len(v),
        }
        for cell, v in results.items()
    }
    print(
        f"machine: {info['nproc']} cores ({info['cpu']}), Envoy {info['envoy']}, {info['date']}; "
        f"load average {info['loadavg_start']} -> {info['loadavg_end']}"
    )
    print(
        f"backends delay {args.delays} ms (slowest {slowest:g}, sum {total:g}); "
        f"{args.concurrency} client(s); {args.replicas} aggregator(s); wall {wall:.1f} s"
    )
    print(f"{'cell':<22}{'n':>6}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    labels = {"slowest": "slowest part alone", "aggregate": "aggregate of 3"}
    for cell, r in out.items():
        print(
            f"{labels[cell]:<22}{r['n']:>6}{r['p50']:>10.1f}{r['p90']:>10.1f}"
            f"{r['p99']:>10.1f}{r['max']:>10.1f}"
        )
    a, s = out["aggregate"], out["slowest"]
    ratio = f"; aggregate p50 / sum of delays {a['p50'] / total:.2f}" if total else ""
    print(
        f"aggregate - slowest part: p50 {a['p50'] - s['p50']:+.1f} ms, "
        f"p99 {a['p99'] - s['p99']:+.1f} ms{ratio}"
    )
    print(json.dumps({"delays": delays, "results": out, "wall_s": wall}))


if __name__ == "__main__":
    main()

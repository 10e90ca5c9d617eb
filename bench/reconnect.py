"""Mass reconnect: N simulated Envoys open their ADS streams to a freshly started
``gatewayctl serve`` at the same moment, as a fleet does when its controller restarts.

The proxies are those of ``bench.ads_fanout`` (they subscribe like the bootstrap's Envoy:
CDS and LDS by wildcard, RDS and ECDS for what the listeners name, EDS for
``gateway.replicas`` and every EDS cluster, each response ACKed with its nonce), in
``--workers`` processes. A stream that ends with an error reconnects after Envoy's
bootstrap backoff (envoy/bootstrap.yaml: jittered exponential, 0.1 s base, 1 s cap) and
counts one error of its status code.

A proxy's first full sync is the moment it holds a response of every type it subscribed,
its RouteConfiguration included, and endpoints for every EDS name it asked for. Reported:
stream errors by status code, time from the go to the last proxy synced, p50/p99/max of
each stream's time from its own (last) open to its first full sync, controller RSS before
the fleet, after it synced, and per proxy beyond that base; the admission gate's own
counters (``/metrics``) when the controller has one.

    python -m bench.reconnect --proxies 1000
    python -m bench.reconnect --proxies 10000 --workers 2 --timeout 300
    python -m bench.reconnect --proxies 3000 --initial-syncs 0      # no admission bound
    python -m bench.reconnect --proxies 1000 --code 4c1d2e3         # the controller of a commit
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from bench.ads_fanout import Proxy
from bench.harness import Stack, cpu_seconds, make_route, rss_kib
from bench.stats import percentile

#: Envoy's reconnect backoff as the bootstrap sets it (seconds)
BACKOFF_BASE, BACKOFF_MAX = 0.1, 1.0


class ReconnectingProxy(Proxy):
    """A simulated Envoy that records when it first held everything it subscribed to and
    reconnects, as Envoy does, when its stream fails."""

    def __init__(self, port: int, index: int) -> None:
        super().__init__(port, index)
        self.opened = 0.0
        self.synced = 0.0
        self._eds_names: set[str] = set()
        self._stop = False

    def _reset(self) -> None:
        self.queue = asyncio.Queue()
        self.subscribed = {}
        self.last = {}
        self.responses = {}
        self._eds_names = set()

    async def run_forever(self) -> None:
        attempt = 0
        while not self._stop:
            self._reset()
            self.opened = time.perf_counter()
            before = self.errors
            await self.run()  # counts an error by its code
            if self._stop:
                return
            if self.errors == before:  # the server ended the stream without an error
                self.codes["OK"] = self.codes.get("OK", 0) + 1
            attempt += 1
            ceiling = min(BACKOFF_MAX, BACKOFF_BASE * 2**attempt)
            await asyncio.sleep(random.uniform(BACKOFF_BASE, ceiling))

    def _on_response(self, resp: Any) -> None:
        from envoy.config.endpoint.v3 import endpoint_pb2

        from controlplane.translate import ENDPOINT

        super()._on_response(resp)
        if resp.type_url == ENDPOINT:
            for any_ in resp.resources:
                cla = endpoint_pb2.ClusterLoadAssignment()
                any_.Unpack(cla)
                self._eds_names.add(cla.cluster_name)
        if not self.synced and self._complete():
            self.synced = time.perf_counter()

    def _complete(self) -> bool:
        from controlplane.translate import CLUSTER, ENDPOINT, LISTENER, ROUTE

        kinds = {t.rsplit(".", 1)[-1] for t in (CLUSTER, LISTENER, *self.subscribed)}
        if not kinds <= self.responses.keys() or ROUTE not in self.subscribed:
            return False
        return set(self.subscribed.get(ENDPOINT, ())) <= self._eds_names

    def close(self) -> None:
        self._stop = True
        super().close()


async def _fleet(port: int, first: int, count: int, conn: Connection) -> None:
    """``count`` proxies, opened when the benchmark says ``("go",)``; then
    ``("synced", timeout)`` -> [(opened, synced)] once all synced or the timeout passed;
    ``("count",)`` -> (errors by code, first text per code, responses by type);
    ``("stop",)`` -> the same, then the fleet ends."""
    proxies = [ReconnectingProxy(port, first + i) for i in range(count)]
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[Any] = asyncio.Queue()
    loop.add_reader(conn.fileno(), lambda: commands.put_nowait(conn.recv()))
    tasks: list[asyncio.Task[None]] = []
    try:
        while True:
            command = await commands.get()
            if command[0] == "go":
                tasks = [asyncio.create_task(p.run_forever()) for p in proxies]
                conn.send(True)
            elif command[0] == "synced":
                deadline = time.perf_counter() + command[1]
                while not all(p.synced for p in proxies) and time.perf_counter() < deadline:
                    await asyncio.sleep(0.05)
                conn.send([(p.opened, p.synced) for p in proxies])
            else:
                codes: dict[str, int] = {}
                details: dict[str, str] = {}
                responses: dict[str, int] = {}
                for p in proxies:
                    for code, n in p.codes.items():
                        codes[code] = codes.get(code, 0) + n
                    for code, text in p.details.items():
                        details.setdefault(code, text)
                    for kind, n in p.responses.items():
                        responses[kind] = responses.get(kind, 0) + n
                conn.send((codes, details, responses))
                if command[0] == "stop":
                    for p in proxies:
                        p.close()
                    await asyncio.wait(tasks, timeout=20)
                    return
    finally:
        loop.remove_reader(conn.fileno())


def _worker(port: int, first: int, count: int, conn: Connection) -> None:
    asyncio.run(_fleet(port, first, count, conn))


def _sigterm(stack: Stack, stopped: list[float]) -> None:
    """SIGTERM the controller; append the seconds it took to exit."""
    proc = stack.procs["controller"]
    start = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    stopped.append(time.perf_counter() - start)


def _metrics(stack: Stack) -> dict[str, float]:
    """The controller's admission counters and gauges (absent without the gate)."""
    conn = http.client.HTTPConnection("127.0.0.1", stack.ports["health"], timeout=10)
    try:
        conn.request("GET", "/metrics")
        lines = conn.getresponse().read().decode().splitlines()
    finally:
        conn.close()
    out = {}
    for line in lines:
        if line.startswith("gateway_xds_initial_sync"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def _measure(stack: Stack, args: argparse.Namespace) -> None:
    pid = stack.controller_pid
    time.sleep(2)  # the controller's start-up settles (validator primed, heap frozen)
    base = rss_kib(pid)
    ctx = multiprocessing.get_context("spawn")  # grpc does not survive fork
    conns, procs = [], []
    shares = max(1, args.workers)
    for w in range(shares):
        first = w * args.proxies // shares
        count = (w + 1) * args.proxies // shares - first
        mine, theirs = ctx.Pipe()
        target = (_worker, (stack.ports["xds"], first, count, theirs))
        proc: Any = (ctx.Process if args.workers else threading.Thread)(
            target=target[0], args=target[1], daemon=True
        )
        proc.start()
        conns.append(mine)
        procs.append(proc)
    time.sleep(3)  # the workers have imported grpc and built their proxies
    if args.profile:
        stack.profile_toggle()
    cpu = cpu_seconds(pid)
    go = time.perf_counter()
    go_wall = time.time()
    for c in conns:
        c.send(("go",))
    for c in conns:
        c.recv()
    peak = base
    stopped: list[float] = []
    if args.sigterm_after is not None:  # SIGTERM in the middle of the storm
        threading.Timer(args.sigterm_after, _sigterm, (stack, stopped)).start()
    for c in conns:
        c.send(("synced", args.timeout))
    waiting = list(conns)
    times: list[tuple[float, float]] = []
    while waiting:
        with contextlib.suppress(OSError, RuntimeError):  # gone after a SIGTERM
            peak = max(peak, rss_kib(pid))
        for c in [c for c in waiting if c.poll(0.2)]:
            times += c.recv()
            waiting.remove(c)
    synced_wall = time.time()
    if args.sigterm_after is None:
        cpu = cpu_seconds(pid) - cpu
        if args.profile:
            stack.profile_toggle()
            deadline = time.monotonic() + 120
            while not os.path.exists(f"{args.profile}.txt") and time.monotonic() < deadline:
                time.sleep(0.2)
        after = rss_kib(pid)
        gate = _metrics(stack)
    else:
        after, gate = peak, {}
    totals: dict[str, int] = {}
    responses: dict[str, int] = {}
    details: dict[str, str] = {}
    for c in conns:  # what the fleet saw until now (not the SIGTERM's errors)
        c.send(("count",))
        codes, texts, counts = c.recv()
        for code, text in texts.items():
            details.setdefault(code, text)
        for code, n in codes.items():
            totals[code] = totals.get(code, 0) + n
        for kind, n in counts.items():
            responses[kind] = responses.get(kind, 0) + n
    if args.sigterm_after is None:
        _sigterm(stack, stopped)  # every stream still open: the controller's busiest stop
    while not stopped:
        time.sleep(0.1)
    for c in conns:
        c.send(("stop",))
        c.recv()
    for proc in procs:
        proc.join(30)
    synced = [s - o for o, s in times if s]
    done = [s for _, s in times if s]
    load = os.getloadavg()[0]
    bound = "default" if args.initial_syncs is None else args.initial_syncs
    print(
        f"{args.proxies} proxies, {args.routes} routes, {args.workers} worker process(es), "
        f"initial syncs bound: {bound}"
    )
    print(f"synced {len(done)} of {args.proxies}", end="")
    if len(done) == args.proxies:
        print(f" in {max(done) - go:.2f} s after the go")
    else:
        print(f" (gave up after {args.timeout:.0f} s)")
    errors = sum(n for code, n in totals.items() if code != "OK")
    print(f"stream errors {errors}: {dict(sorted(totals.items())) or '-'}")
    for code, text in sorted(details.items()):
        print(f"  {code}: {text}")
    if synced:
        print(
            "open -> first full sync per stream: "
            f"p50 {percentile(synced, 50):.2f} s, p99 {percentile(synced, 99):.2f} s, "
            f"max {max(synced):.2f} s"
        )
    print(
        f"controller RSS: before {base / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB, "
        f"after {after / 1024:.1f} MiB; beyond the base {(after - base) / args.proxies:.1f} "
        f"KiB per proxy (peak {(peak - base) / args.proxies:.1f})"
    )
    print(
        "responses per proxy: "
        + ", ".join(f"{k} {n / args.proxies:.2f}" for k, n in sorted(responses.items()))
    )
    if args.sigterm_after is None:
        print(f"controller CPU from the go to all synced: {cpu:.1f} s")
    if gate:
        print("admission: " + ", ".join(f"{k} {v:g}" for k, v in sorted(gate.items())))
    if args.gc_log:
        pauses = stack.full_gc_pauses(go_wall, synced_wall)
        print(
            f"controller full GCs from the go to all synced: {len(pauses)}, "
            f"{sum(pauses):.0f} ms in all" + (f", longest {max(pauses):.0f} ms" if pauses else "")
        )
    print(f"load average (1 min) at the end: {load:.2f}")
    print(f"SIGTERM -> controller exited: {stopped[0]:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--proxies", type=int, default=1000)
    parser.add_argument("--routes", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2, help="simulator processes")
    parser.add_argument("--timeout", type=float, default=180, help="seconds to wait for sync")
    parser.add_argument(
        "--initial-syncs",
        type=int,
        default=None,
        help="serve --max-initial-syncs (0: no bound); default: the controller's default",
    )
    parser.add_argument(
        "--sigterm-after",
        type=float,
        metavar="S",
        help="SIGTERM the controller S seconds after the go (default: once all synced)",
    )
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="profile the controller from the go to all synced (yappi) into FILE, FILE.txt",
    )
    parser.add_argument("--keep", action="store_true", help="keep the controller's log")
    parser.add_argument(
        "--gc-log",
        action="store_true",
        help="count the controller's full garbage collections (bench/controller_shim.py)",
    )
    parser.add_argument("--code", default="worktree", help="the controller of this revision")
    raw = sys.argv[1:]
    args = parser.parse_args(raw)
    from bench.run import code_of

    code_of(args.code, raw, "bench.reconnect")
    if args.initial_syncs is not None:
        os.environ["GATEWAY_MAX_INITIAL_SYNCS"] = str(args.initial_syncs)
    os.environ["GATEWAY_VALIDATE"] = "never"  # no admin writes here
    with Stack(keep=args.keep, profile=args.profile, gc_log=args.gc_log) as stack:
        stack.start_backends()
        store = stack.seed()
        store.apply_objects([make_route("r", i, "a") for i in range(args.routes)])
        stack.start_controller()
        _measure(stack, args)


if __name__ == "__main__":
    main()

"""Admin API write -> ACK from N proxies: a ``route update`` through the admin API of a
real ``gatewayctl serve``, timed until every one of N simulated Envoys has ACKed the
RouteConfiguration of the new revision.

The simulated proxies are ADS streams (grpc.aio, one channel each) that behave as the
bootstrap's Envoy does: node id and gateway, LDS and CDS by wildcard, then RDS for the
listeners' route configuration, ECDS for their discovered filters and EDS for
``gateway.replicas``; every response is ACKed with its version and nonce. They run in
``--workers`` separate processes (default 1), as a fleet runs apart from its controller:
their parsing and ACKing competes with the controller for the cores, not for its GIL or
for the benchmark's event loop. ``--workers 0`` runs them in a thread of the benchmark
process instead (the former method: the HTTP writer and 100 streams share one GIL).

A sample is the time from sending the write (HTTP PUT, If-Match) to the last proxy's ACK
of a version of that revision. ``time.perf_counter`` is CLOCK_MONOTONIC on Linux, the same
clock in every process, so each sample is split into: the write (PUT sent -> 200 read),
write returned -> first proxy received the new RouteConfiguration, -> last proxy received
it (its ACK is queued at once).

    python -m bench.ads_fanout --proxies 100 --routes 100 --samples 50
    python -m bench.ads_fanout --proxies 100 --no-validate   # without Envoy's check
    python -m bench.ads_fanout --proxies 100 --workers 0     # proxies in this process
    python -m bench.ads_fanout --proxies 100 --code 810899b  # the controller of a commit
    python -m bench.ads_fanout --proxies 100 --gc-log        # + the controller's full GCs
    python -m bench.ads_fanout --proxies 1000 --workers 2 --limit  # + a divided rate limit
    python -m bench.ads_fanout --proxies 100 --protocol delta   # incremental xDS streams
    python -m bench.ads_fanout --proxies 100 --change timeout   # writes that change routes only
    python -m bench.ads_fanout --proxies 100 --sim node  # proxies on Node's gRPC (ads_sim/)
    python -m bench.ads_fanout --proxies 100 --samples 1000 --raw s.json  # + every sample

``--sim node`` runs the same proxies in Node.js (``ads_sim/sim.js``, @grpc/grpc-js): on a
small machine the proxies' CPU comes out of the controller's cores, and these take under
half of what the grpc.aio ones do (docs/decisions/0061).

The controller's own count of the writes' checks (render and Envoy's run, from its
/metrics) is printed with the figures: the part of each write spent waiting for a verdict.

``--protocol delta`` opens ``DeltaAggregatedResources`` streams instead, subscribing as an
Envoy with ``api_type: DELTA_GRPC`` does (wildcard CDS and LDS, named EDS, RDS and ECDS
changed with ``resource_names_subscribe``/``_unsubscribe`` as clusters and listeners come
and go, every response ACKed by its nonce). Bytes received per proxy are counted per type
(the gRPC message, as the controller wrote it).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import multiprocessing
import os
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from bench.harness import GATEWAY, Stack, cpu_seconds, make_route, route_name
from bench.stats import summary

ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
DELTA = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"


def _revision(version: str) -> int:
    head = version.split("-", 1)[0]
    return int(head) if head.isdigit() else -1


class Proxy:
    """One simulated Envoy: an ADS stream that subscribes and ACKs like the real one."""

    def __init__(self, port: int, index: int) -> None:
        from envoy.service.discovery.v3 import discovery_pb2

        self._pb = discovery_pb2
        self.port = port
        self.node = f"sim-{os.getpid()}-{index}"
        #: the next request is the stream's first (the only one that carries the node)
        self.first = True
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.subscribed: dict[str, list[str]] = {}
        #: revision -> (RouteConfiguration of that revision received, its ACK queued)
        self.route_acks: dict[int, tuple[float, float]] = {}
        #: the newest revision of a RouteConfiguration received (what the fleet's wait
        #: polls: a scan of ``route_acks`` per proxy every 2 ms grew with every sample)
        self.route_revision = -1
        self.errors = 0
        #: stream errors by gRPC status code name
        self.codes: dict[str, int] = {}
        #: the first error text per code
        self.details: dict[str, str] = {}
        #: responses and bytes received per resource type (short name)
        self.responses: dict[str, int] = {}
        self.bytes: dict[str, int] = {}
        #: type -> (version, nonce) of the last response
        self.last: dict[str, tuple[str, str]] = {}

    def _request(self, type_url: str, names: list[str], version: str = "", nonce: str = ""):  # type: ignore[no-untyped-def]
        req = self._pb.DiscoveryRequest(
            type_url=type_url, resource_names=names, version_info=version, response_nonce=nonce
        )
        if self.first:  # the bootstrap's set_node_on_first_message_only, as Envoy does
            self.first = False
            req.node.id, req.node.cluster = self.node, GATEWAY
            req.node.user_agent_name = "envoy"
            v = req.node.user_agent_build_version.version
            v.major_number, v.minor_number, v.patch = 1, 40, 0
        return req

    def _subscribe(self, type_url: str, names: list[str]) -> None:
        """A new list of names, with the last version and nonce of the type, as Envoy
        sends it (a request without a nonce is a new subscription: answered in full)."""
        if names and self.subscribed.get(type_url) != names:
            self.subscribed[type_url] = names
            version, nonce = self.last.get(type_url, ("", ""))
            self.queue.put_nowait(self._request(type_url, names, version, nonce))

    async def _requests(self):  # type: ignore[no-untyped-def]
        while True:
            item = await self.queue.get()
            if item is None:
                return
            yield item

    async def run(self) -> None:
        from controlplane.translate import CLUSTER, ENDPOINT, LISTENER

        self.queue.put_nowait(self._request(CLUSTER, []))
        self.queue.put_nowait(self._request(LISTENER, []))
        self._subscribe(ENDPOINT, ["gateway.replicas"])
        pb = self._pb
        await self._stream(ADS, pb.DiscoveryRequest, pb.DiscoveryResponse, self._on_response)

    async def _stream(self, method: str, request: Any, response: Any, handle: Any) -> None:
        """One ADS call sending the queued requests, counting what arrives and passing it
        to ``handle``. A connection of its own, as each Envoy has (channels to one target
        would otherwise share one pooled connection: N streams on one HTTP/2 connection)."""
        import grpc

        options = [("grpc.use_local_subchannel_pool", 1)]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.port}", options=options) as channel:
            call = channel.stream_stream(
                method,
                request_serializer=request.SerializeToString,
                response_deserializer=_sized(response),
            )
            try:
                async for size, resp in call(self._requests()):
                    self._count(resp.type_url, size)
                    handle(resp)
            except grpc.aio.AioRpcError as exc:
                self.errors += 1
                self.codes[exc.code().name] = self.codes.get(exc.code().name, 0) + 1
                self.details.setdefault(exc.code().name, str(exc.details()))

    def _count(self, type_url: str, size: int) -> None:
        kind = type_url.rsplit(".", 1)[-1]
        self.responses[kind] = self.responses.get(kind, 0) + 1
        self.bytes[kind] = self.bytes.get(kind, 0) + size

    def _on_response(self, resp: Any) -> None:
        from envoy.config.cluster.v3 import cluster_pb2

        from controlplane.translate import CLUSTER, ENDPOINT, EXTENSION, LISTENER, ROUTE

        received = time.perf_counter()
        names = self.subscribed.get(resp.type_url, [])
        self.last[resp.type_url] = (resp.version_info, resp.nonce)
        ack = self._request(resp.type_url, names, resp.version_info, resp.nonce)
        self.queue.put_nowait(ack)  # ACK first, as Envoy does once the resource is applied
        if resp.type_url == ROUTE:
            revision = _revision(resp.version_info)
            self.route_acks.setdefault(revision, (received, time.perf_counter()))
            self.route_revision = max(self.route_revision, revision)
        elif resp.type_url == CLUSTER:
            # as Envoy: the endpoints of every EDS cluster (the controller sends routes to a
            # new cluster once its endpoints went out)
            eds = []
            for any_ in resp.resources:
                cluster = cluster_pb2.Cluster()
                any_.Unpack(cluster)
                if cluster.type == cluster_pb2.Cluster.EDS:
                    eds.append(cluster.eds_cluster_config.service_name or cluster.name)
            self._subscribe(ENDPOINT, ["gateway.replicas", *sorted(eds)])
        elif resp.type_url == LISTENER:
            routes, filters = set(), set()
            for any_ in resp.resources:
                needs = _listener_needs(any_)
                routes |= needs[0]
                filters |= needs[1]
            self._subscribe(ROUTE, sorted(routes))
            self._subscribe(EXTENSION, sorted(filters))

    def acked(self, revision: int) -> tuple[float, float] | None:
        """(received, ACK queued) of the first RouteConfiguration at ``revision`` or later."""
        times = [t for rev, t in self.route_acks.items() if rev >= revision]
        return min(times) if times else None

    def close(self) -> None:
        self.queue.put_nowait(None)


def _sized(message: Any) -> Any:
    """A response deserializer that keeps the message's size on the wire."""

    def parse(data: bytes) -> tuple[int, Any]:
        return len(data), message.FromString(data)

    return parse


def _listener_needs(any_: Any) -> tuple[set[str], set[str]]:
    """(RouteConfiguration names, ECDS filter names) one Listener resource asks for."""
    from envoy.config.listener.v3 import listener_pb2
    from envoy.extensions.filters.network.http_connection_manager.v3 import (
        http_connection_manager_pb2 as hcm_pb2,
    )

    listener = listener_pb2.Listener()
    any_.Unpack(listener)
    routes, filters = set(), set()
    for chain in listener.filter_chains:
        for f in chain.filters:
            hcm = hcm_pb2.HttpConnectionManager()
            if not f.typed_config.Unpack(hcm):
                continue
            if hcm.HasField("rds"):
                routes.add(hcm.rds.route_config_name)
            filters |= {h.name for h in hcm.http_filters if h.HasField("config_discovery")}
    return routes, filters


class DeltaProxy(Proxy):
    """One simulated Envoy on the incremental protocol (bootstrap ``api_type: DELTA_GRPC``)."""

    def __init__(self, port: int, index: int) -> None:
        super().__init__(port, index)
        self.first = True
        #: type -> names subscribed to
        self.names: dict[str, set[str]] = {}
        #: cluster -> its EDS service name; listener -> (route names, filter names)
        self.clusters: dict[str, str | None] = {}
        self.listeners: dict[str, tuple[set[str], set[str]]] = {}

    def _delta(self, type_url: str, **fields: Any) -> Any:
        req = self._pb.DeltaDiscoveryRequest(type_url=type_url, **fields)
        if self.first:
            self.first = False
            req.node.id, req.node.cluster = self.node, GATEWAY
            req.node.user_agent_name = "envoy"
            v = req.node.user_agent_build_version.version
            v.major_number, v.minor_number, v.patch = 1, 40, 0
        return req

    def _want(self, type_url: str, names: set[str]) -> None:
        """Subscribe and unsubscribe so that ``names`` is what this type is subscribed to."""
        have = self.names.get(type_url, set())
        if names == have:
            return
        self.names[type_url] = set(names)
        self.queue.put_nowait(
            self._delta(
                type_url,
                resource_names_subscribe=sorted(names - have),
                resource_names_unsubscribe=sorted(have - names),
            )
        )

    async def run(self) -> None:
        from controlplane.translate import CLUSTER, ENDPOINT, LISTENER

        # as Envoy: the bootstrap's EDS cluster first, then CDS and LDS by wildcard
        self._want(ENDPOINT, {"gateway.replicas"})
        self.queue.put_nowait(self._delta(CLUSTER))
        self.queue.put_nowait(self._delta(LISTENER))
        pb = self._pb
        await self._stream(
            DELTA, pb.DeltaDiscoveryRequest, pb.DeltaDiscoveryResponse, self._on_delta
        )

    def _on_delta(self, resp: Any) -> None:
        from envoy.config.cluster.v3 import cluster_pb2

        from controlplane.translate import CLUSTER, ENDPOINT, EXTENSION, LISTENER, ROUTE

        received = time.perf_counter()
        self.queue.put_nowait(self._delta(resp.type_url, response_nonce=resp.nonce))  # ACK
        if resp.type_url == ROUTE and resp.resources:
            revision = max(_revision(r.version) for r in resp.resources)
            self.route_acks.setdefault(revision, (received, time.perf_counter()))
            self.route_revision = max(self.route_revision, revision)
        elif resp.type_url == CLUSTER:
            for r in resp.resources:
                cluster = cluster_pb2.Cluster()
                r.resource.Unpack(cluster)
                eds = cluster.type == cluster_pb2.Cluster.EDS
                self.clusters[r.name] = (
                    (cluster.eds_cluster_config.service_name or cluster.name) if eds else None
                )
            for name in resp.removed_resources:
                self.clusters.pop(name, None)
            eds_names = {n for n in self.clusters.values() if n}
            self._want(ENDPOINT, {"gateway.replicas"} | eds_names)
        elif resp.type_url == LISTENER:
            for r in resp.resources:
                self.listeners[r.name] = _listener_needs(r.resource)
            for name in resp.removed_resources:
                self.listeners.pop(name, None)
            routes = set().union(*(r for r, _ in self.listeners.values()))
            filters = set().union(*(f for _, f in self.listeners.values()))
            self._want(ROUTE, routes)
            self._want(EXTENSION, filters)


async def _fleet(port: int, first: int, count: int, conn: Connection, protocol: str) -> None:
    """Run ``count`` proxies; answer the benchmark's requests on ``conn``:
    ``("synced",)`` -> True once every proxy has a RouteConfiguration;
    ``("wait", revision, timeout)`` -> [(received, acked)] per proxy once all ACKed it;
    ``("count",)`` -> (responses, bytes) received by type, summed over the proxies;
    ``("stop",)`` -> stream error count, then the fleet ends."""
    kind = DeltaProxy if protocol == "delta" else Proxy
    proxies = [kind(port, first + i) for i in range(count)]
    tasks = [asyncio.create_task(p.run()) for p in proxies]
    loop = asyncio.get_running_loop()
    requests: asyncio.Queue[Any] = asyncio.Queue()
    loop.add_reader(conn.fileno(), lambda: requests.put_nowait(conn.recv()))
    try:
        while True:
            command = await requests.get()
            if command[0] == "synced":
                await _until(lambda: all(p.route_acks for p in proxies), 120)
                conn.send(True)
            elif command[0] == "wait":
                revision, timeout = command[1], command[2]
                await _until(
                    lambda r=revision: all(p.route_revision >= r for p in proxies), timeout
                )
                conn.send([p.acked(revision) for p in proxies])
            elif command[0] == "count":
                total: dict[str, int] = {}
                size: dict[str, int] = {}
                for p in proxies:
                    for t, n in p.responses.items():
                        total[t] = total.get(t, 0) + n
                    for t, n in p.bytes.items():
                        size[t] = size.get(t, 0) + n
                conn.send((total, size))
            else:
                for p in proxies:
                    p.close()
                await asyncio.wait(tasks, timeout=10)
                conn.send(sum(p.errors for p in proxies))
                return
    finally:
        loop.remove_reader(conn.fileno())


def _worker(port: int, first: int, count: int, conn: Connection, protocol: str) -> None:
    asyncio.run(_fleet(port, first, count, conn, protocol))


async def _until(check, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.perf_counter() + timeout
    while not check():
        if time.perf_counter() > deadline:
            raise TimeoutError("proxies did not catch up")
        await asyncio.sleep(0.002)


def _shares(proxies: int, workers: int) -> list[tuple[int, int]]:
    """(first index, count) of the proxies each of ``workers`` processes runs (one at
    least)."""
    n = max(1, workers)
    return [(w * proxies // n, (w + 1) * proxies // n - w * proxies // n) for w in range(n)]


class Fleet:
    """The simulated proxies, split over ``workers`` processes (0: one thread here)."""

    def __init__(self, port: int, proxies: int, workers: int, protocol: str = "sotw") -> None:
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        ctx = multiprocessing.get_context("spawn")  # grpc does not survive fork
        for first, count in _shares(proxies, workers):
            mine, theirs = ctx.Pipe()
            if workers:
                proc: Any = ctx.Process(target=_worker, args=(port, first, count, theirs, protocol))
            else:
                proc = threading.Thread(target=_worker, args=(port, first, count, theirs, protocol))
            proc.daemon = True
            proc.start()
            self.conns.append(mine)
            self.procs.append(proc)

    def ask(self, *command: Any) -> list[Any]:
        for conn in self.conns:
            conn.send(command)
        return [conn.recv() for conn in self.conns]

    def close(self) -> int:
        errors = sum(self.ask("stop"))
        for proc in self.procs:
            proc.join(10)
        return errors


SIM_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ads_sim")


def _descriptor_set(path: str) -> None:
    """The FileDescriptorSet of the messages the Node proxies read and write, from the
    xds-protos this benchmark runs with (so both sides agree on every field)."""
    from envoy.config.cluster.v3 import cluster_pb2
    from envoy.config.listener.v3 import listener_pb2
    from envoy.extensions.filters.network.http_connection_manager.v3 import (
        http_connection_manager_pb2,
    )
    from envoy.service.discovery.v3 import discovery_pb2
    from google.protobuf import descriptor_pb2

    out = descriptor_pb2.FileDescriptorSet()
    seen: set[str] = set()

    def add(file: Any) -> None:
        if file.name in seen:
            return
        seen.add(file.name)
        for dep in file.dependencies:
            add(dep)
        file.CopyToProto(out.file.add())

    for module in (discovery_pb2, cluster_pb2, listener_pb2, http_connection_manager_pb2):
        add(module.DESCRIPTOR)
    with open(path, "wb") as f:
        f.write(out.SerializeToString())


class NodeFleet:
    """The simulated proxies as Node processes (``ads_sim/sim.js``, @grpc/grpc-js): the
    same behaviour as :class:`Proxy`, at a fraction of its CPU per message. Installs the
    simulator's packages (``npm ci``) on first use."""

    def __init__(self, port: int, proxies: int, workers: int) -> None:
        import shutil
        import subprocess
        import tempfile

        node, npm = shutil.which("node"), shutil.which("npm")
        if node is None or npm is None:
            raise SystemExit("--sim node needs Node.js (node and npm on PATH)")
        if not os.path.isdir(os.path.join(SIM_DIR, "node_modules")):
            subprocess.run([npm, "ci", "--silent", "--no-audit", "--no-fund"], cwd=SIM_DIR,
                           check=True)  # fmt: skip
        self._dir = tempfile.TemporaryDirectory(prefix="ads-sim-")
        desc = os.path.join(self._dir.name, "envoy.desc")
        _descriptor_set(desc)
        self.procs: list[Any] = []
        for first, count in _shares(proxies, workers):
            self.procs.append(
                subprocess.Popen(
                    [
                        node,
                        os.path.join(SIM_DIR, "sim.js"),
                        desc,
                        *map(str, (port, first, count)),
                        GATEWAY,
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )

    def ask(self, *command: Any) -> list[Any]:
        for proc in self.procs:
            proc.stdin.write(json.dumps(command) + "\n")
            proc.stdin.flush()
        out = []
        for proc in self.procs:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"simulated proxies exited {proc.wait()}")
            out.append(json.loads(line))
        return out

    def close(self) -> int:
        errors = sum(self.ask("stop"))
        for proc in self.procs:
            proc.wait(10)
        self._dir.cleanup()
        return errors


def _counts(fleet: Fleet | NodeFleet) -> tuple[dict[str, int], dict[str, int]]:
    """(responses, bytes) received per type, summed over the fleet."""
    total: dict[str, int] = {}
    size: dict[str, int] = {}
    for responses, sizes in fleet.ask("count"):
        for kind, n in responses.items():
            total[kind] = total.get(kind, 0) + n
        for kind, n in sizes.items():
            size[kind] = size.get(kind, 0) + n
    return total, size


def _change(kind: str, i: int) -> dict[str, Any]:
    """The fields write ``i`` sets on the route. ``cluster``: it alternates between
    clusters ``a`` and ``b``, and no other route uses ``b``, so every other write adds a
    cluster (CDS, then its endpoints, then the routes) and the next drops it. ``timeout``:
    a new timeout each write, a change of the route table only."""
    if kind == "timeout":
        return {"timeout": f"{1 + i % 60}s"}
    return {"cluster": "ba"[i % 2]}


def _put(
    conn: http.client.HTTPConnection, token: str, name: str, change: dict[str, Any]
) -> tuple[int, float, float]:
    """(revision, PUT sent, response read) of one route update through the admin API."""
    auth = {"Authorization": f"Bearer {token}"}
    conn.request("GET", f"/v1/routes/{name}", headers=auth)
    got = conn.getresponse()
    spec = json.loads(got.read())["spec"]
    headers = {**auth, "If-Match": got.headers["ETag"], "Content-Type": "application/json"}
    start = time.perf_counter()
    conn.request("PUT", f"/v1/routes/{name}", body=json.dumps({**spec, **change}),
                 headers=headers)  # fmt: skip
    resp = conn.getresponse()
    body = json.loads(resp.read())
    returned = time.perf_counter()
    assert resp.status == 200, body
    return int(body["revision"]), start, returned


def _check_series(stack: Stack) -> dict[str, float]:
    """The controller's ``gateway_policy_check_seconds`` series, from its /metrics."""
    conn = http.client.HTTPConnection("127.0.0.1", stack.ports["health"], timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    out = {}
    for line in text.splitlines():
        if line.startswith("gateway_policy_check_seconds"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def _check_report(before: dict[str, float], after: dict[str, float]) -> str:
    """Mean render and Envoy time of the writes' checks, and how many Envoy took > 25 ms."""

    def moved(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    parts = []
    for stage in ("render", "envoy"):
        count = moved(f'gateway_policy_check_seconds_count{{stage="{stage}"}}')
        if count:
            mean = moved(f'gateway_policy_check_seconds_sum{{stage="{stage}"}}') / count
            parts.append(f"{stage} mean {mean * 1e3:.1f} ms")
    count = moved('gateway_policy_check_seconds_count{stage="envoy"}')
    within = moved('gateway_policy_check_seconds_bucket{le="0.025",stage="envoy"}')
    if count:
        parts.append(f"Envoy over 25 ms in {count - within:.0f} of {count:.0f}")
    if not after:
        return "not reported (a controller without gateway_policy_check_seconds)"
    return ", ".join(parts) or "none (not validated)"


def _measure(stack: Stack, args: argparse.Namespace) -> None:
    opened = time.perf_counter()
    fleet: Fleet | NodeFleet
    if args.sim == "node":
        fleet = NodeFleet(stack.ports["xds"], args.proxies, args.workers)
    else:
        fleet = Fleet(stack.ports["xds"], args.proxies, args.workers, args.protocol)
    fleet.ask("synced")
    print(
        f"{args.proxies} {args.protocol} proxies synced in "
        f"{(time.perf_counter() - opened) * 1e3:.0f} ms"
    )
    before, bytes_before = _counts(fleet)
    sync_bytes = sum(bytes_before.values()) / args.proxies
    print(
        f"first sync: {sync_bytes / 1e3:.1f} kB received per proxy, responses per proxy: "
        + ", ".join(f"{k} {n / args.proxies:.2f}" for k, n in sorted(before.items()))
    )
    conn = http.client.HTTPConnection("127.0.0.1", stack.ports["admin-api"], timeout=60)
    token = stack.admin_token()
    name = route_name("r", args.routes // 2)
    series: dict[str, list[float]] = {
        k: [] for k in ("last", "each", "write", "first_rx", "last_rx")
    }
    loads = []
    began = time.time()
    if args.profile:
        stack.profile_toggle()
    # CPU of the controller and of the simulated proxies' processes over the samples: steadier
    # than a percentile from one run, and what two cores are asked for per write
    sims = [proc.pid for proc in fleet.procs]
    checks_before = _check_series(stack)
    cpu_before = (cpu_seconds(stack.controller_pid), sum(cpu_seconds(pid) for pid in sims))
    for i in range(args.samples):
        time.sleep(args.pause)
        revision, start, returned = _put(conn, token, name, _change(args.change, i))
        times = [t for share in fleet.ask("wait", revision, 60) for t in share]
        received = [rx for rx, _ in times]
        acked = [ack for _, ack in times]
        series["last"].append(max(acked) - start)
        series["each"] += [ack - start for ack in acked]
        series["write"].append(returned - start)
        series["first_rx"].append(min(received) - returned)
        series["last_rx"].append(max(received) - min(received))
        loads.append(os.getloadavg()[0])
    cpu_after = (cpu_seconds(stack.controller_pid), sum(cpu_seconds(pid) for pid in sims))
    checks_after = _check_series(stack)
    if args.profile:
        stack.profile_toggle()
        deadline = time.monotonic() + 60
        while not os.path.exists(f"{args.profile}.txt") and time.monotonic() < deadline:
            time.sleep(0.1)
        print(f"controller profile: {args.profile} (pstat), {args.profile}.txt")
    conn.close()
    # a write that drops a cluster sends it after the routes the samples wait for: let the
    # last one arrive before counting
    time.sleep(args.pause)
    after, bytes_after = _counts(fleet)
    ended = time.time()
    per_write = {k: (n - before.get(k, 0)) / args.samples / args.proxies for k, n in after.items()}
    bytes_per_write = {
        k: (n - bytes_before.get(k, 0)) / args.samples / args.proxies
        for k, n in bytes_after.items()
    }
    errors = fleet.close()
    validated = "never" if args.no_validate else "auto (validated)"
    where = f"{args.workers} worker process(es)" if args.workers else "the benchmark process"
    where += f" ({args.sim})"
    print(
        f"{args.protocol}: {args.routes} routes, {args.samples} writes of the route's "
        f"{args.change}, validate={validated}, "
        "proxies in "
        f"{where}, stream errors {errors}"
    )
    print(
        "responses per proxy per write: "
        + ", ".join(f"{k} {n:.2f}" for k, n in sorted(per_write.items()) if n)
    )
    print(
        f"bytes per proxy per write: {sum(bytes_per_write.values()):.0f} ("
        + ", ".join(f"{k} {n:.0f}" for k, n in sorted(bytes_per_write.items()) if n)
        + ")"
    )
    print(f"load average (1 min) during the samples: {min(loads):.2f}-{max(loads):.2f}")
    controller_ms = (cpu_after[0] - cpu_before[0]) / args.samples * 1e3
    sims_ms = (cpu_after[1] - cpu_before[1]) / args.samples * 1e3
    print(
        f"CPU per write: controller {controller_ms:.1f} ms"
        + (f", simulated proxies {sims_ms:.1f} ms" if sims else " (proxies in this process)")
        + f" (pauses of {args.pause} s between writes included)"
    )
    print(f"the writes' checks before commit (controller /metrics): "
          f"{_check_report(checks_before, checks_after)}")  # fmt: skip
    if args.gc_log:
        pauses = stack.full_gc_pauses(began, ended)
        print(
            f"controller full GCs during the samples: {len(pauses)}"
            + (f", longest {max(pauses):.1f} ms" if pauses else "")
        )
    if args.raw:
        with open(args.raw, "w") as out:
            json.dump({k: [round(v * 1e3, 3) for v in series[k]] for k in series}, out)
    for label, key in (
        ("write -> last of N proxies ACKed", "last"),
        ("write -> each proxy ACKed", "each"),
        ("  PUT sent -> 200 read", "write"),
        ("  200 read -> first proxy received", "first_rx"),
        ("  first -> last proxy received", "last_rx"),
    ):
        s = summary(series[key])
        print(
            f"{label:34s} p50 {s['p50']:6.1f} ms  p90 {s['p90']:6.1f}  p99 {s['p99']:6.1f}"
            f"  max {s['max']:6.1f}  (n={s['n']:.0f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--proxies", type=int, default=100)
    parser.add_argument("--routes", type=int, default=100)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--pause", type=float, default=0.3, help="seconds between writes")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes the proxies run in (0: a thread of the benchmark process)",
    )
    parser.add_argument(
        "--sim",
        choices=("python", "node"),
        default="python",
        help="what the simulated proxies run on: grpc.aio, or Node's @grpc/grpc-js "
        "(ads_sim/sim.js: a fraction of the CPU per message; state of the world only)",
    )
    parser.add_argument("--no-validate", action="store_true")
    parser.add_argument(
        "--change",
        choices=("cluster", "timeout"),
        default="cluster",
        help="what each write changes: the route's cluster (every other write adds one) or "
        "its timeout (the route table only)",
    )
    parser.add_argument(
        "--protocol",
        choices=("sotw", "delta"),
        default="sotw",
        help="ADS the simulated proxies speak: state of the world or incremental (delta)",
    )
    parser.add_argument(
        "--limit",
        action="store_true",
        help="give the gateway a rate limit divided by replicas: every proxy then gets the "
        "member list, and each connect changes it (ADR 0048)",
    )
    parser.add_argument(
        "--gc-log",
        action="store_true",
        help="count the controller's full garbage collections (bench/controller_shim.py)",
    )
    parser.add_argument(
        "--code",
        default="worktree",
        help="run the controller of this git revision (a snapshot, see bench.run)",
    )
    parser.add_argument(
        "--raw",
        metavar="FILE",
        help="also write every sample (ms, in order) to FILE as JSON, to pool runs",
    )
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="profile the controller (all threads, yappi) and write its stats to FILE",
    )
    raw = sys.argv[1:]
    args = parser.parse_args(raw)
    if args.sim == "node" and (args.protocol != "sotw" or not args.workers):
        parser.error("--sim node: state-of-the-world streams in --workers >= 1 processes only")
    from bench.run import code_of

    code_of(args.code, raw, "bench.ads_fanout")
    if args.no_validate:
        os.environ["GATEWAY_VALIDATE"] = "never"
    else:
        os.environ.pop("GATEWAY_VALIDATE", None)
    with Stack(admin=True, profile=args.profile, gc_log=args.gc_log) as stack:
        stack.start_backends()
        store = stack.seed()
        store.apply_objects([make_route("r", i, "a") for i in range(args.routes)])
        if args.limit:  # the gateway's routes inherit a limit its replicas divide
            from controlplane.policy import Gateway

            gateway = store.get("gateway", GATEWAY)
            limit = {"key": "none", "limits": [{"requests": 100000, "per": "second"}]}
            store.apply_objects([Gateway(**{**gateway.model_dump(), "rate_limit": limit})])
        stack.start_controller()
        _measure(stack, args)


if __name__ == "__main__":
    main()

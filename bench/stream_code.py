"""CPU of the ADS stream code alone for one write pushed to N proxies: no gRPC.

``bench.ads_fanout`` times the whole path (admin API, Envoy's check, the push over gRPC to
simulated proxies). This isolates the part that is ours: N :class:`AdsStream` state
machines on one event loop, each fed by an in-process proxy that answers like Envoy (an
ACK per response, the EDS subscription a new cluster causes, the last version and nonce
with it), with a write that only yields to the loop once, as a gRPC write does. Each write
moves one route between cluster ``a`` and a cluster ``b`` no other route uses, as in
``bench.ads_fanout``: every other write adds a cluster (CDS, EDS, RDS), the next drops it.
The figure is the process's CPU from the snapshot's publication until every stream and
proxy is idle: the streams' code, asyncio's scheduling and the simulated proxies' parsing.

    python -m bench.stream_code --proxies 100 --writes 200
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import discovery_pb2

from controlplane.translate import CLUSTER, ENDPOINT, LISTENER, ROUTE, Resources
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.server import AdsStream
from controlplane.xds.snapshot import FragmentCache, Snapshot, build_snapshot
from controlplane.xds.status import ProxyState

REPLICAS = "gateway.replicas"


class _Recorder:
    def event(self, *args: Any) -> None:
        pass

    def changed(self, state: ProxyState) -> None:
        pass


class _Policy:
    """Snapshots of one gateway: 100 routes, one of them on ``a`` or ``b``. Unchanged
    resources keep their message objects, as the translator's do (their encoded fragments
    are then reused and not sent again)."""

    def __init__(self, routes: int) -> None:
        self.routes = routes
        self.fragments = FragmentCache()
        self.messages: dict[str, Any] = {}
        self.previous: Snapshot | None = None

    def _kept(self, key: str, make: Any) -> Any:
        if key not in self.messages:
            self.messages[key] = make()
        return self.messages[key]

    def snapshot(self, revision: int, target: str) -> Snapshot:
        res = Resources()
        for name in sorted({"a", target}):
            cluster = self._kept(
                f"c/{name}",
                lambda n=name: cluster_pb2.Cluster(name=n, type=cluster_pb2.Cluster.EDS),
            )
            load = self._kept(
                f"e/{name}", lambda n=name: endpoint_pb2.ClusterLoadAssignment(cluster_name=n)
            )
            res.add(CLUSTER, name, cluster, [])
            res.add(ENDPOINT, name, load, [])
        table = route_pb2.RouteConfiguration(name="bench")
        host = table.virtual_hosts.add(name="bench", domains=["*"])
        for i in range(self.routes):
            route = host.routes.add(name=f"r{i:05d}")
            route.match.prefix = f"/r/{i:05d}"
            route.route.cluster = target if i == self.routes // 2 else "a"
        res.add(ROUTE, "bench", table, [])
        res.add(LISTENER, "bench", self._kept("l", lambda: listener_pb2.Listener(name="bench")), [])
        self.previous = build_snapshot("bench", revision, res, self.previous, self.fragments)
        return self.previous


class _Proxy:
    """One Envoy's side of a stream, in process."""

    def __init__(self, cache: SnapshotCache, index: int) -> None:
        self.queue: asyncio.Queue[discovery_pb2.DiscoveryRequest] = asyncio.Queue()
        self.node = f"sim-{index}"
        self.first = True
        self.endpoints = [REPLICAS]
        self.last: dict[str, tuple[str, str]] = {}
        self.responses: dict[str, int] = {}
        self.stream = AdsStream(cache, _Recorder(), self.write, self.node)  # type: ignore[arg-type]

    def request(
        self, type_url: str, names: list[str], version: str = "", nonce: str = ""
    ) -> discovery_pb2.DiscoveryRequest:
        req = discovery_pb2.DiscoveryRequest(
            type_url=type_url, resource_names=names, version_info=version, response_nonce=nonce
        )
        if self.first:  # set_node_on_first_message_only, as the bootstrap's Envoy
            self.first = False
            req.node.id, req.node.cluster = self.node, "bench"
        return req

    def subscribe(self) -> None:
        for type_url, names in ((CLUSTER, []), (LISTENER, []), (ENDPOINT, self.endpoints)):
            self.queue.put_nowait(self.request(type_url, names))
        self.queue.put_nowait(self.request(ROUTE, ["bench"]))

    async def write(self, data: bytes) -> None:
        await asyncio.sleep(0)  # a gRPC write completes in a later turn of the loop
        resp = discovery_pb2.DiscoveryResponse.FromString(data)
        kind = resp.type_url.rsplit(".", 1)[-1]
        self.responses[kind] = self.responses.get(kind, 0) + 1
        self.last[resp.type_url] = (resp.version_info, resp.nonce)
        names = {ENDPOINT: self.endpoints, ROUTE: ["bench"]}.get(resp.type_url, [])
        self.queue.put_nowait(self.request(resp.type_url, names, resp.version_info, resp.nonce))
        if resp.type_url == CLUSTER:  # as Envoy: the endpoints of every EDS cluster
            wanted = [REPLICAS]
            for any_ in resp.resources:
                cluster = cluster_pb2.Cluster()
                any_.Unpack(cluster)
                wanted.append(cluster.name)
            if sorted(wanted) != self.endpoints:
                self.endpoints = sorted(wanted)
                version, nonce = self.last.get(ENDPOINT, ("", ""))
                self.queue.put_nowait(self.request(ENDPOINT, self.endpoints, version, nonce))

    async def requests(self) -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        while True:
            yield await self.queue.get()

    def idle(self) -> bool:
        return self.queue.empty() and self.stream._queue.empty()


async def _idle(proxies: list[_Proxy]) -> None:
    """Until every stream and proxy has nothing left to do (checked every 1 ms: a check
    per turn of the loop would cost O(N) per turn and count in the figure)."""
    quiet = 0
    while quiet < 2:
        await asyncio.sleep(0.001)
        quiet = quiet + 1 if all(p.idle() for p in proxies) else 0


async def _run(args: argparse.Namespace) -> None:
    policy = _Policy(args.routes)
    cache = SnapshotCache()
    cache.publish(policy.snapshot(1, "a"))
    cache.ready.set()
    proxies = [_Proxy(cache, i) for i in range(args.proxies)]
    tasks = [asyncio.create_task(p.stream.run(p.requests())) for p in proxies]
    for p in proxies:
        p.subscribe()
    await _idle(proxies)
    synced = {k: sum(p.responses.get(k, 0) for p in proxies) for k in proxies[0].responses}
    cpu: list[float] = []
    for i in range(args.writes):
        start = time.process_time()
        cache.publish(policy.snapshot(i + 2, "ba"[i % 2]))
        await _idle(proxies)
        cpu.append((time.process_time() - start) * 1e3)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    per_write = {
        k: (sum(p.responses.get(k, 0) for p in proxies) - synced.get(k, 0))
        / args.writes
        / args.proxies
        for k in sorted(proxies[0].responses)
    }
    adds, drops = cpu[0::2], cpu[1::2]
    per_proxy = statistics.mean(cpu) / args.proxies * 1e3
    print(
        f"{args.proxies} streams, {args.routes} routes, {args.writes} writes; responses per "
        "proxy per write: " + ", ".join(f"{k} {n:.2f}" for k, n in per_write.items() if n)
    )
    print(
        f"CPU per write: p50 {statistics.median(cpu):.2f} ms, mean {statistics.mean(cpu):.2f} "
        f"ms (writes adding a cluster {statistics.mean(adds):.2f}, dropping it "
        f"{statistics.mean(drops):.2f}); per proxy {per_proxy:.0f} us"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--proxies", type=int, default=100)
    parser.add_argument("--routes", type=int, default=100)
    parser.add_argument("--writes", type=int, default=200)
    asyncio.run(_run(parser.parse_args()))


if __name__ == "__main__":
    main()

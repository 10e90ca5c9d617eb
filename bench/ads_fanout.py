"""Admin API write -> ACK from N proxies: a ``route update`` through the admin API of a
real ``gatewayctl serve``, timed until every one of N simulated Envoys has ACKed the
RouteConfiguration of the new revision.

The simulated proxies are ADS streams (grpc.aio, one channel each, in this process) that
behave as the bootstrap's Envoy does: node id and gateway, LDS and CDS by wildcard, then
RDS for the listeners' route configuration, ECDS for their discovered filters and EDS for
``gateway.replicas``; every response is ACKed with its version and nonce. A sample is the
time from sending the write (HTTP PUT, If-Match) to the last proxy's ACK of a version of
that revision; per-proxy times are reported as well.

    python -m bench.ads_fanout --proxies 100 --routes 100 --samples 50
    python -m bench.ads_fanout --proxies 100 --no-validate   # without Envoy's check
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import time

import grpc
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.service.discovery.v3 import discovery_pb2

from bench.harness import GATEWAY, Stack, make_route, route_name
from bench.stats import summary
from controlplane.translate import CLUSTER, ENDPOINT, EXTENSION, LISTENER, ROUTE

ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"


def _revision(version: str) -> int:
    head = version.split("-", 1)[0]
    return int(head) if head.isdigit() else -1


class Proxy:
    """One simulated Envoy: an ADS stream that subscribes and ACKs like the real one."""

    def __init__(self, port: int, index: int) -> None:
        self.port = port
        self.node = f"sim-{os.getpid()}-{index}"
        self.queue: asyncio.Queue[discovery_pb2.DiscoveryRequest | None] = asyncio.Queue()
        self.subscribed: dict[str, list[str]] = {}
        #: revision -> when the RouteConfiguration of that revision was ACKed
        self.route_acks: dict[int, float] = {}
        self.changed = asyncio.Event()
        self.errors = 0

    def _request(self, type_url: str, names: list[str], version: str = "", nonce: str = ""):  # type: ignore[no-untyped-def]
        req = discovery_pb2.DiscoveryRequest(
            type_url=type_url, resource_names=names, version_info=version, response_nonce=nonce
        )
        req.node.id, req.node.cluster = self.node, GATEWAY
        req.node.user_agent_name = "envoy"
        v = req.node.user_agent_build_version.version
        v.major_number, v.minor_number, v.patch = 1, 40, 0
        return req

    def _subscribe(self, type_url: str, names: list[str]) -> None:
        if names and self.subscribed.get(type_url) != names:
            self.subscribed[type_url] = names
            self.queue.put_nowait(self._request(type_url, names))

    async def _requests(self):  # type: ignore[no-untyped-def]
        while True:
            item = await self.queue.get()
            if item is None:
                return
            yield item

    async def run(self) -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            call = channel.stream_stream(
                ADS,
                request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
                response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
            )
            self.queue.put_nowait(self._request(CLUSTER, []))
            self.queue.put_nowait(self._request(LISTENER, []))
            self._subscribe(ENDPOINT, ["gateway.replicas"])
            try:
                async for resp in call(self._requests()):
                    self._on_response(resp)
            except grpc.aio.AioRpcError:
                self.errors += 1

    def _on_response(self, resp: discovery_pb2.DiscoveryResponse) -> None:
        names = self.subscribed.get(resp.type_url, [])
        ack = self._request(resp.type_url, names, resp.version_info, resp.nonce)
        self.queue.put_nowait(ack)  # ACK first, as Envoy does once the resource is applied
        if resp.type_url == ROUTE:
            self.route_acks.setdefault(_revision(resp.version_info), time.perf_counter())
            self.changed.set()
        elif resp.type_url == LISTENER:
            routes, filters = [], []
            for any_ in resp.resources:
                listener = listener_pb2.Listener()
                any_.Unpack(listener)
                for chain in listener.filter_chains:
                    for f in chain.filters:
                        hcm = hcm_pb2.HttpConnectionManager()
                        if not f.typed_config.Unpack(hcm):
                            continue
                        if hcm.HasField("rds"):
                            routes.append(hcm.rds.route_config_name)
                        filters += [
                            h.name for h in hcm.http_filters if h.HasField("config_discovery")
                        ]
            self._subscribe(ROUTE, sorted(set(routes)))
            self._subscribe(EXTENSION, sorted(set(filters)))

    def acked_at(self, revision: int) -> float | None:
        times = [t for rev, t in self.route_acks.items() if rev >= revision]
        return min(times) if times else None

    def close(self) -> None:
        self.queue.put_nowait(None)


async def _until(check, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.perf_counter() + timeout
    while not check():
        if time.perf_counter() > deadline:
            raise TimeoutError("proxies did not catch up")
        await asyncio.sleep(0.002)


def _put(
    conn: http.client.HTTPConnection, token: str, name: str, cluster: str
) -> tuple[int, float]:
    auth = {"Authorization": f"Bearer {token}"}
    conn.request("GET", f"/v1/routes/{name}", headers=auth)
    got = conn.getresponse()
    spec = json.loads(got.read())["spec"]
    headers = {**auth, "If-Match": got.headers["ETag"], "Content-Type": "application/json"}
    start = time.perf_counter()
    conn.request("PUT", f"/v1/routes/{name}", body=json.dumps({**spec, "cluster": cluster}),
                 headers=headers)  # fmt: skip
    resp = conn.getresponse()
    body = json.loads(resp.read())
    assert resp.status == 200, body
    return int(body["revision"]), start


async def _measure(stack: Stack, args: argparse.Namespace) -> None:
    proxies = [Proxy(stack.ports["xds"], i) for i in range(args.proxies)]
    tasks = [asyncio.create_task(p.run()) for p in proxies]
    opened = time.perf_counter()
    await _until(lambda: all(p.route_acks for p in proxies), 120)
    print(f"{args.proxies} proxies synced in {(time.perf_counter() - opened) * 1e3:.0f} ms")
    conn = http.client.HTTPConnection("127.0.0.1", stack.ports["admin-api"], timeout=60)
    token = stack.admin_token()
    name = route_name("r", args.routes // 2)
    last: list[float] = []
    each: list[float] = []
    for i in range(args.samples):
        await asyncio.sleep(args.pause)
        # the write blocks (http.client): run it in a thread so the streams keep ACKing
        revision, start = await asyncio.to_thread(_put, conn, token, name, "ab"[i % 2])
        await _until(lambda r=revision: all(p.acked_at(r) for p in proxies), 60)
        times = [(p.acked_at(revision) or 0.0) - start for p in proxies]
        last.append(max(times))
        each += times
    conn.close()
    for p in proxies:
        p.close()
    await asyncio.wait(tasks, timeout=10)
    errors = sum(p.errors for p in proxies)
    validated = "never" if args.no_validate else "auto (validated)"
    print(
        f"{args.routes} routes, {args.samples} writes, validate={validated}, stream errors {errors}"
    )
    print(f"load average {os.getloadavg()[0]:.2f}")
    for label, values in (
        ("write -> last of N proxies ACKed", last),
        ("write -> each proxy ACKed", each),
    ):
        s = summary(values)
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
    parser.add_argument("--no-validate", action="store_true")
    args = parser.parse_args()
    if args.no_validate:
        os.environ["GATEWAY_VALIDATE"] = "never"
    else:
        os.environ.pop("GATEWAY_VALIDATE", None)
    with Stack(admin=True) as stack:
        stack.start_backends()
        store = stack.seed()
        store.apply_objects([make_route("r", i, "a") for i in range(args.routes)])
        stack.start_controller()
        asyncio.run(_measure(stack, args))


if __name__ == "__main__":
    main()

"""ADS stream, make-before-break: a cluster the new configuration drops stays in CDS until
the routes have moved off it (one CDS response keeping it, the routes, then CDS without it),
so requests on a route moving away from it never meet "no cluster" (503)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import discovery_pb2

from controlplane.translate import CLUSTER, ROUTE, Resources
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.server import AdsStream
from controlplane.xds.snapshot import FragmentCache, Snapshot, build_snapshot
from controlplane.xds.status import ProxyState
from tests.unit.xds_fakes import NullRecorder


def _snapshot(
    revision: int, clusters: list[str], target: str, previous: Snapshot | None, frags: FragmentCache
) -> Snapshot:
    res = Resources()
    for name in clusters:
        res.add(CLUSTER, name, cluster_pb2.Cluster(name=name), [])
    res.add(ROUTE, "public", route_pb2.RouteConfiguration(name=f"public->{target}"), [])
    return build_snapshot("gw", revision, res, previous, frags)


def _sent(data: bytes) -> tuple[str, list[str]]:
    resp = discovery_pb2.DiscoveryResponse.FromString(data)
    names = []
    for any_ in resp.resources:
        msg = cluster_pb2.Cluster() if resp.type_url == CLUSTER else route_pb2.RouteConfiguration()
        any_.Unpack(msg)
        names.append(msg.name)
    return resp.type_url.rsplit(".", 1)[-1], sorted(names)


def test_a_dropped_cluster_goes_after_the_routes() -> None:
    asyncio.run(_dropped_cluster())


async def _dropped_cluster() -> None:
    frags = FragmentCache()
    cache = SnapshotCache()
    first = _snapshot(1, ["alpha", "beta"], "beta", None, frags)
    cache.publish(first)
    written: list[bytes] = []

    async def write(data: bytes) -> None:
        written.append(data)

    stream = AdsStream(cache, NullRecorder(), write, "peer")  # type: ignore[arg-type]
    stream.proxy = ProxyState(node_id="n", gateway="gw", address="a", envoy_version="1.40.0")
    await stream._on_request(discovery_pb2.DiscoveryRequest(type_url=CLUSTER))
    await stream._on_request(
        discovery_pb2.DiscoveryRequest(type_url=ROUTE, resource_names=["public"])
    )
    assert [_sent(w) for w in written] == [
        ("Cluster", ["alpha", "beta"]),
        ("RouteConfiguration", ["public->beta"]),
    ]
    # the route moves to alpha and beta is no longer used
    second = _snapshot(2, ["alpha"], "alpha", first, frags)
    cache.publish(second)
    await stream._on_snapshot()
    assert [_sent(w) for w in written[2:]] == [
        # Envoy runs alpha and beta already: the routes move first, nothing before them
        ("RouteConfiguration", ["public->alpha"]),
        ("Cluster", ["alpha"]),  # then beta is removed
    ]
    # the last CDS response is the snapshot's: its ACK puts the proxy in sync
    final = discovery_pb2.DiscoveryResponse.FromString(written[-1])
    assert final.version_info == second.types[CLUSTER].version
    # a change that drops no cluster is one CDS response as before
    third = _snapshot(3, ["alpha", "gamma"], "gamma", second, frags)
    cache.publish(third)
    await stream._on_snapshot()
    assert [_sent(w) for w in written[4:]] == [
        ("Cluster", ["alpha", "gamma"]),
        ("RouteConfiguration", ["public->gamma"]),
    ]
    # dropping one cluster while adding another: the new one must be there before the
    # routes use it, the old one stays until they left it
    fourth = _snapshot(4, ["alpha", "delta"], "delta", third, frags)
    cache.publish(fourth)
    await stream._on_snapshot()
    assert [_sent(w) for w in written[6:]] == [
        ("Cluster", ["alpha", "delta", "gamma"]),  # delta added, gamma kept
        ("RouteConfiguration", ["public->delta"]),
        ("Cluster", ["alpha", "delta"]),
    ]


def test_an_endpoint_list_asked_for_again_is_sent_again() -> None:
    """A cluster that left CDS and came back is new to Envoy: it warms until its endpoints
    arrive, even when they did not change while it was gone (a rollback to a cluster
    the routes had left). The stream must not take it for already sent."""
    asyncio.run(_asked_again())


async def _asked_again() -> None:
    from envoy.config.endpoint.v3 import endpoint_pb2

    from controlplane.translate import ENDPOINT

    res = Resources()
    res.add(ENDPOINT, "alpha", endpoint_pb2.ClusterLoadAssignment(cluster_name="alpha"), [])
    res.add(ENDPOINT, "beta", endpoint_pb2.ClusterLoadAssignment(cluster_name="beta"), [])
    cache = SnapshotCache()
    cache.publish(build_snapshot("gw", 1, res, None, FragmentCache()))
    written: list[bytes] = []

    async def write(data: bytes) -> None:
        written.append(data)

    stream = AdsStream(cache, NullRecorder(), write, "peer")  # type: ignore[arg-type]
    stream.proxy = ProxyState(node_id="n", gateway="gw", address="a", envoy_version="1.40.0")

    def names(data: bytes) -> list[str]:
        resp = discovery_pb2.DiscoveryResponse.FromString(data)
        out = []
        for any_ in resp.resources:
            cla = endpoint_pb2.ClusterLoadAssignment()
            any_.Unpack(cla)
            out.append(cla.cluster_name)
        return sorted(out)

    async def ask(*wanted: str) -> None:
        nonce = discovery_pb2.DiscoveryResponse.FromString(written[-1]).nonce if written else ""
        version = (
            discovery_pb2.DiscoveryResponse.FromString(written[-1]).version_info if written else ""
        )
        await stream._on_request(
            discovery_pb2.DiscoveryRequest(
                type_url=ENDPOINT, resource_names=list(wanted), response_nonce=nonce,
                version_info=version,
            )
        )  # fmt: skip

    await ask("alpha", "beta")
    assert [names(w) for w in written] == [["alpha", "beta"]]
    await ask("alpha", "beta")  # the ACK
    await ask("beta")  # alpha left CDS: Envoy stops asking for its endpoints
    assert len(written) == 1
    await ask("alpha", "beta")  # alpha is back (rolled back to): its endpoints go again
    assert [names(w) for w in written[1:]] == [["alpha"]]


def _eds_snapshot(
    revision: int, clusters: list[str], target: str, previous: Snapshot | None, frags: FragmentCache
) -> Snapshot:
    from envoy.config.endpoint.v3 import endpoint_pb2

    from controlplane.translate import ENDPOINT

    res = Resources()
    for name in clusters:
        res.add(CLUSTER, name, cluster_pb2.Cluster(name=name), [], needs=[(ENDPOINT, name)])
        res.add(ENDPOINT, name, endpoint_pb2.ClusterLoadAssignment(cluster_name=name), [])
    res.add(ROUTE, "public", route_pb2.RouteConfiguration(name=f"public->{target}"), [])
    return build_snapshot("gw", revision, res, previous, frags)


def _endpoint_names(data: bytes) -> list[str]:
    from envoy.config.endpoint.v3 import endpoint_pb2

    resp = discovery_pb2.DiscoveryResponse.FromString(data)
    out = []
    for any_ in resp.resources:
        if any_.Is(endpoint_pb2.ClusterLoadAssignment.DESCRIPTOR):
            cla = endpoint_pb2.ClusterLoadAssignment()
            any_.Unpack(cla)
            out.append(cla.cluster_name)
    return out


def _types(written: list[bytes]) -> list[str]:
    return [
        discovery_pb2.DiscoveryResponse.FromString(w).type_url.rsplit(".", 1)[-1] for w in written
    ]


def test_routes_to_a_new_cluster_come_after_its_endpoints() -> None:
    """A new EDS cluster warms until its endpoints come, and a route to a warming cluster
    gets 503: its endpoints go right after the CDS response, before the routes, without
    waiting for Envoy to ask (a round trip to every proxy)."""
    asyncio.run(_new_cluster())


async def _new_cluster() -> None:
    from controlplane.translate import ENDPOINT

    frags = FragmentCache()
    cache = SnapshotCache()
    first = _eds_snapshot(1, ["alpha"], "alpha", None, frags)
    cache.publish(first)
    written: list[bytes] = []
    requests: asyncio.Queue[discovery_pb2.DiscoveryRequest | None] = asyncio.Queue()

    async def write(data: bytes) -> None:
        written.append(data)

    async def envoy() -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        while (item := await requests.get()) is not None:
            yield item

    def ask(type_url: str, names: list[str], nonce: str = "") -> None:
        req = discovery_pb2.DiscoveryRequest(
            type_url=type_url, resource_names=names, response_nonce=nonce
        )
        req.node.id, req.node.cluster = "n", "gw"
        requests.put_nowait(req)

    cache.ready.set()
    stream = AdsStream(cache, NullRecorder(), write, "peer")  # type: ignore[arg-type]
    runner = asyncio.create_task(stream.run(envoy()))
    ask(CLUSTER, [])
    ask(ENDPOINT, ["alpha"])
    ask(ROUTE, ["public"])
    await asyncio.sleep(0.1)
    assert _types(written) == ["Cluster", "ClusterLoadAssignment", "RouteConfiguration"]
    # the route moves to a new cluster, beta
    cache.publish(_eds_snapshot(2, ["alpha", "beta"], "beta", first, frags))
    await asyncio.sleep(0.1)
    assert _types(written[3:]) == ["Cluster", "ClusterLoadAssignment", "RouteConfiguration"]
    assert _endpoint_names(written[4]) == ["alpha", "beta"]  # what Envoy watches, and beta
    config = route_pb2.RouteConfiguration()
    discovery_pb2.DiscoveryResponse.FromString(written[-1]).resources[0].Unpack(config)
    assert config.name == "public->beta"
    requests.put_nowait(None)
    await asyncio.wait_for(runner, 2)

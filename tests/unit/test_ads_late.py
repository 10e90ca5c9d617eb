"""ADS stream: resources only a draining listener uses (ADR 0017) go in a response of their
own, after the others, at most once per LATE_INTERVAL, and do not hold a proxy's sync."""

from __future__ import annotations

import asyncio

import pytest
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import discovery_pb2

from controlplane.translate import ROUTE, Resources
from controlplane.xds import server
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.server import AdsStream
from controlplane.xds.snapshot import WILDCARD_TYPES, FragmentCache, Snapshot, build_snapshot
from controlplane.xds.status import ProxyState
from tests.unit.xds_fakes import NullRecorder


def _snapshot(revision: int, previous: Snapshot | None, frags: FragmentCache) -> Snapshot:
    res = Resources()
    for name in ("shard", "whole"):
        res.add(ROUTE, name, route_pb2.RouteConfiguration(name=f"{name}-{revision}"), [])
    res.late.add((ROUTE, "whole"))
    return build_snapshot("gw", revision, res, previous, frags)


def _names(data: bytes) -> list[str]:
    resp = discovery_pb2.DiscoveryResponse.FromString(data)
    out = []
    for any_ in resp.resources:
        config = route_pb2.RouteConfiguration()
        any_.Unpack(config)
        out.append(config.name)
    return out


def test_late_resources_follow_and_are_paced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "LATE_INTERVAL", 0.2)
    asyncio.run(_late_resources())


async def _late_resources() -> None:
    frags = FragmentCache()
    cache = SnapshotCache()
    first = _snapshot(1, None, frags)
    cache.publish(first)
    written: list[bytes] = []

    async def write(data: bytes) -> None:
        written.append(data)

    stream = AdsStream(cache, NullRecorder(), write, "peer")  # type: ignore[arg-type]
    stream.proxy = ProxyState(node_id="n", gateway="gw", address="a", envoy_version="1.40.0")
    await stream._on_request(
        discovery_pb2.DiscoveryRequest(type_url=ROUTE, resource_names=["shard", "whole"])
    )
    # asked for: both at once, the draining listener's in a second response
    assert [_names(w) for w in written] == [["shard-1"], ["whole-1"]]

    # a change right after: the serving listener's resource now, the other one later
    second = _snapshot(2, first, frags)
    cache.publish(second)
    await stream._on_snapshot()
    assert [_names(w) for w in written[2:]] == [["shard-2"]]
    for type_url in WILDCARD_TYPES:  # listeners and clusters: as if ACKed, not under test
        stream.types[type_url].acked_version = second.types[type_url].version
    nonce = discovery_pb2.DiscoveryResponse.FromString(written[2]).nonce
    await stream._on_request(
        discovery_pb2.DiscoveryRequest(
            type_url=ROUTE, resource_names=["shard", "whole"], response_nonce=nonce
        )
    )
    # in sync without the late resource (its listener's connections close after one answer)
    assert stream.proxy.acked_revision == 2

    item = await asyncio.wait_for(stream._queue.get(), 1.0)
    assert isinstance(item, tuple) and item[1] == ROUTE
    stream.types[ROUTE].late_waiting = False
    await stream._on_snapshot()
    assert [_names(w) for w in written[3:]] == [["whole-2"]]

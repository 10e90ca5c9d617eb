"""No rollback: a stream never answers a proxy with an older revision or another
database's policy than the one it reports running (ADR 0019)."""

from __future__ import annotations

import asyncio
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import discovery_pb2

from controlplane.metrics import Registry
from controlplane.store import Identity
from controlplane.translate import CLUSTER, Resources
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.guard import parse_version, rollback_reason
from controlplane.xds.metrics import XdsMetrics
from controlplane.xds.server import AdsStream
from controlplane.xds.snapshot import FragmentCache, build_snapshot
from controlplane.xds.status import ProxyState


def test_versions_name_database_and_revision() -> None:
    assert parse_version("12-abcd1234abcd1234-0123456789ab") == ("abcd1234abcd1234", 12)
    assert parse_version("12-abcd1234abcd1234-0123456789ab+r3") == ("abcd1234abcd1234", 12)
    assert parse_version("12-0123456789ab") == (None, 12)  # built before database ids
    assert parse_version("") is None and parse_version("v1") is None


def test_rollback_reason() -> None:
    mine = "aaaaaaaaaaaaaaaa"
    assert rollback_reason("", mine, 0, {}) is None  # a fresh Envoy takes anything
    assert rollback_reason(f"5-{mine}-x", mine, 5, {}) is None
    assert rollback_reason(f"5-{mine}-x", mine, 9, {}) is None
    assert "revision 9, newer than revision 5" in (
        rollback_reason(f"9-{mine}-x", mine, 5, {}) or ""
    )
    other = "bbbbbbbbbbbbbbbb"
    assert other in (rollback_reason(f"3-{other}-x", mine, 100, {}) or "")
    # a restore absorbed the other database up to revision 3 (or later): no rollback
    assert rollback_reason(f"3-{other}-x", mine, 1, {other: 3}) is None
    assert rollback_reason(f"4-{other}-x", mine, 100, {other: 3}) is not None
    # versions without a database id compare by revision
    assert rollback_reason("7-0123456789ab", mine, 6, {}) is not None
    assert rollback_reason("7-0123456789ab", mine, 7, {}) is None


class _Recorder:
    def __init__(self) -> None:
        self.events: list[str] = []

    def event(self, kind: str, *args: Any) -> None:
        self.events.append(kind)

    def changed(self, state: ProxyState) -> None:
        pass


def test_stream_holds_a_proxy_of_another_database_until_restored() -> None:
    asyncio.run(_hold())


async def _hold() -> None:
    cache = SnapshotCache()
    cache.identity = Identity("aaaaaaaaaaaaaaaa", 0, {})  # a fresh, empty database
    res = Resources()
    res.add(CLUSTER, "c", cluster_pb2.Cluster(name="c"), [])
    written: list[bytes] = []

    async def write(data: bytes) -> None:
        written.append(data)

    registry = Registry()
    recorder = _Recorder()
    stream = AdsStream(cache, recorder, write, "peer", XdsMetrics(registry))  # type: ignore[arg-type]
    stream.proxy = ProxyState(node_id="n", gateway="gw", address="a", envoy_version="1.40.0")
    running = "5000-bbbbbbbbbbbbbbbb-0123456789ab"
    await stream._on_request(discovery_pb2.DiscoveryRequest(type_url=CLUSTER, version_info=running))
    assert written == [] and stream.proxy.hold and "bbbbbbbbbbbbbbbb" in stream.proxy.hold
    assert "gateway_xds_rollbacks_refused_total" in registry.render()
    assert recorder.events == ["hold"]
    # the store reaches something that absorbed that database: the hold ends, it is served
    cache.identity = Identity("aaaaaaaaaaaaaaaa", 2, {"bbbbbbbbbbbbbbbb": 5000})
    cache.publish(build_snapshot("gw", 2, res, None, FragmentCache(), "aaaaaaaaaaaaaaaa"))
    await stream._on_snapshot()
    assert stream.proxy.hold is None and len(written) == 1
    resp = discovery_pb2.DiscoveryResponse.FromString(written[0])
    assert resp.version_info.startswith("2-aaaaaaaaaaaaaaaa-")


def test_allow_rollback_serves_anyway() -> None:
    async def run() -> None:
        cache = SnapshotCache()
        cache.identity = Identity("aaaaaaaaaaaaaaaa", 0, {})
        cache.allow_rollback = True
        written: list[bytes] = []

        async def write(data: bytes) -> None:
            written.append(data)

        recorder = _Recorder()
        stream = AdsStream(cache, recorder, write, "peer")  # type: ignore[arg-type]
        stream.proxy = ProxyState(node_id="n", gateway="gw", address="a", envoy_version="1")
        await stream._on_request(
            discovery_pb2.DiscoveryRequest(type_url=CLUSTER, version_info="9-bbbbbbbbbbbbbbbb-x")
        )
        assert len(written) == 1 and stream.proxy.hold is None and "rollback" in recorder.events

    asyncio.run(run())

"""Replica membership (xds/cache.py, ADR 0048): a proxy connecting or leaving wakes the other
streams only where the gateway's rate limits divide by replicas, and then once per burst."""

from __future__ import annotations

import asyncio

from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2

from controlplane.translate import ENDPOINT, ROUTE, Resources
from controlplane.translate.ratelimit import REPLICAS
from controlplane.xds import cache as cache_module
from controlplane.xds.cache import CHANGED, SnapshotCache, membership_delay
from controlplane.xds.snapshot import FragmentCache, Snapshot, build_snapshot


def _snapshot(divides: bool, revision: int = 1) -> Snapshot:
    res = Resources()
    res.divides_by_replicas = divides
    res.add(ROUTE, "gw", discovery_pb2.DiscoveryResponse(), [])  # any message will do
    return build_snapshot("gw", revision, res, None, FragmentCache())


def _members(cache: SnapshotCache) -> int:
    ts = cache.get("gw").types[ENDPOINT]
    resp = discovery_pb2.DiscoveryResponse.FromString(ts.response(ENDPOINT, "1", [REPLICAS]))
    cla = endpoint_pb2.ClusterLoadAssignment()
    resp.resources[0].Unpack(cla)
    return sum(len(group.lb_endpoints) for group in cla.endpoints)


def _drain(queue: asyncio.Queue[object]) -> int:
    n = 0
    while not queue.empty():
        assert queue.get_nowait() is CHANGED
        n += 1
    return n


def test_without_divided_limits_a_connect_wakes_no_other_stream() -> None:
    async def run() -> None:
        cache = SnapshotCache()
        cache.publish(_snapshot(divides=False))
        queues = [asyncio.Queue[object]() for _ in range(50)]
        subs = [cache.subscribe("gw", q, f"envoy-{i}") for i, q in enumerate(queues)]
        await asyncio.sleep(membership_delay(50) + 0.05)
        assert sum(_drain(q) for q in queues) == 0
        assert cache.members("gw") == 50  # still counted (status, metrics)
        assert _members(cache) == 1  # but served as the constant list
        cache.unsubscribe(subs[0])
        await asyncio.sleep(membership_delay(50) + 0.05)
        assert sum(_drain(q) for q in queues) == 0

    asyncio.run(run())


def test_with_divided_limits_a_burst_of_connects_is_one_update() -> None:
    async def run() -> None:
        cache = SnapshotCache()
        cache.publish(_snapshot(divides=True))
        first: asyncio.Queue[object] = asyncio.Queue()
        cache.subscribe("gw", first, "envoy-0")
        await asyncio.sleep(membership_delay(1) + 0.05)
        _drain(first)
        assert _members(cache) == 1
        others = [asyncio.Queue[object]() for _ in range(30)]
        for i, q in enumerate(others):
            cache.subscribe("gw", q, f"envoy-{i + 1}")
        assert _drain(first) == 0  # not one wake-up per connect
        await asyncio.sleep(membership_delay(31) + 0.1)
        assert _drain(first) == 1  # one for the whole burst
        assert _members(cache) == 31
        assert all(_drain(q) == 1 for q in others)

    asyncio.run(run())


def test_adding_the_first_limit_serves_the_real_count_with_it() -> None:
    async def run() -> None:
        cache = SnapshotCache()
        cache.publish(_snapshot(divides=False))
        queues = [asyncio.Queue[object]() for _ in range(3)]
        for i, q in enumerate(queues):
            cache.subscribe("gw", q, f"envoy-{i}")
        assert _members(cache) == 1
        cache.publish(_snapshot(divides=True, revision=2))
        assert _members(cache) == 3  # in the same snapshot as the limit itself
        assert all(_drain(q) == 1 for q in queues)

    asyncio.run(run())


def test_member_lists_kept_are_bounded() -> None:
    async def run() -> None:
        cache = SnapshotCache()
        cache.publish(_snapshot(divides=True))
        queues = []
        for i in range(40):
            q: asyncio.Queue[object] = asyncio.Queue()
            queues.append(q)
            cache.subscribe("gw", q, f"envoy-{i}")
            cache._members_changed_now("gw")  # as each delayed update would
        assert len(cache._members) <= cache_module.MEMBER_FRAGMENTS
        assert _members(cache) == 40

    asyncio.run(run())


def test_the_delay_grows_with_the_fleet_and_is_bounded() -> None:
    assert membership_delay(1) < 0.1
    assert membership_delay(1000) > membership_delay(10)
    assert membership_delay(100_000) == 1.0

"""Admission control for mass reconnects (xds/admission.py, ADR 0053): the first syncs in
flight never exceed the bound, every stream reaches its first full sync in turn, and a
burst of streams larger than gRPC core's pending-call limits is accepted, not CANCELLED.

The streams are real grpc.aio ADS clients of a real :class:`AdsServer` on loopback, each on
a connection of its own, subscribing as Envoy does (CDS and LDS by wildcard, EDS and RDS by
name) and ACKing every response. Concurrency is observed from the clients' side: a stream
is "syncing" from its first response to the moment it holds all four types; those intervals
lie inside the server's slots, so their greatest overlap can never exceed the bound if the
gate works, and does exceed it without the gate (checked too, so the count can fail).
Delta streams (``DeltaAggregatedResources``) go through the same gate: a delta fleet and a
mixed one are bounded together, checked the same way."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import AsyncIterator
from multiprocessing.connection import Connection
from typing import Any

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.service.discovery.v3 import discovery_pb2

from controlplane.translate import CLUSTER, ENDPOINT, LISTENER, ROUTE, Resources
from controlplane.xds.admission import SERVER_OPTIONS, InitialSyncGate
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.server import ADS_SERVICE, AdsServer
from controlplane.xds.snapshot import FragmentCache, build_snapshot
from tests.unit.xds_fakes import NullRecorder

ADS = f"/{ADS_SERVICE}/StreamAggregatedResources"
DELTA = f"/{ADS_SERVICE}/DeltaAggregatedResources"
FULL = {CLUSTER, LISTENER, ENDPOINT, ROUTE}


def _cache() -> SnapshotCache:
    res = Resources()
    cluster = cluster_pb2.Cluster(name="alpha", type=cluster_pb2.Cluster.EDS)
    cluster.eds_cluster_config.eds_config.ads.SetInParent()
    res.add(CLUSTER, "alpha", cluster, [])
    res.add(ENDPOINT, "alpha", endpoint_pb2.ClusterLoadAssignment(cluster_name="alpha"), [])
    hcm = hcm_pb2.HttpConnectionManager(stat_prefix="public")
    hcm.rds.route_config_name = "public"
    listener = listener_pb2.Listener(name="public")
    listener.filter_chains.add().filters.add(name="hcm").typed_config.Pack(hcm)
    res.add(LISTENER, "public", listener, [])
    res.add(ROUTE, "public", route_pb2.RouteConfiguration(name="public"), [])
    cache = SnapshotCache()
    cache.publish(build_snapshot("gw", 1, res, None, FragmentCache()))
    cache.ready.set()
    return cache


async def _server(
    gate: InitialSyncGate, cache: SnapshotCache | None = None
) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    ads = AdsServer(cache or _cache(), NullRecorder(), gate=gate)  # type: ignore[arg-type]
    server.add_generic_rpc_handlers((ads.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


def _request(node: str, type_url: str, names: list[str], version: str = "", nonce: str = ""):  # type: ignore[no-untyped-def]
    req = discovery_pb2.DiscoveryRequest(
        type_url=type_url, resource_names=names, version_info=version, response_nonce=nonce
    )
    req.node.id, req.node.cluster = node, "gw"
    return req


def _delta_request(node: str, type_url: str, names: list[str], version: str = "", nonce: str = ""):  # type: ignore[no-untyped-def]
    """The delta counterpart of :func:`_request`: a subscription (no nonce) or an ACK."""
    if nonce:
        return discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, response_nonce=nonce)
    req = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, resource_names_subscribe=names)
    req.node.id, req.node.cluster = node, "gw"
    return req


async def _proxy(
    port: int,
    node: str,
    release: asyncio.Event,
    over: list[str] | None = None,
    apply: float = 0.0,
    delta: bool = False,
    nack: bool = False,
) -> tuple[float, float, str | None]:
    """One Envoy-like stream: the time of its first response and of its full sync (an ACK
    sent for each of the four types) on the loop clock, and its error code, if any. Each
    ACK goes ``apply`` seconds after its response (Envoy applying it). The stream stays
    open until ``release`` is set, as a proxy's does, then closes its side and waits for
    the server to end the call; ``over`` gets its node once it synced or failed.
    ``delta``: an incremental stream (``DeltaAggregatedResources``) instead; ``nack``: it
    rejects every response instead of accepting it."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    names = {CLUSTER: [], LISTENER: [], ENDPOINT: ["alpha"], ROUTE: ["public"]}
    request = _delta_request if delta else _request
    for type_url, wanted in names.items():
        queue.put_nowait(request(node, type_url, wanted))

    async def requests() -> AsyncIterator[Any]:
        while (item := await queue.get()) is not None:
            yield item

    first = synced = 0.0
    acked: set[str] = set()

    def ack(req: Any) -> None:
        nonlocal synced
        queue.put_nowait(req)
        acked.add(req.type_url)
        if not synced and acked >= FULL:
            synced = loop.time()
            if over is not None:
                over.append(node)

    options = [("grpc.use_local_subchannel_pool", 1)]  # a connection per proxy, as Envoys
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        if delta:
            call = channel.stream_stream(
                DELTA,
                request_serializer=discovery_pb2.DeltaDiscoveryRequest.SerializeToString,
                response_deserializer=discovery_pb2.DeltaDiscoveryResponse.FromString,
            )
        else:
            call = channel.stream_stream(
                ADS,
                request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
                response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
            )
        waiter = asyncio.create_task(release.wait())
        waiter.add_done_callback(lambda _: queue.put_nowait(None))
        try:
            async for resp in call(requests()):
                first = first or loop.time()
                wanted = names[resp.type_url]
                version = resp.system_version_info if delta else resp.version_info
                req = request(node, resp.type_url, wanted, version, resp.nonce)
                if nack:
                    req.error_detail.message = "rejected"
                loop.call_later(apply, ack, req)
        except grpc.aio.AioRpcError as exc:
            if over is not None and not synced:
                over.append(node)
            return first, synced, exc.code().name
        finally:
            waiter.cancel()
    return first, synced, None


def _overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one moment (an end before a start at the same time)."""
    edges = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    most = running = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


async def _fleet(
    limit: int, streams: int, apply: float, delta: int = 0
) -> tuple[InitialSyncGate, list[tuple[float, float, str | None]]]:
    """``streams`` streams at once, every ``delta``-th of them incremental (0: none, 1: all)."""
    gate = InitialSyncGate(limit, slot_timeout=0)  # no hand-over by time: pure bound
    server, port = await _server(gate)
    release = asyncio.Event()
    try:
        tasks = [
            asyncio.create_task(
                _proxy(
                    port, f"envoy-{i}", release, apply=apply, delta=bool(delta and i % delta == 0)
                )
            )
            for i in range(streams)
        ]
        deadline = time.monotonic() + 300
        while gate.admitted < streams or gate.active:
            assert time.monotonic() < deadline, f"{gate.admitted} of {streams} admitted"
            await asyncio.sleep(0.05)
        release.set()
        results = await asyncio.gather(*tasks)
    finally:
        release.set()
        await server.stop(1)
    return gate, results


def test_first_syncs_in_flight_never_exceed_the_bound_and_all_complete() -> None:
    limit, streams = 8, 160
    gate, results = asyncio.run(_fleet(limit, streams, apply=0.1))
    assert [code for *_, code in results if code] == []  # no stream error
    assert all(first and synced for first, synced, _ in results)  # every one fully synced
    assert _overlap([(first, synced) for first, synced, _ in results]) <= limit
    assert gate.peak == limit  # the bound was reached, not merely unused
    assert gate.queued > 0 and gate.waiting == 0 and gate.active == 0


def test_without_a_bound_the_same_fleet_syncs_beyond_it() -> None:
    """The control: the clients' count does see more than the bound when nothing limits it
    (so the assertion above can fail)."""
    limit, streams = 8, 160
    gate, results = asyncio.run(_fleet(0, streams, apply=0.1))
    assert [code for *_, code in results if code] == []
    assert _overlap([(first, synced) for first, synced, _ in results]) > limit
    assert gate.peak > limit and gate.queued == 0


@pytest.mark.parametrize("delta", [1, 2], ids=["delta", "mixed"])
def test_delta_and_mixed_fleets_share_the_bound_and_all_complete(delta: int) -> None:
    """Delta streams go through the same gate as SotW ones: a fleet of delta streams only,
    and one alternating SotW and delta streams, stay within one bound and all sync (every
    stream closes its side at the end and waits for the server to end the call)."""
    limit, streams = 8, 120
    gate, results = asyncio.run(_fleet(limit, streams, apply=0.1, delta=delta))
    assert [code for *_, code in results if code] == []
    assert all(first and synced for first, synced, _ in results)
    assert _overlap([(first, synced) for first, synced, _ in results]) <= limit
    assert gate.admitted == streams and gate.peak == limit
    assert gate.queued > 0 and gate.waiting == 0 and gate.active == 0


@pytest.mark.parametrize("delta", [1, 2], ids=["delta", "mixed"])
def test_without_a_bound_delta_and_mixed_fleets_sync_beyond_it(delta: int) -> None:
    """The control of the test above: the same fleets without a bound."""
    limit, streams = 8, 120
    gate, results = asyncio.run(_fleet(0, streams, apply=0.1, delta=delta))
    assert [code for *_, code in results if code] == []
    assert all(first and synced for first, synced, _ in results)
    assert _overlap([(first, synced) for first, synced, _ in results]) > limit
    assert gate.peak > limit and gate.queued == 0


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_a_stream_waiting_its_turn_counts_as_a_replica_and_is_served_after(delta: bool) -> None:
    """Waiting streams are members of their gateway already (a limit the replicas divide is
    not split among the proxies synced so far only), and get nothing until their turn."""

    async def run() -> None:
        gate = InitialSyncGate(1, slot_timeout=0)
        cache = _cache()
        server, port = await _server(gate, cache)
        release = asyncio.Event()
        try:
            held = await gate.admit()  # the one slot, taken
            task = asyncio.create_task(_proxy(port, "waiting", release, delta=delta))
            deadline = time.monotonic() + 60
            while gate.waiting < 1:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            assert cache.streams("gw") == 1  # counted while it waits
            await asyncio.sleep(0.2)
            freed = asyncio.get_running_loop().time()
            held.release()
            while gate.admitted < 2 or gate.active:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            release.set()
            first, synced, code = await task
            assert code is None and synced
            assert first > freed  # nothing was sent to it before its turn
        finally:
            release.set()
            await server.stop(1)

    asyncio.run(run())


def test_a_delta_stream_that_rejects_its_first_sync_passes_its_slot_on() -> None:
    """A NACK gives the slot back (the proxy will not run this configuration): with a
    bound of 1 and no timeout, the stream behind a rejecting delta stream is served."""

    async def run() -> None:
        gate = InitialSyncGate(1, slot_timeout=0)
        server, port = await _server(gate)
        release = asyncio.Event()
        try:
            loop = asyncio.get_running_loop()
            rejecting = asyncio.create_task(
                _proxy(port, "rejecting", release, delta=True, nack=True)
            )
            deadline = time.monotonic() + 60
            while gate.admitted < 1:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            started = loop.time()
            over: list[str] = []
            behind = asyncio.create_task(_proxy(port, "behind", release, over, delta=True))
            while not over:  # synced (or failed) while the rejecting stream stays open
                assert time.monotonic() < deadline, f"{gate.waiting} waiting"
                await asyncio.sleep(0.02)
            # the proxy counts itself synced when it sends its last ACK; the controller gives
            # the slot back when it reads that ACK, a moment later on a busy machine
            while gate.active:
                assert time.monotonic() < deadline, f"{gate.active} slot(s) still held"
                await asyncio.sleep(0.02)
            assert gate.admitted == 2 and gate.active == 0 and gate.expired == 0
            release.set()
            first, synced, code = await behind
            assert code is None and first > started and synced
            assert (await rejecting)[2] is None
        finally:
            release.set()
            await server.stop(1)

    asyncio.run(run())


# -- the gate alone ---------------------------------------------------------------------------


def test_the_gate_serves_in_arrival_order_and_skips_streams_that_left() -> None:
    async def run() -> None:
        gate = InitialSyncGate(2, slot_timeout=0)
        held = [await gate.admit(), await gate.admit()]
        order: list[int] = []

        async def wait(i: int) -> None:
            slot = await gate.admit()
            order.append(i)
            await asyncio.sleep(0)
            slot.release()

        waiters = [asyncio.create_task(wait(i)) for i in range(5)]
        await asyncio.sleep(0.01)
        assert gate.waiting == 5 and gate.active == 2
        waiters[1].cancel()  # its stream ended while waiting
        await asyncio.sleep(0.01)
        for slot in held:
            slot.release()
            slot.release()  # twice: no second slot given back
        await asyncio.gather(*waiters, return_exceptions=True)
        assert order == [0, 2, 3, 4]
        assert gate.active == 0 and gate.peak == 2 and gate.waiting == 0

    asyncio.run(run())


def test_a_slot_is_passed_on_when_its_proxy_does_not_ack() -> None:
    async def run() -> None:
        gate = InitialSyncGate(1, slot_timeout=0.05)
        silent = await gate.admit()  # never released by its stream
        started = time.monotonic()
        nxt = await asyncio.wait_for(gate.admit(), 5)
        assert time.monotonic() - started >= 0.04
        assert gate.expired == 1 and not silent.held and nxt.held
        silent.release()  # late: changes nothing
        assert gate.active == 1
        nxt.release()
        assert gate.active == 0

    asyncio.run(run())


def test_a_slot_handed_to_a_stream_that_just_ended_goes_to_the_next() -> None:
    async def run() -> None:
        gate = InitialSyncGate(1, slot_timeout=0)
        first = await gate.admit()
        leaving = asyncio.create_task(gate.admit())
        staying = asyncio.create_task(gate.admit())
        await asyncio.sleep(0.01)
        first.release()  # hands the slot to ``leaving``...
        leaving.cancel()  # ...whose stream ends before it runs
        slot = await asyncio.wait_for(staying, 5)
        assert slot.held and gate.active == 1

    asyncio.run(run())


# -- the transport ----------------------------------------------------------------------------


def _burst(port: int, streams: int, conn: Connection) -> None:
    """A subprocess opening ``streams`` ADS streams at once; sends back their outcomes."""

    async def run() -> list[tuple[float, float, str | None]]:
        release = asyncio.Event()
        over: list[str] = []
        tasks = [
            asyncio.create_task(_proxy(port, f"burst-{id(conn)}-{i}", release, over))
            for i in range(streams)
        ]
        deadline = time.monotonic() + 240
        while len(over) < streams and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        conn.send("over")
        conn.recv()  # every process is over: the streams close together
        release.set()
        return await asyncio.gather(*tasks)

    conn.send(asyncio.run(run()))


def test_a_burst_beyond_grpc_cores_pending_call_limits_is_accepted() -> None:
    """gRPC core refuses calls the application has not picked up yet beyond 1,000 (some)
    and 3,000 (all) and cancels those left 30 s: a fleet of 4,000 streams opened at once
    from two processes got hundreds of CANCELLED/INTERNAL before SERVER_OPTIONS."""
    per_process, processes = 2000, 2
    asyncio.run(_burst_against_server(per_process, processes))


async def _burst_against_server(per_process: int, processes: int) -> None:
    gate = InitialSyncGate(200)
    server, port = await _server(gate)
    ctx = multiprocessing.get_context("spawn")
    pipes, procs = [], []
    try:
        for _ in range(processes):
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=_burst, args=(port, per_process, theirs), daemon=True)
            proc.start()
            pipes.append(mine)
            procs.append(proc)
        total = per_process * processes
        for pipe in pipes:  # each process: every stream synced or failed (or 240 s passed)
            while not pipe.poll():
                assert all(p.is_alive() for p in procs), "a client process died"
                await asyncio.sleep(0.1)
            assert pipe.recv() == "over"
        for pipe in pipes:
            pipe.send("release")
        results: list[tuple[float, float, str | None]] = []
        for pipe in pipes:
            while not pipe.poll():
                await asyncio.sleep(0.1)
            results += pipe.recv()
    finally:
        for proc in procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
        await server.stop(1)
    errors: dict[str, int] = {}
    for *_, code in results:
        if code:
            errors[code] = errors.get(code, 0) + 1
    assert errors == {}
    assert len(results) == total and all(synced for _, synced, _ in results)
    assert gate.peak <= 200


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])

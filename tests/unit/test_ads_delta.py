"""Delta ADS (``DeltaAggregatedResources``) over a real grpc.aio server and client in this
process: subscriptions (wildcard and named), the first sync, a route change sending only
that RouteConfiguration, removals in ``removed_resources``, a NACK recorded, a reconnect
with ``initial_resource_versions`` getting only what changed, the ADR 0050 order, and the
rollback guard."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import discovery_pb2

from controlplane.translate import CLUSTER, ENDPOINT, LISTENER, ROUTE, Resources
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.server import ADS_SERVICE, AdsServer
from controlplane.xds.snapshot import FragmentCache, Snapshot, build_snapshot
from controlplane.xds.status import ProxyState

DELTA = f"/{ADS_SERVICE}/DeltaAggregatedResources"
DB = "db1"


class _Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, int | None, str]] = []
        self.states: list[ProxyState] = []

    def event(self, kind: str, state: ProxyState, revision: int | None, detail: str) -> None:
        self.events.append((kind, revision, detail))

    def changed(self, state: ProxyState) -> None:
        self.states.append(state)


class _Gateway:
    """Snapshots of gateway ``gw`` built from a dict of routes: path -> cluster."""

    def __init__(self, cache: SnapshotCache) -> None:
        self.cache = cache
        self.frags = FragmentCache()
        self.snap: Snapshot | None = None
        self.revision = 0

    def publish(self, routes: dict[str, str], listeners: tuple[str, ...] = ("main",)) -> None:
        self.revision += 1
        res = Resources()
        for name in sorted(set(routes.values())):
            cluster = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS)
            res.add(CLUSTER, name, cluster, [("backend", name)])
            res.add(ENDPOINT, name, endpoint_pb2.ClusterLoadAssignment(cluster_name=name), [])
        for listener in listeners:
            res.add(LISTENER, listener, listener_pb2.Listener(name=listener), [])
            table = route_pb2.RouteConfiguration(name=listener)
            host = table.virtual_hosts.add(name="all", domains=["*"])
            for path, cluster in sorted(routes.items()):
                r = host.routes.add(name=path)
                r.match.prefix = path
                r.route.cluster = cluster
            res.add(ROUTE, listener, table, [("route", p) for p in routes])
        self.snap = build_snapshot("gw", self.revision, res, self.snap, self.frags, DB)
        self.cache.publish(self.snap)


class _Client:
    """One delta ADS stream, as an Envoy opens it."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.requests: asyncio.Queue[Any] = asyncio.Queue()
        call = channel.stream_stream(
            DELTA,
            request_serializer=discovery_pb2.DeltaDiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DeltaDiscoveryResponse.FromString,
        )
        self.call = call(self._requests())
        self.first = True
        #: responses as they arrive (a timed-out read would cancel the call itself)
        self.responses: asyncio.Queue[Any] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read_all())

    async def _read_all(self) -> None:
        async for resp in self.call:
            self.responses.put_nowait(resp)

    async def _requests(self) -> AsyncIterator[discovery_pb2.DeltaDiscoveryRequest]:
        while True:
            item = await self.requests.get()
            if item is None:
                return
            yield item

    def send(self, type_url: str, **fields: Any) -> None:
        req = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, **fields)
        if self.first:
            req.node.id, req.node.cluster = "envoy-1", "gw"
            self.first = False
        self.requests.put_nowait(req)

    async def read(self) -> discovery_pb2.DeltaDiscoveryResponse:
        return await asyncio.wait_for(self.responses.get(), 10)

    def ack(self, resp: discovery_pb2.DeltaDiscoveryResponse, error: str = "") -> None:
        req = discovery_pb2.DeltaDiscoveryRequest(type_url=resp.type_url, response_nonce=resp.nonce)
        if error:
            req.error_detail.message = error
        self.requests.put_nowait(req)

    async def quiet(self) -> bool:
        """Whether nothing more arrives within a short while."""
        try:
            await asyncio.wait_for(self.responses.get(), 0.3)
        except TimeoutError:
            return True
        return False

    async def ack_next(self, got: list[Any]) -> bool:
        """ACK the next response into ``got``; False when none comes within a short while."""
        try:
            resp = await asyncio.wait_for(self.responses.get(), 0.3)
        except TimeoutError:
            return False
        got.append(resp)
        self.ack(resp)
        return True

    def close(self) -> None:
        self.requests.put_nowait(None)
        self.call.cancel()
        self._reader.cancel()


def _short(type_url: str) -> str:
    return type_url.rsplit(".", 1)[-1]


def _names(resp: discovery_pb2.DeltaDiscoveryResponse) -> list[str]:
    return sorted(r.name for r in resp.resources)


def _route(resp: discovery_pb2.DeltaDiscoveryResponse, name: str) -> route_pb2.RouteConfiguration:
    for r in resp.resources:
        if r.name == name:
            table = route_pb2.RouteConfiguration()
            r.resource.Unpack(table)
            return table
    raise AssertionError(f"{name} not in the response")


async def _sync(client: _Client, versions: dict[str, dict[str, str]] | None = None) -> list[Any]:
    """Subscribe as Envoy does (CDS, then EDS for the clusters, LDS, then RDS); ACK all;
    return the responses received."""
    versions = versions or {}
    got = []
    client.send(CLUSTER, initial_resource_versions=versions.get(CLUSTER, {}))
    cds = await client.read()
    got.append(cds)
    client.ack(cds)
    eds_names = [r.name for r in cds.resources] or list(versions.get(ENDPOINT, {}))
    client.send(
        ENDPOINT,
        resource_names_subscribe=eds_names,
        initial_resource_versions=versions.get(ENDPOINT, {}),
    )
    client.send(LISTENER, initial_resource_versions=versions.get(LISTENER, {}))
    client.send(
        ROUTE,
        resource_names_subscribe=["main"],
        initial_resource_versions=versions.get(ROUTE, {}),
    )
    while await client.ack_next(got):
        pass
    return got


async def _server(cache: SnapshotCache, recorder: _Recorder) -> tuple[grpc.aio.Server, int]:
    ads = AdsServer(cache, recorder)  # type: ignore[arg-type]
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((ads.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


@contextlib.asynccontextmanager
async def _serving(
    routes: dict[str, str], listeners: tuple[str, ...] = ("main",), identity: Any = None
) -> AsyncIterator[tuple[_Gateway, _Recorder, int]]:
    """Gateway ``gw`` published with ``routes`` and served over ADS on a local port."""
    cache = SnapshotCache()
    cache.identity = identity
    cache.ready.set()
    gw = _Gateway(cache)
    gw.publish(routes, listeners)
    recorder = _Recorder()
    server, port = await _server(cache, recorder)
    try:
        yield gw, recorder, port
    finally:
        await server.stop(None)


@contextlib.asynccontextmanager
async def _connected(port: int) -> AsyncIterator[_Client]:
    """One delta stream from a client with a connection of its own."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        client = _Client(channel)
        try:
            yield client
        finally:
            client.close()


def _run(coro: Any) -> None:
    asyncio.run(asyncio.wait_for(coro, 60))


def test_first_sync_then_only_the_changed_route_then_removals() -> None:
    _run(_changes())


async def _changes() -> None:
    async with (
        _serving({"/a": "alpha", "/b": "beta"}, listeners=("main", "other")) as (
            gw,
            recorder,
            port,
        ),
        _connected(port) as client,
    ):
        got = await _sync(client)
        by_type = {(_short(r.type_url), tuple(_names(r))) for r in got}
        assert by_type == {
            ("Cluster", ("alpha", "beta")),
            ("ClusterLoadAssignment", ("alpha", "beta")),
            ("Listener", ("main", "other")),
            ("RouteConfiguration", ("main",)),  # named: "other" was not asked for
        }
        assert all(r.resources[0].version.startswith("1-db1-") for r in got)
        await asyncio.sleep(0.1)
        assert ("ack", 1, "in sync") in recorder.events

        # a route changes: one response, that RouteConfiguration, nothing else
        gw.publish({"/a": "alpha", "/b": "alpha"}, listeners=("main", "other"))
        resp = await client.read()
        assert (_short(resp.type_url), _names(resp)) == ("RouteConfiguration", ["main"])
        assert [r.route.cluster for r in _route(resp, "main").virtual_hosts[0].routes] == [
            "alpha",
            "alpha",
        ]
        assert list(resp.removed_resources) == []
        client.ack(resp)
        # beta is dropped after the routes moved, in removed_resources
        resp = await client.read()
        assert (_short(resp.type_url), _names(resp), list(resp.removed_resources)) == (
            "Cluster",
            [],
            ["beta"],
        )
        client.ack(resp)
        assert await client.quiet()
        await asyncio.sleep(0.1)
        assert ("ack", 2, "in sync") in recorder.events

        # a listener goes: only its name, in removed_resources
        gw.publish({"/a": "alpha", "/b": "alpha"}, listeners=("main",))
        resp = await client.read()
        assert (_short(resp.type_url), _names(resp), list(resp.removed_resources)) == (
            "Listener",
            [],
            ["other"],
        )
        client.ack(resp)
        assert await client.quiet()


def test_a_new_clusters_endpoints_come_before_the_routes() -> None:
    _run(_new_cluster())


async def _new_cluster() -> None:
    async with _serving({"/a": "alpha"}) as (gw, _recorder, port), _connected(port) as client:
        await _sync(client)
        gw.publish({"/a": "gamma"})
        order = []
        for _ in range(4):
            resp = await client.read()
            order.append((_short(resp.type_url), _names(resp), list(resp.removed_resources)))
            client.ack(resp)
        assert order == [
            ("Cluster", ["gamma"], []),
            ("ClusterLoadAssignment", ["gamma"], []),  # not waiting for Envoy to ask
            ("RouteConfiguration", ["main"], []),
            ("Cluster", [], ["alpha"]),
        ]
        # Envoy then subscribes to gamma's endpoints and drops alpha's: it has them already
        client.send(
            ENDPOINT, resource_names_subscribe=["gamma"], resource_names_unsubscribe=["alpha"]
        )
        assert await client.quiet()


def test_a_cluster_dropped_and_added_again_before_envoy_answers_is_sent_once() -> None:
    _run(_churn())


async def _churn() -> None:
    async with _serving({"/a": "alpha"}) as (gw, _recorder, port), _connected(port) as client:
        await _sync(client)
        got = []
        for target in ("beta", "alpha"):  # Envoy's (un)subscriptions lag behind
            gw.publish({"/a": target})
            for _ in range(4):
                resp = await client.read()
                got.append((_short(resp.type_url), _names(resp), list(resp.removed_resources)))
                client.ack(resp)
        assert got[4:] == [
            ("Cluster", ["alpha"], []),
            ("ClusterLoadAssignment", ["alpha"], []),
            ("RouteConfiguration", ["main"], []),
            ("Cluster", [], ["beta"]),
        ]
        # now Envoy's requests of the first move arrive, then those of the second
        client.send(
            ENDPOINT, resource_names_subscribe=["beta"], resource_names_unsubscribe=["alpha"]
        )
        client.send(
            ENDPOINT, resource_names_subscribe=["alpha"], resource_names_unsubscribe=["beta"]
        )
        assert await client.quiet()  # alpha's endpoints went ahead once: nothing again


def test_a_nack_is_recorded_and_not_resent() -> None:
    _run(_nack())


async def _nack() -> None:
    async with _serving({"/a": "alpha"}) as (gw, recorder, port), _connected(port) as client:
        await _sync(client)
        gw.publish({"/a": "alpha", "/bad(": "alpha"})
        resp = await client.read()
        assert _short(resp.type_url) == "RouteConfiguration"
        client.ack(resp, error="missing ): /bad(")
        assert await client.quiet()  # nothing resent
        await asyncio.sleep(0.1)
        nacks = [e for e in recorder.events if e[0] == "nack"]
        assert nacks == [("nack", 2, "RouteConfiguration: missing ): /bad(")]
        state = recorder.states[-1]
        assert state.nack_error == "missing ): /bad("
        assert ("route", "/bad(") in state.nack_candidates
        assert state.acked_revision == 1  # still runs the first revision


def test_a_reconnect_with_its_versions_gets_only_what_changed() -> None:
    _run(_reconnect())


async def _reconnect() -> None:
    versions: dict[str, dict[str, str]] = {}
    routes = {"/a": "alpha", "/b": "beta"}
    async with _serving(routes, ("main", "other")) as (gw, recorder, port):
        async with _connected(port) as client:
            for resp in await _sync(client):
                for r in resp.resources:
                    versions.setdefault(resp.type_url, {})[r.name] = r.version
        # while it was away: a route changed and a listener went
        gw.publish({"/a": "alpha", "/b": "alpha", "/c": "beta"}, listeners=("main",))
        async with _connected(port) as client:
            got = await _sync(client, versions)
            sent = sorted(
                (_short(r.type_url), tuple(_names(r)), tuple(r.removed_resources))
                for r in got
                if r.resources or r.removed_resources
            )
            assert sent == [
                ("Listener", (), ("other",)),
                ("RouteConfiguration", ("main",), ()),
            ]
            # the first answers of wildcard types come even when empty: Envoy waits for them
            assert {_short(r.type_url) for r in got} >= {"Cluster", "Listener"}
            await asyncio.sleep(0.1)
            assert ("ack", 2, "in sync") in recorder.events


@pytest.mark.parametrize("running", ["9-db1-0123456789abcdef", "1-other-0123456789abcdef"])
def test_a_proxy_running_newer_policy_is_held(running: str) -> None:
    _run(_held(running))


async def _held(running: str) -> None:
    from controlplane.store import Identity

    identity = Identity(database_id=DB, revision=1, lineage={})
    async with (
        _serving({"/a": "alpha"}, identity=identity) as (_gw, recorder, port),
        _connected(port) as client,
    ):
        client.send(CLUSTER, initial_resource_versions={"alpha": running})
        assert await client.quiet()  # nothing sent: the proxy keeps what it runs
        assert [e[0] for e in recorder.events if e[0] == "hold"] == ["hold"]


@pytest.mark.parametrize(("gateway", "refused"), [("gw", False), ("admin", True)])
def test_the_delta_stream_checks_the_client_certificate(
    gateway: str, refused: bool, tmp_path: Path
) -> None:
    _run(_mtls(gateway, refused, tmp_path))


async def _mtls(gateway: str, refused: bool, tmp_path: Path) -> None:
    """Over mutual TLS, as the SotW stream: the node id and gateway the first request claims
    must be named by the client certificate, else PERMISSION_DENIED before anything is
    sent or recorded."""
    from controlplane.pki import init_ca, issue_client
    from controlplane.xds.mtls import StreamAuthorizer, server_credentials

    init_ca(tmp_path, ["localhost"])
    cert, key = issue_client(tmp_path, ["gw"], "envoy-1", tmp_path / "envoy-1")
    cache = SnapshotCache()
    cache.ready.set()
    _Gateway(cache).publish({"/a": "alpha"})
    recorder = _Recorder()
    ads = AdsServer(cache, recorder, authorizer=StreamAuthorizer(required=True))  # type: ignore[arg-type]
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((ads.handler(),))
    creds = server_credentials(
        str(tmp_path / "controller.pem"), str(tmp_path / "controller.key"), str(tmp_path / "ca.pem")
    )
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    channel_creds = grpc.ssl_channel_credentials(
        (tmp_path / "ca.pem").read_bytes(), key.read_bytes(), cert.read_bytes()
    )
    options = [("grpc.ssl_target_name_override", "localhost")]
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", channel_creds, options) as channel:
        client = _Client(channel)
        req = discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER)
        req.node.id, req.node.cluster = "envoy-1", gateway
        client.first = False
        client.requests.put_nowait(req)
        if refused:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await client._reader
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "does not permit gateway 'admin'" in (caught.value.details() or "")
            assert recorder.events == [] and recorder.states == []
        else:
            resp = await client.read()
            assert _names(resp) == ["alpha"]
            assert recorder.events[0][0] == "connect"
        client.close()
    await server.stop(None)


def test_the_stream_ends_when_the_client_closes_its_side() -> None:
    """A client ending its requests (a half-close, not a cancel) ends the call: the stream
    sees the end of its requests, closes (status: disconnected) and gives back anything it
    holds, as a SotW stream does. It used to wait for a request forever."""
    _run(_half_close())


async def _half_close() -> None:
    async with _serving({"/a": "alpha"}) as (_gw, recorder, port), _connected(port) as client:
        await _sync(client)
        client.requests.put_nowait(None)  # no more requests; the call stays open
        await asyncio.wait_for(client._reader, 5)  # the server ended the call
        assert await client.call.code() == grpc.StatusCode.OK
        assert any(kind == "disconnect" for kind, *_ in recorder.events)

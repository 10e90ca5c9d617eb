"""The order of a push when a gateway's first API key that expires comes (and when its last
one goes), over both ADS protocols, on one route table and on a sharded gateway (scopes and
several RouteConfigurations), with the controller's own translator.

The key filter's credentials (ECDS) and the keyed routes' settings (RDS) change together:
the credentials carry "<consumer> <expiry>", and the routes forward that to the expiry check
instead of straight to ``x-consumer-id``. A request Envoy serves between the two responses
meets one new and one old: only new routes with old credentials, or new credentials with old
routes when the check turns off, are safe (``xds/snapshot.py``, ``push_order``).
tests/e2e/test_push_order.py holds a real Envoy in that window."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from envoy.service.discovery.v3 import discovery_pb2

from controlplane.policy import Bundle, JwtProvider, Route, new_api_key
from controlplane.runner import Runner
from controlplane.store import Store
from controlplane.translate import CLUSTER, ENDPOINT, EXTENSION, LISTENER, ROUTE, SCOPED
from controlplane.translate.auth import API_KEY_FILTER, JWT_FILTER, KEY_EXPIRY_SWITCH
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.delta import DeltaEncoder, DeltaStream
from controlplane.xds.server import AdsStream
from controlplane.xds.snapshot import CONFIGS_LAST, USUAL, Snapshot, push_order
from controlplane.xds.status import ProxyState
from tests.unit.xds_fakes import NullRecorder

POLICY = """
gateways:
  - {name: public, port: 18080}
clusters:
  - {name: alpha, endpoints: ["127.0.0.1:18081"]}
consumers:
  - {name: acme}
routes:
  - name: keyed
    gateway: public
    match: {path_prefix: /keyed}
    cluster: alpha
    auth: {api_key: true}
"""


def _type_of(data: bytes, delta: bool) -> str:
    message = (
        discovery_pb2.DeltaDiscoveryResponse if delta else discovery_pb2.DiscoveryResponse
    ).FromString(data)
    return message.type_url


class _Gateway:
    """The policy in a store, translated by the controller's runner into its cache."""

    def __init__(self, tmp_path: Path, shard_from: int) -> None:
        self.store = Store(str(tmp_path / "gateway.db"), create=True)
        # public routes beside the keyed one, enough for the sharded case to shard
        public = "".join(
            f"  - {{name: p{i:02d}, gateway: public, match: {{path_prefix: /p{i:02d}/}}, "
            "cluster: alpha}\n"
            for i in range(40)
        )
        self.store.apply(Bundle.from_text(POLICY + public, "policy.yaml"))
        self.store.create(new_api_key("acme"))  # a key that never expires
        self.cache = SnapshotCache()
        self.runner = Runner(
            self.store,
            self.cache,
            controller="test",
            xds_address="127.0.0.1:1",
            shard_from=shard_from,
        )

    async def render(self) -> Snapshot:
        """The gateway's snapshot as of the store's newest revision (as ``serve`` polls)."""
        if self.cache.published("public") is None:
            await self.runner.load()
        else:
            assert await self.runner.poll()
        snap = self.cache.get("public")
        assert snap.revision == self.store.revision()
        return snap


def _new_stream(gw: _Gateway, delta: bool, written: list[bytes]) -> AdsStream | DeltaStream:
    async def write(data: bytes) -> None:
        written.append(data)

    stream: AdsStream | DeltaStream
    if delta:
        stream = DeltaStream(gw.cache, NullRecorder(), DeltaEncoder(), write, "peer")  # type: ignore[arg-type]
    else:
        stream = AdsStream(gw.cache, NullRecorder(), write, "peer")  # type: ignore[arg-type]
    stream.proxy = ProxyState(node_id="n", gateway="public", address="a", envoy_version="1.40.0")
    return stream


async def _sync(gw: _Gateway, delta: bool, written: list[bytes]) -> AdsStream | DeltaStream:
    """A stream that ran its first sync of every type the gateway has."""
    stream = _new_stream(gw, delta, written)
    snap = gw.cache.get("public")
    for type_url in (CLUSTER, ENDPOINT, LISTENER, SCOPED, EXTENSION, ROUTE):
        if type_url == SCOPED and not snap.types[SCOPED].fragments:
            continue  # one route table: no scopes to ask for
        wildcard = type_url in (CLUSTER, LISTENER, SCOPED)
        names = [] if wildcard else sorted(snap.types[type_url].fragments)
        if delta:
            await stream._on_request(
                discovery_pb2.DeltaDiscoveryRequest(
                    type_url=type_url, resource_names_subscribe=names
                )
            )
        else:
            await stream._on_request(
                discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=names)
            )
    return stream


def _order(pushed: list[str]) -> list[str]:
    """The types of a push in order, each once (a sharded gateway's routes are several
    RouteConfigurations, possibly in several responses)."""
    out: list[str] = []
    for type_url in pushed:
        if not out or out[-1] != type_url:
            out.append(type_url)
    return out


@pytest.mark.parametrize("shard_from", [2000, 1], ids=["one-table", "sharded"])
@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_the_first_expiring_key_reaches_the_routes_before_the_credentials(
    tmp_path: Path, delta: bool, shard_from: int
) -> None:
    asyncio.run(_first_and_last(tmp_path, delta, shard_from))


async def _first_and_last(tmp_path: Path, delta: bool, shard_from: int) -> None:
    gw = _Gateway(tmp_path, shard_from)
    first = await gw.render()
    assert KEY_EXPIRY_SWITCH not in first.route_switches
    assert bool(first.types[SCOPED].fragments) == (shard_from == 1)
    written: list[bytes] = []
    stream = await _sync(gw, delta, written)
    assert {_type_of(w, delta) for w in written} >= {EXTENSION, ROUTE}

    # the first key that expires: the keyed routes switch the expiry check on
    expiring = new_api_key("acme", datetime.now(UTC) + timedelta(days=1))
    gw.store.create(expiring)
    snap = await gw.render()
    assert KEY_EXPIRY_SWITCH in snap.route_switches
    before = len(written)
    await stream._on_snapshot()
    pushed = [_type_of(w, delta) for w in written[before:]]
    assert _order(pushed) == [ROUTE, EXTENSION], pushed

    # another expiring key: the routes are unchanged, the credentials alone are pushed
    gw.store.create(new_api_key("acme", datetime.now(UTC) + timedelta(days=2)))
    await gw.render()
    before = len(written)
    await stream._on_snapshot()
    assert [_type_of(w, delta) for w in written[before:]] == [EXTENSION]

    # both expiring keys gone: the credentials change first, then the routes
    for key in gw.store.list_objects("api_key"):
        if key.expires_at is not None:  # type: ignore[attr-defined]
            gw.store.delete("api_key", key.name)
    snap = await gw.render()
    assert KEY_EXPIRY_SWITCH not in snap.route_switches
    before = len(written)
    await stream._on_snapshot()
    pushed = [_type_of(w, delta) for w in written[before:]]
    assert _order(pushed) == [EXTENSION, ROUTE], pushed
    gw.store.close()


def _types(steps: tuple[tuple[str, frozenset[str]], ...]) -> list[str]:
    return [t for t, _ in steps]


def test_push_order_reverses_only_for_a_switch_turning_on() -> None:
    switch = frozenset({KEY_EXPIRY_SWITCH})
    on = Snapshot("gw", 2, 2, {}, route_switches=switch, switched=frozenset({API_KEY_FILTER}))
    off = Snapshot("gw", 3, 3, {})
    steps = push_order(on, frozenset())
    # the configs that follow the switch after the routes, every other one before them
    assert steps.index((EXTENSION, frozenset({API_KEY_FILTER}))) < _types(steps).index(ROUTE)
    assert steps[-1] == (EXTENSION, frozenset()) and _types(steps)[-2] == ROUTE
    assert push_order(on, switch) == USUAL
    assert push_order(off, switch) == USUAL
    assert _types(USUAL).index(EXTENSION) < _types(USUAL).index(ROUTE)
    # nothing sent yet: the proxy has no routes a change could race
    assert push_order(on, None) == USUAL
    # a switch without the configs that follow it named: all of them after the routes
    unnamed = Snapshot("gw", 2, 2, {}, route_switches=switch)
    assert push_order(unnamed, frozenset()) == CONFIGS_LAST
    assert _types(CONFIGS_LAST)[-2:] == [ROUTE, EXTENSION]


def _names(data: bytes, delta: bool) -> tuple[str, list[str]]:
    if delta:
        d = discovery_pb2.DeltaDiscoveryResponse.FromString(data)
        return d.type_url, sorted(r.name for r in d.resources)
    m = discovery_pb2.DiscoveryResponse.FromString(data)
    if m.type_url != EXTENSION:
        return m.type_url, []
    from envoy.config.core.v3 import extension_pb2

    names = []
    for any_ in m.resources:
        config = extension_pb2.TypedExtensionConfig()
        any_.Unpack(config)
        names.append(config.name)
    return m.type_url, sorted(names)


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_a_new_jwt_provider_goes_before_the_routes_as_the_check_turns_on(
    tmp_path: Path, delta: bool
) -> None:
    """One revision makes the keyed route accept a new JWT provider and adds the first key
    that expires: the JWT filter's config goes before the routes that name the provider
    (else that route fails closed until it comes), the key filter's credentials after them
    (else a key's expiry goes unchecked)."""
    asyncio.run(_provider_and_first_key(tmp_path, delta))


async def _provider_and_first_key(tmp_path: Path, delta: bool) -> None:
    gw = _Gateway(tmp_path, 2000)
    await gw.render()
    written: list[bytes] = []
    stream = await _sync(gw, delta, written)
    keyed = gw.store.get("route", "keyed")
    assert isinstance(keyed, Route)
    spec = keyed.spec()
    spec["auth"] = {"api_key": True, "jwt": ["corp"]}
    corp = JwtProvider(name="corp", issuer="https://i.test", jwks_uri="https://i.test/k")
    key = new_api_key("acme", datetime.now(UTC) + timedelta(days=1))
    gw.store.apply_objects([corp, Route.model_validate(spec), key])
    snap = await gw.render()
    assert KEY_EXPIRY_SWITCH in snap.route_switches
    assert {JWT_FILTER, API_KEY_FILTER} <= set(snap.types[EXTENSION].fragments)
    before = len(written)
    await stream._on_snapshot()
    pushed = [_names(w, delta) for w in written[before:]]
    order = _order([t for t, _ in pushed])
    assert order[-3:] == [EXTENSION, ROUTE, EXTENSION], order
    configs = [names for t, names in pushed if t == EXTENSION]
    assert JWT_FILTER in configs[0] and API_KEY_FILTER not in configs[0], configs
    assert configs[-1] == [API_KEY_FILTER], configs
    gw.store.close()


# -- a stream's first sync: a proxy reconnecting to a controller that never sent it anything


async def _reconnect(
    stream: AdsStream | DeltaStream, ran: Snapshot, delta: bool, types: tuple[str, ...]
) -> None:
    """The first requests of an Envoy that ran ``ran`` and reconnects, in the order Envoy
    1.40 sends them (routes before extension configs), each carrying what it runs."""
    encoder = DeltaEncoder()
    for type_url in types:
        ts = ran.types[type_url]
        wildcard = type_url in (CLUSTER, LISTENER, SCOPED)
        names = [] if wildcard else sorted(ts.fragments)
        if delta:
            versions = {}
            for name in ts.fragments:
                encoder.entry("public", type_url, ts, name)
                versions[name] = encoder._entries[("public", type_url, name)][2]
            await stream._on_request(
                discovery_pb2.DeltaDiscoveryRequest(
                    type_url=type_url,
                    resource_names_subscribe=names,
                    initial_resource_versions=versions,
                )
            )
        else:
            await stream._on_request(
                discovery_pb2.DiscoveryRequest(
                    type_url=type_url, resource_names=names, version_info=ts.version
                )
            )


RECONNECT = (ENDPOINT, CLUSTER, LISTENER, ROUTE, EXTENSION)


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_a_reconnecting_proxy_gets_the_credentials_first_when_the_check_turned_off(
    tmp_path: Path, delta: bool
) -> None:
    """The last key that expires revoked while no controller ran: the proxy reconnects
    running routes with the check on, asks for its routes first, and gets the credentials
    (which its old routes handle) before the new routes; the first key added while no
    controller ran: the routes first, as asked."""
    asyncio.run(_across_a_restart(tmp_path, delta))


async def _across_a_restart(tmp_path: Path, delta: bool) -> None:
    gw = _Gateway(tmp_path, 2000)
    off = await gw.render()
    expiring = new_api_key("acme", datetime.now(UTC) + timedelta(days=1))
    gw.store.create(expiring)
    on = await gw.render()
    assert KEY_EXPIRY_SWITCH in on.route_switches

    # the check turned off while the proxy was away (it runs ``on``)
    gw.store.delete("api_key", expiring.name)
    now = await gw.render()
    assert not now.route_switches
    written: list[bytes] = []
    stream = _new_stream(gw, delta, written)
    await _reconnect(stream, on, delta, RECONNECT)
    answered = _order([_type_of(w, delta) for w in written])
    assert answered.index(EXTENSION) < answered.index(ROUTE), answered
    assert not stream._routes_owed

    # the check turned on while it was away (it runs ``off``): routes as asked, first
    gw.store.create(new_api_key("acme", datetime.now(UTC) + timedelta(days=1)))
    assert KEY_EXPIRY_SWITCH in (await gw.render()).route_switches
    written = []
    stream = _new_stream(gw, delta, written)
    await _reconnect(stream, off, delta, RECONNECT)
    answered = _order([_type_of(w, delta) for w in written])
    assert answered.index(ROUTE) < answered.index(EXTENSION), answered
    gw.store.close()


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_routes_that_wait_for_configs_never_asked_for_go_after_the_wait(
    tmp_path: Path, delta: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    asyncio.run(_configs_never_asked(tmp_path, delta, monkeypatch))


async def _configs_never_asked(
    tmp_path: Path, delta: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from controlplane.xds import server

    monkeypatch.setattr(server, "ROUTES_WAIT", 0.01)
    gw = _Gateway(tmp_path, 2000)
    await gw.render()
    expiring = new_api_key("acme", datetime.now(UTC) + timedelta(days=1))
    gw.store.create(expiring)
    on = await gw.render()
    gw.store.delete("api_key", expiring.name)
    await gw.render()
    written: list[bytes] = []
    stream = _new_stream(gw, delta, written)
    await _reconnect(stream, on, delta, (ENDPOINT, CLUSTER, LISTENER, ROUTE))
    assert ROUTE not in {_type_of(w, delta) for w in written}
    # a new revision meanwhile does not send them either
    await stream._on_snapshot()
    assert ROUTE not in {_type_of(w, delta) for w in written}
    # the wait ends in the stream's turn: its queue gets the item that answers them
    item = await asyncio.wait_for(stream._queue.get(), 5)
    assert isinstance(item, tuple) and item[1] == server._ROUTES_DUE
    await stream._answer_owed_routes()
    assert [_type_of(w, delta) for w in written][-1] == ROUTE
    gw.store.close()


def test_a_route_version_says_which_switches_its_routes_carry() -> None:
    from controlplane.xds.guard import mark_switches, parse_version, version_switches

    plain = "12-db1-abcdef"
    marked = mark_switches(plain, frozenset({KEY_EXPIRY_SWITCH}))
    assert version_switches(marked) == frozenset({KEY_EXPIRY_SWITCH})
    assert version_switches(mark_switches(plain, frozenset())) == frozenset()
    assert parse_version(marked) == parse_version(plain) == ("db1", 12)
    # said nothing: unknown, not "none"
    assert version_switches(plain) is None
    assert version_switches("") is None
    assert version_switches("foreign+on=x") is None

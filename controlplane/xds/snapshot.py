"""Per-gateway snapshots: resources serialised once, shared by every stream of the gateway.

Each resource is kept as a ready-made fragment of a ``DiscoveryResponse`` (field 2, one
``Any``). Protobuf concatenation is merge, so a stream builds its response by joining the
fragments it needs and one small header with version, type URL and nonce: no per-stream
serialisation, whatever the number of Envoys.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from google.protobuf.message import Message

from ..errors import TranslationError
from ..policy.reserved import REPLICAS_ASSIGNMENT, REPLICAS_CLUSTER, XDS_CLUSTER
from ..translate import (
    CLUSTER,
    ENDPOINT,
    EXTENSION,
    LISTENER,
    ROUTE,
    SCOPED,
    SECRET,
    Encoded,
    Resources,
    wire,
)
from .guard import mark_switches, parse_version, type_version, version_switches

__all__ = [
    "CONFIGS_LAST",
    "OPTIONAL_TYPES",
    "PUSH_ORDER",
    "USUAL",
    "FragmentCache",
    "Snapshot",
    "Step",
    "TypeSnapshot",
    "build_snapshot",
    "push_order",
    "resource_fragment",
    "routes_wait_for_configs",
]

#: make-before-break: clusters and their endpoints exist before anything routes to them,
#: certificates (SDS) before the listeners that serve them; a sharded gateway's scopes
#: (SRDS) name the RouteConfigurations Envoy then asks for
PUSH_ORDER = (CLUSTER, ENDPOINT, EXTENSION, SECRET, LISTENER, SCOPED, ROUTE)
#: one step of a push: a type, and the names of that type left to a later step
Step = tuple[str, frozenset[str]]
_NONE: frozenset[str] = frozenset()
#: the usual push (``push_order``)
USUAL: tuple[Step, ...] = tuple((t, _NONE) for t in PUSH_ORDER)
#: every extension config after the routes
CONFIGS_LAST: tuple[Step, ...] = (
    *((t, _NONE) for t in PUSH_ORDER if t != EXTENSION),
    (EXTENSION, _NONE),
)
#: types whose requests name no resources and whose responses carry all of them
WILDCARD_TYPES = frozenset({CLUSTER, LISTENER, SCOPED})
#: wildcard types only some listeners ask for (scopes: sharded gateways). A proxy is in
#: sync without them unless it asks and there are some; an empty set is not pushed, since
#: an Envoy that stopped asking (its listener drained) would not ACK it.
OPTIONAL_TYPES = frozenset({SCOPED})


#: responses kept encoded per TypeSnapshot (distinct name lists streams asked for)
RESPONSES_KEPT = 64


@dataclass(frozen=True)
class TypeSnapshot:
    """All resources of one type for one gateway, and a version that changes with them."""

    version: str
    fragments: dict[str, bytes]
    #: resources sent in a response of their own after the others (a listener being
    #: drained still uses them; Envoy applies the others first)
    late: frozenset[str] = frozenset()
    #: (type, names) -> the response without its nonce: every stream of the gateway gets
    #: the same bytes, only the nonce differs (a push to N proxies encodes it once)
    _bodies: dict[tuple[str, tuple[str, ...] | None], bytes] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )

    def response(self, type_url: str, nonce: str, names: Iterable[str] | None = None) -> bytes:
        """DiscoveryResponse bytes: version_info (1), resources (2), type_url (4), nonce (5);
        fields may come in any order on the wire, so the shared part is built once."""
        key = (type_url, None if names is None else tuple(names))
        shared = self._bodies.get(key)
        if shared is None:
            if key[1] is None:
                body = b"".join(self.fragments[n] for n in sorted(self.fragments))
            else:
                body = b"".join(self.fragments[n] for n in key[1] if n in self.fragments)
            shared = body + wire.field(1, self.version.encode()) + wire.field(4, type_url.encode())
            if len(self._bodies) < RESPONSES_KEPT:
                self._bodies[key] = shared
        return shared + wire.field(5, nonce.encode())


@dataclass(frozen=True)
class Snapshot:
    """One gateway's configuration at one policy revision."""

    gateway: str
    revision: int
    #: the revision at which this gateway's configuration last changed
    changed_revision: int
    types: dict[str, TypeSnapshot]
    sources: dict[tuple[str, str], Iterable[tuple[str, str]]] = field(default_factory=dict)
    #: its rate limits share budgets between replicas (``Resources.divides_by_replicas``)
    divides_by_replicas: bool = False
    #: what its routes switch on that its extension configs rely on
    #: (``Resources.route_switches``, ``push_order``)
    route_switches: frozenset[str] = frozenset()
    #: the extension configs that follow those switches (``Resources.switched``)
    switched: frozenset[str] = frozenset()

    def type_version(self, type_url: str) -> str:
        return self.types[type_url].version

    def at(self, revision: int) -> Snapshot:
        """The same configuration, current as of a later revision that did not change it."""
        return dataclasses.replace(self, revision=revision)

    def with_fragment(self, type_url: str, name: str, fragment: bytes, tag: str) -> Snapshot:
        """This snapshot plus one resource that is not policy (e.g. the gateway's replica
        list); ``tag`` distinguishes the type's version from the one without it."""
        old = self.types[type_url]
        added = TypeSnapshot(f"{old.version}+{tag}", {**old.fragments, name: fragment}, old.late)
        return dataclasses.replace(self, types={**self.types, type_url: added})


def push_order(snap: Snapshot, running: frozenset[str] | None) -> tuple[Step, ...]:
    """The steps of one push to a proxy whose routes carry the switches ``running`` (None:
    not known, none sent yet).

    Extension configs usually go before the routes, which may name a filter config they add
    (a new JWT provider). A switch the routes turn on reverses that for the configs that
    follow it (``Snapshot.switched``): the first key that expires makes the key filter
    forward "<consumer> <expiry>", which only the expiry check the keyed routes now run may
    read, so a request served between the two responses must meet the new routes with the
    old credentials (which they handle), never the reverse. The other configs of that push
    still go first: a route it makes name a new one is served as soon as it arrives. A
    switch turning off keeps the usual order: the old routes handle the new configs. Envoy
    applies a stream's responses in order, so sending one before the other is enough."""
    if running is None or not snap.route_switches - running:
        return USUAL
    if not snap.switched:  # not said which: all of them after the routes (fails closed)
        return CONFIGS_LAST
    held = snap.switched
    return (*((t, held if t == EXTENSION else _NONE) for t in PUSH_ORDER), (EXTENSION, _NONE))


def routes_wait_for_configs(reported: frozenset[str] | None, snap: Snapshot) -> bool:
    """Whether a proxy's first route request on a new stream is answered only once its
    extension configs were: its routes carry a switch ``snap`` turns off (the route version
    it reports says which, ``guard.version_switches``), so, as in ``push_order``, the
    configs go first. A reconnecting Envoy asks for its routes before its extension configs,
    so answering in the order asked would give it the new routes while it still runs the
    old credentials: the last expiring key revoked while no controller ran, and for that
    moment the routes forward "<consumer> <expiry>" unchecked. A switch turning on needs
    nothing: the routes go first as asked."""
    return reported is not None and bool(reported - snap.route_switches)


def resource_fragment(type_url: str, value: bytes) -> bytes:
    """DiscoveryResponse.resources (2) holding one Any {type_url (1), value (2)}."""
    return wire.field(2, wire.field(1, type_url.encode()) + wire.field(2, value))


class FragmentCache:
    """Serialised fragments per resource, reused while the message object is unchanged."""

    def __init__(self) -> None:
        self._by_key: dict[tuple[str, str, str], tuple[Message | Encoded, bytes]] = {}

    def fragment(self, gateway: str, type_url: str, name: str, message: Message | Encoded) -> bytes:
        key = (gateway, type_url, name)
        hit = self._by_key.get(key)
        if hit is not None and hit[0] is message:
            return hit[1]
        if isinstance(message, Encoded):
            value = message.data
        else:
            value = message.SerializeToString(deterministic=True)
        data = resource_fragment(type_url, value)
        if hit is not None and hit[1] == data:
            # a new message with the same content (a filter config built again): keep the
            # bytes the streams have, which they compare by identity, so it is not resent
            data = hit[1]
        self._by_key[key] = (message, data)
        return data

    def prune(self, gateway: str, type_url: str, names: Iterable[str]) -> None:
        keep = set(names)
        for key in [k for k in self._by_key if k[:2] == (gateway, type_url) and k[2] not in keep]:
            del self._by_key[key]


def _database_of(version: str) -> str:
    parsed = parse_version(version)
    return (parsed[0] or "") if parsed else ""


#: names the bootstrap or the server itself gives, per type: no snapshot may carry them
SERVER_NAMES = {
    CLUSTER: frozenset({XDS_CLUSTER, REPLICAS_CLUSTER}),
    ENDPOINT: frozenset({REPLICAS_ASSIGNMENT}),
}


def _refs(sources: Iterable[tuple[str, str]]) -> str:
    return ", ".join(f"{kind} {name!r}" for kind, name in sources) or "the gateway"


def _uniqueness_errors(resources: Resources) -> list[str]:
    """Resources that would replace one another (or a resource of the bootstrap or the
    server) in Envoy: each name is used once per type."""
    out = []
    for type_url, name, sources in resources.duplicates:
        first = resources.sources.get((type_url, name), ())
        out.append(
            f"two {type_url.rsplit('.', 1)[-1]} resources are named {name!r} "
            f"(from {_refs(first)} and from {_refs(sources)})"
        )
    for type_url, names in SERVER_NAMES.items():
        for name in sorted(names & resources.by_type.get(type_url, {}).keys()):
            out.append(
                f"{type_url.rsplit('.', 1)[-1]} {name!r} (from "
                f"{_refs(resources.sources.get((type_url, name), ()))}) has a name reserved "
                "for the bootstrap or the controller"
            )
    return out


def _consistency_errors(resources: Resources) -> list[str]:
    present = {(t, n) for t, items in resources.by_type.items() for n in items}
    out = []
    for (type_url, name), needs in resources.needs.items():
        for need in needs:
            if need not in present:
                out.append(
                    f"{type_url.rsplit('.', 1)[-1]} {name!r} needs "
                    f"{need[0].rsplit('.', 1)[-1]} {need[1]!r}, which is missing"
                )
    return out


def build_snapshot(
    gateway: str,
    revision: int,
    resources: Resources,
    previous: Snapshot | None,
    fragments: FragmentCache,
    database_id: str = "",
) -> Snapshot:
    """Serialise, check consistency, and keep the previous version of unchanged types.

    Versions name the revision and the database (see ``guard.py``), so a proxy's reported
    version says which policy it runs."""
    problems = _uniqueness_errors(resources)
    if problems:
        raise TranslationError(f"gateway {gateway!r}: conflicting names: {problems[0]}")
    problems = _consistency_errors(resources)
    if problems:
        raise TranslationError(f"gateway {gateway!r}: inconsistent configuration: {problems[0]}")
    types: dict[str, TypeSnapshot] = {}
    changed = False
    for type_url in PUSH_ORDER:
        items = resources.by_type.get(type_url, {})
        frags = {
            name: fragments.fragment(gateway, type_url, name, msg) for name, msg in items.items()
        }
        if previous is not None and len(previous.types[type_url].fragments) > len(frags):
            fragments.prune(gateway, type_url, frags)
        late = frozenset(n for t, n in resources.late if t == type_url)
        old = previous.types.get(type_url) if previous else None
        marked = type_url == ROUTE
        if (
            old is not None
            and old.fragments == frags
            and old.late == late
            and _database_of(old.version) == database_id
            and (not marked or version_switches(old.version) == resources.route_switches)
        ):
            types[type_url] = old
            continue
        changed = True
        digest = hashlib.blake2b(digest_size=6)
        for name in sorted(frags):
            digest.update(name.encode())
            digest.update(frags[name])
        version = type_version(revision, database_id, digest.hexdigest())
        if marked:
            version = mark_switches(version, resources.route_switches)
        types[type_url] = TypeSnapshot(version, frags, late)
    changed_revision = revision if changed or previous is None else previous.changed_revision
    return Snapshot(
        gateway,
        revision,
        changed_revision,
        types,
        resources.sources,
        resources.divides_by_replicas,
        resources.route_switches,
        resources.switched,
    )

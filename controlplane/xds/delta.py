"""Incremental ADS (delta xDS) over grpc.aio, beside the state-of-the-world stream.

An Envoy whose bootstrap says ``api_type: DELTA_GRPC`` opens
``DeltaAggregatedResources`` instead of ``StreamAggregatedResources``. The stream reads the
same :class:`~controlplane.xds.snapshot.Snapshot` of its gateway as a SotW stream and
sends, per resource type, only the resources whose content differs from what the Envoy
has, and the names of those it has that are gone (``removed_resources``). A route change
therefore sends one RouteConfiguration, whatever the size of the gateway.

Per-resource versions are ``<revision>-<database id>-<digest of the resource>``: the digest
says whether the Envoy's copy is current (an Envoy reconnecting with
``initial_resource_versions`` gets only what changed, also from a restarted controller,
whose serialisation is deterministic), the revision and database let the rollback guard
(``guard.py``) hold a proxy that runs newer policy than this controller has.

Ordering is that of the SotW stream (docs/decisions/0050): CDS, the endpoints of new or
changed EDS clusters right after it, ECDS, SDS, LDS, SRDS, RDS; resources that only a
draining listener uses in a response of their own, at most every ``LATE_INTERVAL``;
clusters the new configuration drops are removed in a last CDS response, after the routes
moved off them. Status (ACK, NACK, in sync at revision R) goes to the same recorder.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from envoy.service.discovery.v3 import discovery_pb2

from ..translate import CLUSTER, ENDPOINT, EXTENSION, ROUTE, wire
from .admission import InitialSyncGate
from .cache import SnapshotCache
from .guard import mark_switches, parse_version, rollback_reason, type_version, version_switches
from .metrics import XdsMetrics
from .server import LATE_INTERVAL, Admit, _Stream
from .snapshot import (
    OPTIONAL_TYPES,
    PUSH_ORDER,
    WILDCARD_TYPES,
    Snapshot,
    TypeSnapshot,
    push_order,
)
from .status import StatusRecorder

__all__ = ["DeltaEncoder", "DeltaStream"]

log = logging.getLogger(__name__)

#: the explicit wildcard subscription of the delta protocol
WILDCARD = "*"
#: responses per type awaiting an answer that a stream remembers
PENDING_KEPT = 64


def _digest(fragment: bytes) -> str:
    return hashlib.blake2b(fragment, digest_size=8).hexdigest()


def _digest_of(version: str) -> str:
    """The content part of a resource version this controller gave (else the whole)."""
    return version.split("+", 1)[0].rsplit("-", 1)[-1]


class DeltaEncoder:
    """``DeltaDiscoveryResponse.resources`` entries, encoded once per resource content and
    shared by every delta stream of the controller (a push to N proxies encodes each
    changed resource once). Each entry reuses the snapshot's SotW fragment: the ``Any``
    is field 2 both of ``DiscoveryResponse`` and of ``Resource``."""

    def __init__(self) -> None:
        #: (gateway, type, name) -> (snapshot fragment, digest, version, encoded entry)
        self._entries: dict[tuple[str, str, str], tuple[bytes, str, str, bytes]] = {}

    def entry(self, gateway: str, type_url: str, ts: TypeSnapshot, name: str) -> tuple[str, bytes]:
        """(digest, encoded ``resources`` field) of resource ``name`` as ``ts`` has it."""
        fragment = ts.fragments[name]
        key = (gateway, type_url, name)
        hit = self._entries.get(key)
        if hit is not None and hit[0] is fragment:
            return hit[1], hit[3]
        digest = _digest(fragment)
        # a route's version also says which switches the gateway's routes carry, as the
        # SotW version does (``guard.mark_switches``): a reconnecting Envoy reports it
        switches = version_switches(ts.version) if type_url == ROUTE else None
        if hit is not None and hit[1] == digest and version_switches(hit[2]) == switches:
            version = hit[2]  # same content rebuilt: same version, same entry
        else:
            parsed = parse_version(ts.version)
            db, revision = (parsed[0] or "", parsed[1]) if parsed else ("", 0)
            version = type_version(revision, db, digest)
            if switches is not None:
                version = mark_switches(version, switches)
        data = wire.field(
            2, wire.field(3, name.encode()) + wire.field(1, version.encode()) + fragment
        )
        self._entries[key] = (fragment, digest, version, data)
        return digest, data

    def digest(self, gateway: str, type_url: str, ts: TypeSnapshot, name: str) -> str:
        return self.entry(gateway, type_url, ts, name)[0]

    def forget(self, gateway: str, type_url: str, keep: Iterable[str]) -> None:
        """Drop the entries of resources ``gateway`` no longer has (bounded memory)."""
        names = set(keep)
        for key in [k for k in self._entries if k[:2] == (gateway, type_url) and k[2] not in names]:
            del self._entries[key]


@dataclass
class DeltaTypeState:
    """What one delta stream's Envoy subscribed to and has, for one resource type."""

    subscribed: bool = False
    #: every resource of the type (an empty first request or ``*``)
    wildcard: bool = False
    names: set[str] = field(default_factory=set)
    #: name -> digest of the content the Envoy has or was sent (never resend it)
    have: dict[str, str] = field(default_factory=dict)
    #: name -> digest of the content the Envoy accepted
    acked: dict[str, str] = field(default_factory=dict)
    #: nonce -> (sent: name -> digest, removed names, system version) awaiting ACK/NACK
    pending: dict[str, tuple[dict[str, str], list[str], str]] = field(default_factory=dict)
    #: names sent before the Envoy subscribed to them (the endpoints of a cluster just
    #: added or changed): its subscription then needs no answer
    ahead: set[str] = field(default_factory=set)
    sent_at: float = 0.0
    late_at: float = 0.0
    late_waiting: bool = False
    #: the newest resource version the Envoy reported having (rollback guard)
    running: str = ""
    #: the TypeSnapshot whose every resource the Envoy was sent since its subscription
    #: last changed: a push of an unchanged type then costs nothing
    synced_to: TypeSnapshot | None = None
    #: the same for additions and changes only (removals held back, ADR 0050)
    added_to: TypeSnapshot | None = None
    #: the TypeSnapshot whose every wanted resource the Envoy accepted (sync check)
    acked_to: TypeSnapshot | None = None
    #: the nonce of the newest response of this type
    last_nonce: str = ""


class DeltaStream(_Stream):
    """The state machine of one Envoy's delta ADS stream. Opening, closing, admission
    through the gate and the hold's bookkeeping are the SotW stream's (``_Stream``)."""

    _request_type = discovery_pb2.DeltaDiscoveryRequest
    _kind = "delta stream"

    def __init__(
        self,
        cache: SnapshotCache,
        recorder: StatusRecorder,
        encoder: DeltaEncoder,
        write: object,
        peer: str,
        metrics: XdsMetrics | None = None,
        admit: Admit | None = None,
        gate: InitialSyncGate | None = None,
    ) -> None:
        super().__init__(cache, recorder, write, peer, metrics, admit, gate)
        self.encoder = encoder
        self.types = {t: DeltaTypeState() for t in PUSH_ORDER}

    @property
    def gateway(self) -> str:
        assert self.proxy is not None
        return self.proxy.gateway

    async def _on_late(self, type_url: str) -> None:
        self.types[type_url].late_waiting = False
        await self._on_snapshot()

    # -- requests -------------------------------------------------------------------------

    async def _on_request(self, req: discovery_pb2.DeltaDiscoveryRequest) -> None:
        st = self.types.get(req.type_url)
        if st is None:
            log.debug("ignoring delta request for unsupported type %s", req.type_url)
            return
        first = not st.subscribed
        st.subscribed = True
        added = set(req.resource_names_subscribe)
        if added or req.resource_names_unsubscribe:
            st.synced_to = st.added_to = st.acked_to = None
        if first:
            # the legacy wildcard: a first request naming nothing, for the types Envoy
            # subscribes to as a whole (listeners, clusters, scopes)
            st.wildcard = not added and req.type_url in WILDCARD_TYPES
            for name, version in req.initial_resource_versions.items():
                st.have[name] = st.acked[name] = _digest_of(version)
                if parse_version(version) and _newer(version, st.running):
                    st.running = version
        if WILDCARD in added:
            st.wildcard = True
        if WILDCARD in req.resource_names_unsubscribe:
            st.wildcard = False
        resubscribed = False
        for name in added - {WILDCARD}:
            st.names.add(name)
            if name in st.ahead:
                st.ahead.discard(name)  # sent ahead of this subscription: Envoy has it
            elif not first or name not in req.initial_resource_versions:
                # a (re)subscription asks for the resource, even unchanged: a cluster
                # Envoy rebuilt warms until its endpoints come again
                st.have.pop(name, None)
                resubscribed = True
        for name in req.resource_names_unsubscribe:
            st.names.discard(name)
            if name in st.ahead:
                # sent ahead after Envoy dropped it (a cluster removed and added again in
                # quick succession): Envoy has it, and its subscription follows
                continue
            if not st.wildcard:
                st.have.pop(name, None)
                st.acked.pop(name, None)
        if self.cache.withheld(self.gateway):
            self._first_sync_over()  # nothing to send until it builds: no slot needed
            return  # answered once the gateway's configuration builds (_on_snapshot)
        snap = self.cache.get(self.gateway)
        if req.response_nonce:
            pending = st.pending.pop(req.response_nonce, None)
            if pending is not None:
                if req.HasField("error_detail"):
                    self._on_nack(req, pending, snap)
                else:
                    self._on_ack(req.type_url, st, pending)
                self._update_sync(snap)
        if self._held():
            return
        if req.type_url == ROUTE and self._routes_wait(req, snap):
            pass  # answered after the extension configs (_answer_owed_routes)
        elif first or resubscribed or added or req.resource_names_unsubscribe:
            before = dict(self.types[CLUSTER].have)
            await self._send(req.type_url, snap, force=first)
            if req.type_url == EXTENSION:
                await self._answer_owed_routes()
            if req.type_url == CLUSTER and self.types[ENDPOINT].subscribed:
                # a reconnect's CDS answer adding a cluster: its endpoints before the routes
                await self._send_endpoints_ahead(snap, before)
        self._record_push(snap.revision)

    @staticmethod
    def _reported(req: discovery_pb2.DeltaDiscoveryRequest) -> frozenset[str] | None:
        """The switches the routes a reconnecting Envoy has carry (None: not said)."""
        found = [version_switches(v) for v in req.initial_resource_versions.values()]
        said = [s for s in found if s is not None]
        return frozenset().union(*said) if said else None

    def _answered(self, type_url: str) -> bool:
        return bool(self.types[type_url].last_nonce)

    def _on_ack(
        self, type_url: str, st: DeltaTypeState, pending: tuple[dict[str, str], list[str], str]
    ) -> None:
        assert self.proxy is not None
        sent, removed, _version = pending
        if self.metrics is not None and st.sent_at:
            self.metrics.acked(self.gateway, type_url, time.monotonic() - st.sent_at)
            st.sent_at = 0.0
        st.acked.update(sent)
        for name in removed:
            st.acked.pop(name, None)
        st.acked_to = None
        self.proxy.acked_at = time.time()
        self.recorder.changed(self.proxy)

    def _on_nack(
        self,
        req: discovery_pb2.DeltaDiscoveryRequest,
        pending: tuple[dict[str, str], list[str], str],
        snap: Snapshot,
    ) -> None:
        """Record the rejection; resend nothing (Envoy keeps what it ran, as with SotW)."""
        p = self.proxy
        assert p is not None
        sent, _removed, version = pending
        candidates: list[tuple[str, str]] = []
        for name in sent:
            candidates.extend(snap.sources.get((req.type_url, name), []))
        parsed = parse_version(version)
        p.nack_revision = parsed[1] if parsed else 0
        p.nack_type = req.type_url.rsplit(".", 1)[-1]
        p.nack_error = req.error_detail.message
        p.nack_candidates = sorted(set(candidates))
        p.nack_objects = []
        self.types[req.type_url].sent_at = 0.0
        if self.metrics is not None:
            self.metrics.nacked(p.gateway, req.type_url)
        self.recorder.event("nack", p, p.nack_revision, f"{p.nack_type}: {p.nack_error}")
        log.warning(
            "node %s rejected %s version %s: %s",
            p.node_id,
            p.nack_type,
            version,
            req.error_detail.message,
        )
        self.recorder.changed(p)
        self._first_sync_over()  # it will not run this configuration: the next stream's turn

    # -- pushes ---------------------------------------------------------------------------

    async def _on_snapshot(self) -> None:
        if self.cache.withheld(self.gateway) or self._held():
            return
        snap = self.cache.get(self.gateway)
        cds = self.types[CLUSTER]
        for type_url, later in push_order(snap, self._route_switches):
            if not self.types[type_url].subscribed or (type_url == ROUTE and self._routes_owed):
                continue
            if type_url == CLUSTER:
                # make-before-break: clusters the new configuration drops stay until the
                # routes moved off them; removed in the last response (below)
                before, nonce = dict(cds.have), cds.last_nonce
                await self._send(CLUSTER, snap, force=False, remove=False)
                if self.types[ENDPOINT].subscribed and cds.last_nonce != nonce:
                    await self._send_endpoints_ahead(snap, before)
            else:
                await self._send(type_url, snap, force=False, later=later)
        if cds.subscribed:
            await self._send(CLUSTER, snap, force=False)
        self._record_push(snap.revision)
        self._update_sync(snap)

    async def _send_endpoints_ahead(self, snap: Snapshot, before: dict[str, str]) -> None:
        """The endpoints of the EDS clusters the CDS response just added or changed, before
        the routes (docs/decisions/0050): a route to a cluster still warming gets 503, and
        a changed cluster warms until its endpoints come again. Envoy applies a stream's
        responses in order and watches the new cluster's endpoints once it applied CDS."""
        have = self.types[CLUSTER].have
        eds = self.types[ENDPOINT]
        ts = snap.types[ENDPOINT]
        names = sorted(n for n in have if n in ts.fragments and before.get(n) != have[n])
        if not names:
            return
        eds.synced_to = eds.added_to = eds.acked_to = None
        for name in names:
            eds.have.pop(name, None)
            eds.ahead.add(name)
            eds.names.add(name)
        await self._respond(ENDPOINT, snap, names, [])

    def _wanted(self, type_url: str, snap: Snapshot) -> set[str]:
        st = self.types[type_url]
        fragments = snap.types[type_url].fragments
        if st.wildcard:
            return set(fragments) | (st.names & fragments.keys())
        return st.names & fragments.keys()

    async def _send(
        self,
        type_url: str,
        snap: Snapshot,
        *,
        force: bool,
        remove: bool = True,
        later: frozenset[str] = frozenset(),
    ) -> None:
        """What the Envoy lacks of this type (changed or new), and, with ``remove``, the
        names of a wildcard subscription it has that are gone; ``force``: a response even
        when that is nothing (the answer to a first subscription, which Envoy waits for
        before it starts); ``later``: names a later step of the same push sends."""
        st = self.types[type_url]
        ts = snap.types[type_url]
        if type_url == ROUTE:
            self._route_switches = snap.route_switches
        if not force and (st.synced_to is ts or (not remove and st.added_to is ts)):
            return
        wanted = self._wanted(type_url, snap) - later
        changed = sorted(
            n
            for n in wanted
            if st.have.get(n) != self.encoder.digest(self.gateway, type_url, ts, n)
        )
        # Removals of a wildcard subscription only: Envoy drops a named resource itself when
        # what named it goes (a cluster's endpoints with the cluster, a listener's routes
        # with the listener), so an earlier removal would only break what still uses it
        removed = sorted(n for n in st.have if n not in ts.fragments)
        if not remove or not st.wildcard:
            removed = []
        early = [n for n in changed if n not in ts.late]
        late = [n for n in changed if n in ts.late]
        if early or removed or (force and not late):
            await self._respond(type_url, snap, early, removed)
        if not late:
            if not later:  # else the names left to a later step are still owed
                st.added_to = ts
                st.synced_to = ts if remove else None
            return
        wait = st.late_at + LATE_INTERVAL - time.monotonic()
        if force or wait <= 0:
            await self._respond(type_url, snap, late, [])
            st.late_at = time.monotonic()
        elif not st.late_waiting:
            st.late_waiting = True
            self._later(wait, type_url)

    async def _respond(
        self, type_url: str, snap: Snapshot, names: list[str], removed: list[str]
    ) -> None:
        """One DeltaDiscoveryResponse: system_version_info (1), resources (2), type_url (4),
        nonce (5), removed_resources (6)."""
        st = self.types[type_url]
        ts = snap.types[type_url]
        sent: dict[str, str] = {}
        parts = []
        for name in names:
            digest, entry = self.encoder.entry(self.gateway, type_url, ts, name)
            sent[name] = digest
            parts.append(entry)
        nonce = str(next(self._nonces))
        parts.append(wire.field(1, ts.version.encode()))
        parts.append(wire.field(4, type_url.encode()))
        parts.append(wire.field(5, nonce.encode()))
        parts.extend(wire.field(6, name.encode()) for name in removed)
        log.debug("delta %s: %d resource(s), removed %s", type_url, len(names), removed)
        await self._write(b"".join(parts))  # type: ignore[operator]
        st.pending[nonce] = (sent, removed, ts.version)
        st.last_nonce = nonce
        if len(st.pending) > PENDING_KEPT:  # an Envoy answers each; bound what one skips
            del st.pending[next(iter(st.pending))]
        st.have.update(sent)
        for name in removed:
            st.have.pop(name, None)
        st.sent_at = time.monotonic()
        if self.metrics is not None:
            self.metrics.pushed(self.gateway, type_url)
        self._pushed.add(type_url.rsplit(".", 1)[-1])

    def _update_sync(self, snap: Snapshot) -> None:
        """A proxy runs revision R when it accepted every resource of R it subscribes to
        (resources only a draining listener uses aside, as with SotW) and holds none that
        R lacks."""
        assert self.proxy is not None
        for type_url, st in self.types.items():
            ts = snap.types[type_url]
            if type_url in OPTIONAL_TYPES and (not st.subscribed or not ts.fragments):
                continue
            if not st.subscribed:
                if type_url in WILDCARD_TYPES:
                    return
                continue
            if st.acked_to is ts:
                continue  # checked since, and nothing was accepted or (un)subscribed
            for name in self._wanted(type_url, snap) - ts.late:
                if st.acked.get(name) != self.encoder.digest(self.gateway, type_url, ts, name):
                    return
            if st.wildcard and any(n not in ts.fragments for n in st.acked):
                return
            st.acked_to = ts
        self._in_sync(snap.revision)

    def _held(self) -> bool:
        """Whether answering would roll the proxy back: the newest resource version it
        reported on connecting names a newer revision (or another database) than this
        controller serves. The same rule, events and override as the SotW stream."""
        p = self.proxy
        ident = self.cache.identity
        if p is None or ident is None:
            return False
        reason = None
        for type_url, st in self.types.items():
            why = rollback_reason(st.running, ident.database_id, ident.revision, ident.lineage)
            if why is not None:
                reason = f"{type_url.rsplit('.', 1)[-1]}: {why}"
                break
        return self._hold(reason)

    def _hold_released(self) -> None:
        for st in self.types.values():
            st.running = ""  # served from now on: what it runs comes from here


def _newer(version: str, than: str) -> bool:
    mine, theirs = parse_version(version), parse_version(than)
    return theirs is None or (mine is not None and mine[1] > theirs[1])

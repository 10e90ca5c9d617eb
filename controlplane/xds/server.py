"""ADS (state of the world) over grpc.aio.

One :class:`AdsStream` per Envoy connection. It knows nothing about policy: it reads the
newest :class:`Snapshot` of its gateway from the cache and sends what the Envoy asked for
and has not got yet. Responses are pre-serialised bytes (see ``snapshot.py``), so the gRPC
method is registered with an identity serializer.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.service.discovery.v3 import discovery_pb2

from ..translate import CLUSTER, ENDPOINT, EXTENSION, ROUTE
from .admission import InitialSyncGate, Slot
from .cache import CHANGED, SnapshotCache
from .guard import parse_version, rollback_reason, version_switches
from .metrics import XdsMetrics
from .mtls import StreamAuthorizer, client_identity
from .snapshot import (
    OPTIONAL_TYPES,
    PUSH_ORDER,
    WILDCARD_TYPES,
    Snapshot,
    TypeSnapshot,
    push_order,
    routes_wait_for_configs,
)
from .status import ProxyState, StatusRecorder

__all__ = ["ADS_SERVICE", "AdsServer", "AdsStream", "Refused"]

log = logging.getLogger(__name__)

ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
_CLOSED = object()
#: (gateway, node id) -> None when the stream may have them, else the reason it may not
Admit = Callable[[str, str], str | None]
_LATE = object()
#: at most one response per type per this many seconds carries resources only a listener
#: being drained uses (ADR 0017): Envoy rebuilds them on its main thread, ahead of changes
#: that serving listeners wait for. A proxy is in sync without them: that listener's
#: connections close after their next response (run-envoy.sh: --drain-strategy immediate).
LATE_INTERVAL = 1.0
#: seconds a reconnecting proxy's first routes wait for its extension configs to be asked
#: for and answered (``routes_wait_for_configs``); Envoy asks for both at once, so this
#: only bounds a proxy that never asks for them
ROUTES_WAIT = 1.0
#: the ``_later`` key that ends that wait
_ROUTES_DUE = "routes-due"


@dataclass
class TypeState:
    """What one stream has asked for and been sent, for one resource type."""

    subscribed: bool = False
    names: frozenset[str] = frozenset()
    nonce: str = ""
    #: newest content sent per resource, whatever Envoy made of it (never resend it)
    sent_version: str = ""
    sent: dict[str, bytes] = field(default_factory=dict)
    #: content of the response awaiting ACK/NACK
    pending_version: str = ""
    pending: dict[str, bytes] = field(default_factory=dict)
    #: content Envoy accepted
    acked_version: str = ""
    acked: dict[str, bytes] = field(default_factory=dict)
    #: when the newest response was sent (monotonic), for the push latency metric
    sent_at: float = 0.0
    #: when resources only a draining listener uses were last sent; whether more wait
    late_at: float = 0.0
    late_waiting: bool = False
    #: the version Envoy reports running (version_info of its newest request)
    running: str = ""
    #: the rollback check of ``running`` against an identity, kept until either changes
    #: (every request and push checks all types; most of them run what they ran before)
    checked: tuple[str, object] | None = None
    refusal: str | None = None


class Refused(Exception):
    """The stream's certificate does not permit the gateway or node id its first request
    claims; nothing was sent, subscribed or recorded for it."""


class _Stream:
    """What a state-of-the-world stream (:class:`AdsStream`) and a delta one
    (``delta.py``) share: the opening (certificate check, status, subscription, admission
    through the gate), the loop over requests and snapshot changes, the closing, the
    rollback hold's bookkeeping and the end of the first sync. A subclass sets
    ``_request_type`` and implements ``_on_request``, ``_on_snapshot`` and ``_on_late``."""

    #: the protocol's request message; the name of the stream in the log
    _request_type: type[Any] = discovery_pb2.DiscoveryRequest
    _kind = "stream"

    def __init__(
        self,
        cache: SnapshotCache,
        recorder: StatusRecorder,
        write: object,
        peer: str,
        metrics: XdsMetrics | None = None,
        admit: Admit | None = None,
        gate: InitialSyncGate | None = None,
    ) -> None:
        self.cache = cache
        self.recorder = recorder
        self._write = write
        self.peer = peer
        self.metrics = metrics
        self._admit = admit
        self._nonces = itertools.count(1)
        self.proxy: ProxyState | None = None
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        #: resource types sent since the last push event was recorded
        self._pushed: set[str] = set()
        #: a rollback was let through (``--allow-rollback``) and logged
        self._overridden = False
        #: bounds the first syncs in flight (admission.py); the slot while this one runs
        self._gate = gate
        self._slot: Slot | None = None
        #: the switches of the routes last sent (``Snapshot.route_switches``); None: none
        self._route_switches: frozenset[str] | None = None
        #: the first routes asked for on this stream wait for the extension configs' answer
        self._routes_owed = False
        self._start()

    def _start(self) -> None:
        """The protocol's own per-stream state (a subclass's, set up last)."""

    async def run(self, requests: AsyncIterator[Any]) -> None:
        queue: asyncio.Queue[object] = asyncio.Queue()
        self._queue = queue
        reader = asyncio.create_task(_pump(requests, queue))
        sub = None
        try:
            first = await queue.get()
            if not isinstance(first, self._request_type):
                return  # closed before its first request
            node = first.node
            gateway = node.cluster or "default"
            # Before anything is recorded, subscribed or sent: a stream its certificate does
            # not vouch for is no proxy (no status row, no event, no replica, no NACK).
            refusal = None if self._admit is None else self._admit(gateway, node.id)
            if refusal is not None:
                raise Refused(refusal)
            version = node.user_agent_build_version.version
            self.proxy = ProxyState(
                node_id=node.id or self.peer,
                gateway=gateway,
                address=self.peer,
                envoy_version=".".join(
                    str(x) for x in (version.major_number, version.minor_number, version.patch)
                ),
            )
            log.info("%s open: node %s gateway %s from %s", self._kind, node.id, gateway, self.peer)
            self.recorder.event("connect", self.proxy, None, f"Envoy {self.proxy.envoy_version}")
            self.recorder.changed(self.proxy)
            # Never answer before the full state is loaded: an empty answer would roll back.
            await self.cache.ready.wait()
            # subscribed first: a proxy waiting its turn counts as a replica (a limit the
            # replicas divide is not split among only the proxies synced so far)
            sub = self.cache.subscribe(gateway, queue, node.id)
            if self._gate is not None:  # in turn when a fleet reconnects at once
                self._slot = await self._gate.admit()
            await self._on_request(first)
            while True:
                item = await queue.get()
                if item is _CLOSED:
                    return
                if item is CHANGED:
                    sub.taken()
                    await self._on_snapshot()
                    self.cache.pushed(sub)
                elif isinstance(item, tuple) and item[0] is _LATE:
                    if item[1] == _ROUTES_DUE:
                        await self._answer_owed_routes()
                    else:
                        await self._on_late(item[1])
                elif isinstance(item, self._request_type):
                    await self._on_request(item)
        finally:
            self._first_sync_over()
            reader.cancel()
            if sub is not None:
                self.cache.unsubscribe(sub)
            if self.proxy is not None:
                self.proxy.connected = False
                self.recorder.event("disconnect", self.proxy, None, "stream closed")
                self.recorder.changed(self.proxy)
                log.info("%s closed: node %s", self._kind, self.proxy.node_id)

    async def _on_request(self, req: Any) -> None:
        raise NotImplementedError

    async def _on_snapshot(self) -> None:
        raise NotImplementedError

    async def _on_late(self, type_url: str) -> None:
        """Resources only a draining listener uses are due (``LATE_INTERVAL``)."""
        raise NotImplementedError

    async def _send(self, type_url: str, snap: Snapshot, *, force: bool) -> None:
        raise NotImplementedError

    def _answered(self, type_url: str) -> bool:
        """Whether this stream sent a response of this type."""
        raise NotImplementedError

    @staticmethod
    def _reported(req: Any) -> frozenset[str] | None:
        """The switches a route request says the proxy's routes carry (None: not said)."""
        raise NotImplementedError

    def _routes_wait(self, req: Any, snap: Snapshot) -> bool:
        """Whether the routes this request asks for wait for the extension configs (a
        reconnecting proxy whose routes carry a switch ``snap`` turns off), the wait owed
        and bounded by ``ROUTES_WAIT``. Only before anything was sent on this stream: a
        push keeps the order of ``push_order`` by itself, and an ACK costs no parsing."""
        if self._routes_owed:
            return True
        if self._route_switches is not None or self._answered(EXTENSION):
            return False
        if not routes_wait_for_configs(self._reported(req), snap):
            return False
        self._routes_owed = True
        self._later(ROUTES_WAIT, _ROUTES_DUE)
        return True

    async def _answer_owed_routes(self) -> None:
        """The routes that waited for the extension configs (``_routes_wait``): due now,
        the configs answered or the wait over."""
        if not self._routes_owed:
            return
        self._routes_owed = False
        gateway = self.proxy.gateway  # type: ignore[union-attr]
        if self.cache.withheld(gateway) or self._held():
            return
        snap = self.cache.get(gateway)
        await self._send(ROUTE, snap, force=True)
        self._record_push(snap.revision)

    def _held(self) -> bool:
        raise NotImplementedError

    def _later(self, wait: float, type_url: str) -> None:
        """Have ``_on_late(type_url)`` called in ``wait`` seconds, in the stream's turn
        (``_ROUTES_DUE``: ``_answer_owed_routes``)."""
        asyncio.get_running_loop().call_later(wait, self._queue.put_nowait, (_LATE, type_url))

    def _hold(self, reason: str | None) -> bool:
        """Whether the stream holds (sends nothing) for rollback ``reason`` (None: none):
        ``--allow-rollback`` overrides it (logged once); a new hold is logged, recorded and
        counted once, its end once too (``_hold_released``); a held proxy gives its
        admission slot back, as it will not sync."""
        p = self.proxy
        ident = self.cache.identity
        assert p is not None and ident is not None
        if reason is not None and self.cache.allow_rollback:
            if not self._overridden:
                self._overridden = True
                log.warning("node %s: serving it anyway (--allow-rollback): %s", p.node_id, reason)
                self.recorder.event("rollback", p, ident.revision, reason)
            reason = None
        if reason is not None:
            self._first_sync_over()  # held: nothing is sent, the next stream's turn
        if reason == p.hold:
            return reason is not None
        if reason is not None and p.hold is None:  # a new hold: said once, counted once
            log.error("node %s gateway %s held, nothing sent: %s", p.node_id, p.gateway, reason)
            self.recorder.event("hold", p, ident.revision, reason)
            if self.metrics is not None:
                self.metrics.held(p.gateway)
        elif reason is None:
            log.warning("node %s: hold released at %s", p.node_id, ident.label())
            self.recorder.event("release", p, ident.revision, "hold released")
            self._hold_released()
        p.hold = reason
        self.recorder.changed(p)
        return reason is not None

    def _hold_released(self) -> None:
        """The proxy is served again after a hold."""

    def _record_push(self, revision: int) -> None:
        if self._pushed and self.proxy is not None:
            detail = ", ".join(sorted(self._pushed))
            self.recorder.event("push", self.proxy, revision, detail)
            self._pushed = set()

    def _first_sync_over(self) -> None:
        """The proxy runs its first configuration (or will not): its admission slot goes
        to the next stream waiting. Idempotent."""
        if self._slot is not None:
            self._slot.release()
            self._slot = None

    def _in_sync(self, revision: int) -> None:
        """The proxy accepted everything of ``revision`` it uses."""
        assert self.proxy is not None
        self._first_sync_over()
        if self.proxy.acked_revision != revision:
            self.proxy.acked_revision = revision
            self.recorder.event("ack", self.proxy, revision, "in sync")
            self.recorder.changed(self.proxy)


class AdsStream(_Stream):
    """The state machine of one Envoy's ADS stream."""

    def _start(self) -> None:
        self.types = {t: TypeState() for t in PUSH_ORDER}
        self._cds_since_eds = False

    async def _on_late(self, type_url: str) -> None:
        self.types[type_url].late_waiting = False
        await self._on_snapshot()

    # -- requests -------------------------------------------------------------------------

    async def _on_request(self, req: discovery_pb2.DiscoveryRequest) -> None:
        st = self.types.get(req.type_url)
        if st is None:
            log.debug("ignoring request for unsupported type %s", req.type_url)
            return
        if req.response_nonce and req.response_nonce != st.nonce:
            return  # answers a response that has since been superseded
        st.running = req.version_info
        names = frozenset() if req.type_url in WILDCARD_TYPES else frozenset(req.resource_names)
        names_changed = names != st.names
        for gone in st.names - names:
            # no longer asked for: Envoy dropped it (e.g. the cluster left CDS); asked for
            # again later it is sent again, unchanged or not (a re-added EDS cluster warms
            # until its endpoints come)
            st.sent.pop(gone, None)
            st.acked.pop(gone, None)
        st.names = names
        first = not st.subscribed
        st.subscribed = True
        if self.cache.withheld(self.proxy.gateway):  # type: ignore[union-attr]
            self._first_sync_over()  # nothing to send until it builds: no slot needed
            return  # answered once the gateway's configuration builds (_on_snapshot)
        snap = self.cache.get(self.proxy.gateway)  # type: ignore[union-attr]
        if req.HasField("error_detail"):
            self._on_nack(req, snap)
        elif req.response_nonce:
            if self.metrics is not None and st.sent_at:
                self.metrics.acked(
                    self.proxy.gateway,  # type: ignore[union-attr]
                    req.type_url,
                    time.monotonic() - st.sent_at,
                )
                st.sent_at = 0.0
            self.proxy.acked_at = time.time()  # type: ignore[union-attr]
            self.recorder.changed(self.proxy)  # type: ignore[arg-type]
            st.acked_version = st.pending_version
            if req.type_url in WILDCARD_TYPES:
                st.acked = st.pending
            else:
                st.acked.update(st.pending)
                st.pending = {}
            self._update_sync(snap)
        if self._held():
            return
        if req.type_url == ROUTE and self._routes_wait(req, snap):
            pass  # answered after the extension configs (_answer_owed_routes)
        elif first or not req.response_nonce:
            await self._send(req.type_url, snap, force=True)
            if req.type_url == EXTENSION:
                await self._answer_owed_routes()
        elif req.type_url == ENDPOINT and self._cds_since_eds:
            # A cluster that CDS changed warms until it gets its endpoints again, even when
            # they are unchanged: answer, or Envoy waits for its 15 s fetch timeout.
            self._cds_since_eds = False
            await self._send(ENDPOINT, snap, force=True)
        elif names_changed and not req.HasField("error_detail"):
            await self._send(req.type_url, snap, force=False)
        self._record_push(snap.revision)

    def _on_nack(self, req: discovery_pb2.DiscoveryRequest, snap: Snapshot) -> None:
        assert self.proxy is not None
        st = self.types[req.type_url]
        rejected = list(st.pending)
        candidates: list[tuple[str, str]] = []
        for name in rejected:
            candidates.extend(snap.sources.get((req.type_url, name), []))
        p = self.proxy
        parsed = parse_version(st.pending_version)
        p.nack_revision = parsed[1] if parsed else 0
        p.nack_type = req.type_url.rsplit(".", 1)[-1]
        p.nack_error = req.error_detail.message
        p.nack_candidates = sorted(set(candidates))
        p.nack_objects = []
        st.sent_at = 0.0
        if self.metrics is not None:
            self.metrics.nacked(p.gateway, req.type_url)
        self.recorder.event("nack", p, p.nack_revision, f"{p.nack_type}: {p.nack_error}")
        log.warning(
            "node %s rejected %s version %s: %s",
            p.node_id,
            p.nack_type,
            st.pending_version,
            req.error_detail.message,
        )
        st.pending, st.pending_version = {}, st.acked_version
        self.recorder.changed(p)
        self._first_sync_over()  # it will not run this configuration: the next stream's turn

    # -- pushes ---------------------------------------------------------------------------

    async def _on_snapshot(self) -> None:
        if self.cache.withheld(self.proxy.gateway) or self._held():  # type: ignore[union-attr]
            return
        snap = self.cache.get(self.proxy.gateway)  # type: ignore[union-attr]
        dropped = self._dropped_clusters(snap)
        cds_before = self.types[CLUSTER].sent_version
        for type_url, later in push_order(snap, self._route_switches):
            if not self.types[type_url].subscribed or (type_url == ROUTE and self._routes_owed):
                continue
            if type_url == ENDPOINT and self.types[CLUSTER].sent_version != cds_before:
                await self._send_new_endpoints(snap)  # only after a CDS response of this push
            if type_url == CLUSTER and dropped:
                # make-before-break: clusters the new configuration drops stay until the
                # routes that used them have moved (else those requests get 503 "no
                # cluster" between the two responses); they go in a last CDS response.
                # When dropping is the only change, Envoy already runs the kept set: no
                # response before the routes (one round fewer to every proxy)
                ts = snap.types[CLUSTER]
                kept = {**ts.fragments, **dropped}
                if not self._runs(CLUSTER, kept):
                    keep = TypeSnapshot(f"{ts.version}~keep", kept, ts.late)
                    await self._respond(CLUSTER, keep, None)
            else:
                await self._send(type_url, snap, force=False, later=later)
        if dropped:
            await self._send(CLUSTER, snap, force=False)
        self._record_push(snap.revision)
        self._update_sync(snap)

    async def _send_new_endpoints(self, snap: Snapshot) -> None:
        """The endpoints of the EDS clusters the CDS response just added, sent right after
        it, before the routes. Envoy warms a new cluster until its endpoints come, and a
        route to a warming cluster gets 503 ("no cluster"); Envoy applies a stream's
        responses in order and has its watch on the new cluster once it applied the CDS
        response, so it takes these endpoints before the routes arrive. Waiting for its
        own EDS request instead would cost a round trip to every proxy. A changed cluster
        needs nothing here: Envoy keeps serving the old one while the new one warms."""
        eds = self.types[ENDPOINT]
        fragments = snap.types[ENDPOINT].fragments
        new = {n for n in self.types[CLUSTER].sent if n in fragments and n not in eds.sent}
        if new:
            names = sorted((eds.names & fragments.keys()) | new)
            await self._respond(ENDPOINT, snap.types[ENDPOINT], names)

    def _answered(self, type_url: str) -> bool:
        return bool(self.types[type_url].nonce)

    @staticmethod
    def _reported(req: discovery_pb2.DiscoveryRequest) -> frozenset[str] | None:
        return version_switches(req.version_info)

    def _runs(self, type_url: str, fragments: dict[str, bytes]) -> bool:
        """Whether the last response of this type sent exactly these resources."""
        sent = self.types[type_url].sent
        return sent.keys() == fragments.keys() and all(sent[n] == f for n, f in fragments.items())

    def _dropped_clusters(self, snap: Snapshot) -> dict[str, bytes]:
        """Clusters Envoy was sent that ``snap`` no longer has, when routes change too."""
        cds = self.types[CLUSTER]
        ts = snap.types[CLUSTER]
        if not cds.subscribed or ts.version == cds.sent_version:
            return {}
        return {n: f for n, f in cds.sent.items() if n not in ts.fragments}

    def _held(self) -> bool:
        """Whether answering would roll the proxy back (see ``guard.py``): then the stream
        sends nothing, Envoy keeps what it runs, and status, log and metric say why. The
        hold ends when the controller's database reaches what the proxy runs (or absorbs
        its database by a restore), or at once with ``--allow-rollback``."""
        p = self.proxy
        ident = self.cache.identity
        if p is None or ident is None:
            return False
        reason = None
        for type_url, st in self.types.items():
            checked = st.checked
            if checked is None or checked[1] is not ident or checked[0] != st.running:
                st.checked = (st.running, ident)
                st.refusal = rollback_reason(
                    st.running, ident.database_id, ident.revision, ident.lineage
                )
            reason = st.refusal
            if reason is not None:
                reason = f"{type_url.rsplit('.', 1)[-1]}: {reason}"
                break
        return self._hold(reason)

    async def _send(
        self, type_url: str, snap: Snapshot, *, force: bool, later: frozenset[str] = frozenset()
    ) -> None:
        """What Envoy asked for of this type and lacks (``force``: all of it), but the names
        ``later`` (a later step of the same push sends them: ``push_order``)."""
        st = self.types[type_url]
        ts = snap.types[type_url]
        if type_url == ROUTE:
            self._route_switches = snap.route_switches
        if type_url in WILDCARD_TYPES:
            if not force and ts.version == st.sent_version:
                return
            if not force and type_url in OPTIONAL_TYPES and not ts.fragments:
                return
            await self._respond(type_url, ts, None)
            return
        wanted = sorted(n for n in st.names if n in ts.fragments and n not in later)
        if not force:
            wanted = [n for n in wanted if st.sent.get(n) is not ts.fragments[n]]
        # Envoy applies one response after the other: what serving listeners use first,
        # then, in a response of its own and at most every LATE_INTERVAL, what only a
        # listener being drained still uses
        early = [n for n in wanted if n not in ts.late]
        if early:
            await self._respond(type_url, ts, early)
        late = [n for n in wanted if n in ts.late]
        if not late:
            return
        wait = st.late_at + LATE_INTERVAL - time.monotonic()
        if force or wait <= 0:
            await self._respond(type_url, ts, late)
            st.late_at = time.monotonic()
        elif not st.late_waiting:
            st.late_waiting = True
            self._later(wait, type_url)

    async def _respond(self, type_url: str, ts: TypeSnapshot, names: list[str] | None) -> None:
        """One DiscoveryResponse: every resource of a wildcard type, or these names."""
        st = self.types[type_url]
        sent = dict(ts.fragments) if names is None else {n: ts.fragments[n] for n in names}
        # a cluster Envoy had, changed: it warms until EDS answers again (a new one needs
        # no resend: Envoy adds its name to the EDS request, so a first sync owes none)
        rewarms = type_url == CLUSTER and any(st.sent.get(n, f) != f for n, f in sent.items())
        nonce = str(next(self._nonces))
        await self._write(ts.response(type_url, nonce, names))  # type: ignore[operator]
        st.nonce = nonce
        st.sent_at = time.monotonic()
        if self.metrics is not None:
            self.metrics.pushed(self.proxy.gateway, type_url)  # type: ignore[union-attr]
        self._pushed.add(type_url.rsplit(".", 1)[-1])
        st.sent_version = st.pending_version = ts.version
        if names is None:
            st.sent = st.pending = sent
        else:
            # an ACK of this nonce also covers earlier responses whose ACKs went stale
            st.sent.update(sent)
            st.pending = {**st.pending, **sent}
        if rewarms:
            self._cds_since_eds = True

    def _update_sync(self, snap: Snapshot) -> None:
        """A proxy runs revision R when every type it uses matches snapshot R as ACKed."""
        assert self.proxy is not None
        for type_url, st in self.types.items():
            ts = snap.types[type_url]
            if type_url in OPTIONAL_TYPES and (not st.subscribed or not ts.fragments):
                continue
            if type_url in WILDCARD_TYPES:
                if st.acked_version != ts.version:
                    return
            else:
                for name in st.names - ts.late:  # late: see LATE_INTERVAL
                    frag = ts.fragments.get(name)
                    if frag is not None and st.acked.get(name) is not frag:
                        return
        self._in_sync(snap.revision)


async def _pump(requests: AsyncIterator[object], queue: asyncio.Queue[object]) -> None:
    try:
        async for req in requests:
            queue.put_nowait(req)
    except (asyncio.CancelledError, grpc.RpcError):
        pass
    finally:
        queue.put_nowait(_CLOSED)


class AdsServer:
    """Registers the ADS method on a grpc.aio server."""

    def __init__(
        self,
        cache: SnapshotCache,
        recorder: StatusRecorder,
        metrics: XdsMetrics | None = None,
        authorizer: StreamAuthorizer | None = None,
        gate: InitialSyncGate | None = None,
    ) -> None:
        self.cache = cache
        self.recorder = recorder
        self.metrics = metrics
        self.authorizer = authorizer or StreamAuthorizer(required=False)
        #: first syncs in flight at once (admission.py); shared by every ADS stream
        self.gate = gate or InitialSyncGate(0)
        #: open streams of both protocols
        self.active: set[_Stream] = set()
        #: delta streams' encoded resources, shared by all of them (``delta.py``)
        self._delta_encoder: Any = None

    def connected(self) -> dict[str, int]:
        """Open streams per gateway (the proxies connected to this controller)."""
        out: dict[str, int] = {}
        for stream in self.active:
            if stream.proxy is not None:
                out[stream.proxy.gateway] = out.get(stream.proxy.gateway, 0) + 1
        return out

    async def _stream(
        self,
        requests: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        stream = AdsStream(
            self.cache,
            self.recorder,
            context.write,
            context.peer(),
            self.metrics,
            self._admit(context),
            self.gate,
        )
        await self._serve(stream, requests, context)

    async def _delta(
        self,
        requests: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        """Incremental ADS (``api_type: DELTA_GRPC``): see ``delta.py``. Its first syncs go
        through the same gate as the SotW ones: a mixed fleet shares one bound."""
        from .delta import DeltaEncoder, DeltaStream  # delta.py builds on this module

        if self._delta_encoder is None:
            self._delta_encoder = DeltaEncoder()
        stream = DeltaStream(
            self.cache,
            self.recorder,
            self._delta_encoder,
            context.write,
            context.peer(),
            self.metrics,
            self._admit(context),
            self.gate,
        )
        await self._serve(stream, requests, context)

    def _admit(self, context: grpc.aio.ServicerContext) -> Admit:
        """The certificate check of one call: the node id and gateway its first request
        claims must be those its client certificate names (``StreamAuthorizer``)."""
        authorizer = self.authorizer

        def admit(gateway: str, node_id: str) -> str | None:
            return authorizer.refusal(context, gateway, node_id)

        return admit

    async def _serve(
        self, stream: _Stream, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> None:
        """Run one stream of either protocol, counted among the active streams."""
        identity = client_identity(context)
        if identity is not None:
            log.info("xDS client %s authenticated as %s", context.peer(), identity)
        self.active.add(stream)
        try:
            await stream.run(requests)
        except Refused as exc:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        finally:
            self.active.discard(stream)

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            ADS_SERVICE,
            {
                "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                    self._stream,
                    request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
                    response_serializer=_identity,
                ),
                "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
                    self._delta,
                    request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
                    response_serializer=_identity,
                ),
            },
        )


def _identity(data: bytes) -> bytes:
    return data

"""Proxy status flowing back from the streams to the database, off the push path.

Streams update an in-memory :class:`ProxyState`; the recorder writes the newest state of each
changed proxy and the queued events in one transaction per batch from a worker thread, so
a slow database never delays a push and a fleet's ACKs cost one commit (ADR 0040).
A rejection is mapped back to the policy objects that most likely caused it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Callable

from ..store import ProxyStatus, Store

__all__ = ["ProxyState", "StatusRecorder", "nack_field", "suspects"]

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ProxyState:
    node_id: str
    gateway: str
    address: str
    envoy_version: str
    connected_at: float = dataclasses.field(default_factory=time.time)
    connected: bool = True
    acked_revision: int = 0
    nack_revision: int | None = None
    nack_type: str | None = None
    nack_error: str | None = None
    #: resource names in the rejected response, mapped to policy objects by the recorder
    nack_candidates: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    nack_objects: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    #: when the proxy last ACKed a response (wall clock)
    acked_at: float | None = None
    #: why the controller does not answer this proxy (it would roll it back)
    hold: str | None = None


def suspects(
    error: str, candidates: list[tuple[str, str]], specs: dict[tuple[str, str], str]
) -> list[tuple[str, str]]:
    """Candidates whose name or any value of whose spec appears in Envoy's error text."""
    hits = []
    for key in candidates:
        _kind, name = key
        text = specs.get(key, "")
        values = _leaf_strings(json.loads(text)) if text else []
        if f"'{name}'" in error or any(len(v) > 2 and v in error for v in values):
            hits.append(key)
    return hits or candidates


#: Envoy error phrases whose cause is a field no value of which is quoted in the text
_PHRASES = {
    "gateway": [("Address already in use", "port"), ("Cannot assign requested address", "address")],
}


def nack_field(error: str, kind: str, spec: dict[str, object]) -> str | None:
    """The field of a policy object that a proxy's rejection most likely concerns.

    Known phrases first (a bind failure is the gateway's port); then the longest value of
    the spec that Envoy's error quotes (a bad regex is quoted, so its field is found).
    """
    for phrase, field in _PHRASES.get(kind, []):
        if phrase in error:
            return field
    best: tuple[int, str] | None = None
    for path, value in _leaves(spec, ""):
        text = str(value)
        if path == "name" or len(text) < 3 or isinstance(value, bool):
            continue
        if text in error and (best is None or len(text) > best[0]):
            best = (len(text), path)
    return best[1] if best else None


def _leaves(value: object, path: str) -> list[tuple[str, object]]:
    if isinstance(value, dict):
        return [leaf for k, v in value.items() for leaf in _leaves(v, f"{path}.{k}" if path else k)]
    if isinstance(value, list):
        return [leaf for i, v in enumerate(value) for leaf in _leaves(v, f"{path}[{i}]")]
    return [(path, value)]


def _leaf_strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _leaf_strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _leaf_strings(v)]
    return []


#: the recorder writes once no change came for this many seconds and no stream has a push
#: left to send: the ACKs of one push to a fleet arrive within tens of milliseconds and are
#: then written together, after the push rather than during it (the write holds the GIL
#: the streams need)
COALESCE = 0.01
#: ... but never later than this after the first change it holds (a fleet that never
#: stops changing is still recorded)
MAX_DELAY = 0.1


class StatusRecorder:
    """Writes what the streams report, newest state per proxy, in one transaction per
    flush (:meth:`Store.save_status`): 100 proxies ACKing a push cost one commit, not 100
    (each commit also wakes every revision watcher on the database)."""

    def __init__(
        self,
        store: Store,
        controller: str,
        coalesce: float = COALESCE,
        max_delay: float = MAX_DELAY,
        pushes_done: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self.controller = controller
        self.coalesce = coalesce
        self.max_delay = max_delay
        #: waits (at most the given seconds) until no stream has a push to send
        #: (:meth:`SnapshotCache.pushes_done`)
        self._pushes_done = pushes_done
        self._dirty: dict[str, ProxyState] = {}
        self._events: list[dict[str, object]] = []
        self._wake = asyncio.Event()

    def event(self, kind: str, state: ProxyState, revision: int | None, detail: str) -> None:
        """Queue an event (push, ack, nack, connect, disconnect) for the event history."""
        self._events.append(
            {
                "at": time.time(),
                "kind": kind,
                "gateway": state.gateway,
                "node": state.node_id,
                "revision": revision,
                "detail": detail[:2000],
            }
        )
        self._wake.set()

    def changed(self, state: ProxyState) -> None:
        self._dirty[state.node_id] = state
        self._wake.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            first = loop.time()
            while self.coalesce:  # until quiet for `coalesce`, or `max_delay` passed
                self._wake.clear()
                await asyncio.sleep(self.coalesce)
                if not self._wake.is_set() or loop.time() - first >= self.max_delay:
                    break
            if self._pushes_done is not None:
                # a push still going to some streams: it goes first (within `max_delay`)
                await self._pushes_done(self.max_delay - (loop.time() - first))
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        batch, self._dirty = self._dirty, {}
        events, self._events = self._events, []
        if not batch and not events:
            return
        rows = [self._row(s) for s in batch.values()]
        try:
            await asyncio.to_thread(self._write, batch, rows, events)
        except Exception:  # status is best effort; the push path must not die with it
            log.exception("could not record proxy status and events")

    def _row(self, s: ProxyState) -> ProxyStatus:
        return ProxyStatus(
            node_id=s.node_id,
            gateway=s.gateway,
            controller=self.controller,
            connected=s.connected,
            address=s.address,
            envoy_version=s.envoy_version,
            acked_revision=s.acked_revision,
            nack_revision=s.nack_revision,
            nack_type=s.nack_type,
            nack_error=s.nack_error,
            nack_objects=None,
            connected_at=s.connected_at,
            updated_at=time.time(),
            acked_at=s.acked_at,
            hold=s.hold,
        )

    def _write(
        self,
        batch: dict[str, ProxyState],
        rows: list[ProxyStatus],
        events: list[dict[str, object]],
    ) -> None:
        out = []
        for state, row in zip(batch.values(), rows, strict=True):
            if state.nack_error and state.nack_candidates and not state.nack_objects:
                try:
                    state.nack_objects = self._narrow(state)
                except Exception:  # the row is still written, with the candidates unnamed
                    log.exception("could not map node %s's rejection to objects", state.node_id)
            if state.nack_objects:
                row = dataclasses.replace(
                    row, nack_objects=", ".join(f"{k} {n}" for k, n in state.nack_objects)
                )
            out.append(row)
        self.store.save_status(out, events)

    def _narrow(self, state: ProxyState) -> list[tuple[str, str]]:
        """Prefer objects changed since the proxy's last good revision, then the error text."""
        candidates = state.nack_candidates
        if state.nack_revision is not None:
            recent = set(self.store.changed_objects(state.acked_revision, state.nack_revision))
            narrowed = [c for c in candidates if c in recent]
            candidates = narrowed or candidates
        specs = {}
        for kind, name in candidates[:200]:
            try:
                specs[(kind, name)] = json.dumps(self.store.get(kind, name).spec())
            except Exception:
                continue
        return suspects(state.nack_error or "", candidates[:200], specs)

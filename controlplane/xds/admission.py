"""Admission control for initial syncs: a fleet reconnecting at once is served in order.

When a controller restarts, every Envoy of the fleet reconnects within a second or two
(envoy/bootstrap.yaml: 0.1-1 s backoff). Two things then go wrong without admission
(docs/decisions/0053-admission-control-for-mass-reconnects.md, docs/benchmarks.md):

* gRPC core sheds calls the Python server has not picked up yet: beyond 1,000 such
  pending calls it starts refusing new ones and beyond 3,000 it refuses all of them (the
  client sees CANCELLED or INTERNAL, Envoy retries, the storm goes on); a call left
  unpicked for 30 s is cancelled too. :data:`SERVER_OPTIONS` lifts those limits: a stream
  is accepted and waits here instead, in order, with nothing to time out.
* every stream's first sync (the whole configuration, sent type by type, each ACK a round
  trip) interleaves with every other one on the one event loop, so all of them finish at
  about the time the last one does, and the responses of thousands of streams are buffered
  at once.

:class:`InitialSyncGate` bounds the number of first syncs in flight. A stream asks for a
slot (:meth:`InitialSyncGate.admit`) once it knows its node and subscribed to its gateway
(so it counts as a replica while it waits), before it sends anything;
streams beyond the bound wait in FIFO order; the slot is given back when the stream's
proxy runs the configuration (its first full sync ACKed), when it cannot (a NACK, a
rollback hold, a withheld gateway), when the stream ends, or after
:data:`SLOT_TIMEOUT` seconds, so one slow or silent proxy delays the queue by at most that.
A stream at position ``k`` of the queue therefore starts its sync within
``ceil(k / limit) * SLOT_TIMEOUT`` seconds whatever the proxies do, and typically within
``k / limit`` times one sync's duration. Waiting streams hold no configuration, only
their first request.

The gate knows nothing about the xDS variant: a state-of-the-world and a delta stream use
it the same way::

    sub = cache.subscribe(...)         # a waiting proxy counts as a replica already
    slot = await gate.admit()          # before sending anything
    try:
        ...                            # serve; once the first full sync is ACKed:
        slot.release()
    finally:
        slot.release()                 # idempotent
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

from .gcdefer import FullCollectionDeferral

__all__ = [
    "SERVER_OPTIONS",
    "SLOT_TIMEOUT",
    "InitialSyncGate",
    "Slot",
]

log = logging.getLogger(__name__)

#: seconds a stream may keep its slot before it is passed on (the proxy has not ACKed)
SLOT_TIMEOUT = 10.0
#: gRPC server options: accept every stream of a reconnecting fleet (see module docstring).
#: Each waiting call costs gRPC core a few KiB; connections stay bounded by the process's
#: file descriptor limit.
SERVER_OPTIONS: list[tuple[str, int]] = [
    ("grpc.server.max_pending_requests", 1_000_000),
    ("grpc.server.max_pending_requests_hard_limit", 1_000_000),
    ("grpc.server_max_unrequested_time_in_server", 24 * 3600),
]


class Slot:
    """One stream's permission to run its first sync; :meth:`release` gives it back."""

    __slots__ = ("_gate", "_released", "_timer", "admitted_at", "waited")

    def __init__(self, gate: InitialSyncGate | None, waited: float) -> None:
        self._gate = gate
        self._released = gate is None
        self._timer: asyncio.TimerHandle | None = None
        #: seconds spent waiting in the queue
        self.waited = waited
        self.admitted_at = time.monotonic()

    @property
    def held(self) -> bool:
        return not self._released

    def release(self) -> None:
        """Give the slot back (once; later calls do nothing)."""
        if self._released:
            return
        self._released = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        assert self._gate is not None
        self._gate._release()

    def _expire(self) -> None:
        self._timer = None
        if not self._released:
            log.info("initial sync slot passed on after %.0f s without an ACK", SLOT_TIMEOUT)
            assert self._gate is not None
            self._gate.expired += 1
            self.release()


class InitialSyncGate:
    """At most ``limit`` first syncs at once (0: no bound); the others wait, first come
    first served."""

    def __init__(
        self,
        limit: int,
        slot_timeout: float = SLOT_TIMEOUT,
        deferral: FullCollectionDeferral | None = None,
    ) -> None:
        if limit < 0:
            raise ValueError("limit must be >= 0")
        self.limit = limit
        self.slot_timeout = slot_timeout
        #: full garbage collections held off while first syncs run (gcdefer.py)
        self.deferral = deferral
        #: slots held now; the most held at once since start
        self.active = 0
        self.peak = 0
        #: streams admitted, those that had to wait, slots passed on by the timeout
        self.admitted = 0
        self.queued = 0
        self.expired = 0
        #: the longest wait in the queue (seconds)
        self.max_wait = 0.0
        self._waiting: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        """Streams in the queue now."""
        return sum(1 for f in self._waiting if not f.done())

    async def admit(self) -> Slot:
        """A slot, at once when one is free and nobody waits, else in turn."""
        if self.limit == 0 or (self.active < self.limit and not self._waiting):
            self._take()
            return self._slot(0.0)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        self.queued += 1
        started = time.monotonic()
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release()  # handed a slot as the stream ended: pass it on
            else:
                future.cancel()  # skipped by _release
            raise
        waited = time.monotonic() - started
        self.max_wait = max(self.max_wait, waited)
        return self._slot(waited)

    def _take(self) -> None:
        self.active += 1
        self.admitted += 1
        self.peak = max(self.peak, self.active)
        if self.deferral is not None:
            self.deferral.busy()

    def _slot(self, waited: float) -> Slot:
        slot = Slot(self, waited)
        if self.limit and self.slot_timeout > 0:
            loop = asyncio.get_running_loop()
            slot._timer = loop.call_later(self.slot_timeout, slot._expire)
        return slot

    def _release(self) -> None:
        self.active -= 1
        while self._waiting and self.active < max(1, self.limit):
            future = self._waiting.popleft()
            if future.done():  # its stream ended while waiting
                continue
            self._take()
            future.set_result(None)
        if self.active == 0 and self.deferral is not None:
            self.deferral.idle()  # nobody in flight, so nobody waits either

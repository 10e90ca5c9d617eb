"""No full garbage collection while a fleet is in the middle of its first syncs.

CPython collects its oldest generation when it has grown by a quarter since the last full
collection, and every such collection walks every tracked object the process holds. A
fleet of 10,000 Envoys reconnecting grows the controller's heap from ~120 MiB to ~700 MiB
in 30-40 s, so it passes that mark again and again: 11 full collections during one such
sync, 3.0 s of the controller's 37.4 s of CPU, the longest 538 ms during which no stream,
no admin API request and no health probe was served (``python -m bench.reconnect
--proxies 10000 --gc-log``, docs/benchmarks.md). The objects they walk are the new
streams' state, alive and staying alive: almost nothing is freed.

While the initial-sync gate (``admission.py``) has first syncs in flight or waiting,
:class:`FullCollectionDeferral` raises the oldest generation's threshold out of reach;
young collections go on as usual, and so does reference counting. Once the gate is idle
the thresholds are restored and CPython makes one full collection at its next chance,
when the fleet is in sync rather than in the middle of it. A gate busy without a pause
(a fleet that never stops churning, or a slot never given back) gets its thresholds back
after :data:`MAX_DEFERRAL` seconds anyway, so cyclic garbage never waits longer than that.
"""

from __future__ import annotations

import asyncio
import gc
import time

__all__ = ["MAX_DEFERRAL", "FullCollectionDeferral"]

#: seconds full collections may stay deferred while the gate is continuously busy
MAX_DEFERRAL = 120.0
#: the oldest generation's threshold while deferred: never reached in practice
_OUT_OF_REACH = 1 << 30


class FullCollectionDeferral:
    """``busy()`` when the first first-sync starts, ``idle()`` when the last one ends."""

    def __init__(self, max_deferral: float = MAX_DEFERRAL) -> None:
        self.max_deferral = max_deferral
        #: the thresholds to restore (None: not deferring now)
        self._saved: tuple[int, int, int] | None = None
        self._since = 0.0
        #: deferred too long in one busy period: no new deferral until the gate is idle
        self._spent = False
        #: deferrals so far (for tests and metrics)
        self.deferrals = 0
        #: ends the deferral at ``max_deferral`` even if no further first sync comes
        self._timer: asyncio.TimerHandle | None = None

    @property
    def deferring(self) -> bool:
        return self._saved is not None

    def busy(self) -> None:
        """A first sync starts or waits: defer full collections (if not too long already)."""
        if self._saved is not None:
            if time.monotonic() - self._since >= self.max_deferral:
                self._expire()
            return
        if self._spent:
            return
        saved = gc.get_threshold()
        if saved[0] == 0:  # collection off altogether (gc.disable's kin): leave it be
            return
        self._saved = saved
        self._since = time.monotonic()
        self.deferrals += 1
        gc.set_threshold(saved[0], saved[1], _OUT_OF_REACH)
        try:  # a slot that is never given back (no bound, a silent proxy) must not keep it
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._timer = loop.call_later(self.max_deferral, self._expire)

    def _expire(self) -> None:
        """Deferred for ``max_deferral``: collections as usual until the gate is idle."""
        self._restore()
        self._spent = True

    def idle(self) -> None:
        """No first sync in flight or waiting: full collections as usual again."""
        self._spent = False
        if self._saved is not None:
            self._restore()

    def _restore(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        saved, self._saved = self._saved, None
        if saved is not None and gc.get_threshold()[2] == _OUT_OF_REACH:
            gc.set_threshold(*saved)  # unless someone set other thresholds meanwhile

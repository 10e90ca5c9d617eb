"""The snapshot cache: the only thing the translator and the stream server share.

The runner ``publish``-es a snapshot per gateway; each stream ``subscribe``-s a queue and
receives a single wake-up token per change (coalesced), then reads the newest snapshot.
"""

from __future__ import annotations

import asyncio

from ..translate import Resources
from .snapshot import FragmentCache, Snapshot, build_snapshot

__all__ = ["CHANGED", "SnapshotCache", "Subscription"]

CHANGED = object()  # wake-up token put on a stream's queue


class Subscription:
    """A stream's interest in one gateway: at most one wake-up token queued at a time."""

    def __init__(self, gateway: str, queue: asyncio.Queue[object]) -> None:
        self.gateway = gateway
        self.queue = queue
        self._pending = False

    def notify(self) -> None:
        if not self._pending:
            self._pending = True
            self.queue.put_nowait(CHANGED)

    def taken(self) -> None:
        """Called when the stream dequeues the token, before it reads the snapshot."""
        self._pending = False


class SnapshotCache:
    def __init__(self) -> None:
        self._snapshots: dict[str, Snapshot] = {}
        self._subscribers: dict[str, set[Subscription]] = {}
        self._empty: dict[str, Snapshot] = {}
        self.ready = asyncio.Event()

    def get(self, gateway: str) -> Snapshot:
        """The newest snapshot; an unknown gateway gets an empty one so Envoy starts at once."""
        snap = self._snapshots.get(gateway)
        if snap is not None:
            return snap
        empty = self._empty.get(gateway)
        if empty is None:
            empty = build_snapshot(gateway, 0, Resources(), None, FragmentCache())
            self._empty[gateway] = empty
        return empty

    def gateways(self) -> list[str]:
        return sorted(self._snapshots)

    def publish(self, snapshot: Snapshot) -> None:
        previous = self._snapshots.get(snapshot.gateway)
        self._snapshots[snapshot.gateway] = snapshot
        if previous is not None and previous is snapshot:
            return
        for sub in self._subscribers.get(snapshot.gateway, ()):
            sub.notify()

    def advance(self, gateway: str, revision: int) -> None:
        """Mark an unchanged gateway current at ``revision`` (its proxies are then in sync)."""
        snap = self._snapshots.get(gateway)
        if snap is not None and snap.revision < revision:
            self.publish(snap.at(revision))

    def subscribe(self, gateway: str, queue: asyncio.Queue[object]) -> Subscription:
        sub = Subscription(gateway, queue)
        self._subscribers.setdefault(gateway, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subscribers.get(sub.gateway)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subscribers[sub.gateway]

    def streams(self, gateway: str) -> int:
        return len(self._subscribers.get(gateway, ()))

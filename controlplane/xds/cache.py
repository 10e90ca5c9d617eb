"""The snapshot cache: the only thing the translator and the stream server share.

The runner ``publish``-es a snapshot per gateway; each stream ``subscribe``-s a queue and
receives a single wake-up token per change (coalesced), then reads the newest snapshot.

The cache also knows how many Envoys serve each gateway (its subscribed streams) and adds
that membership to what it serves: the ClusterLoadAssignment of the bootstrap's local
cluster, one member per connected Envoy (its own streams, plus those other controllers
sharing the database report, see :meth:`SnapshotCache.set_remote_members`). Envoy's local
rate limit divides every budget by the member count, so a limit holds for the gateway as a
whole; a replica joining or leaving re-pushes only this one resource.

That list has one entry per Envoy and goes to every Envoy, so serving it costs O(N) bytes
per proxy and O(N^2) per mass reconnect. Two things keep a fleet's connects O(1)
(docs/decisions/0048-membership-only-where-limits-divide.md): a gateway whose limits do not
divide by replicas (no rate limit, :attr:`Snapshot.divides_by_replicas`) is served a
constant one-member list, so a proxy connecting or leaving wakes no other stream; where
they do, changes are coalesced (:func:`membership_delay`) into one update per burst.
"""

from __future__ import annotations

import asyncio
import contextlib

from ..store import Identity
from ..translate import ENDPOINT, Resources
from ..translate.ratelimit import REPLICAS, replica_assignment
from .snapshot import FragmentCache, Snapshot, build_snapshot, resource_fragment

__all__ = ["CHANGED", "SnapshotCache", "Subscription", "membership_delay"]

CHANGED = object()  # wake-up token put on a stream's queue
#: member lists kept encoded, newest last (a fleet moves between a few nearby counts)
MEMBER_FRAGMENTS = 8


def membership_delay(streams: int) -> float:
    """Seconds a membership change waits for others before it is served: 50 ms for a
    handful of proxies, growing with the fleet to 1 s at 2,000 streams, so that each
    update (a list of N members to each of N proxies) is paid once per burst of connects,
    not once per connect."""
    return min(1.0, 0.05 + streams / 2000)


class Subscription:
    """A stream's interest in one gateway: at most one wake-up token queued at a time."""

    def __init__(self, gateway: str, queue: asyncio.Queue[object], node: str = "") -> None:
        self.gateway = gateway
        self.queue = queue
        #: the stream's node id: several streams of one node count as one replica
        self.node = node
        self._pending = False

    def notify(self) -> None:
        if not self._pending:
            self._pending = True
            self.queue.put_nowait(CHANGED)

    def taken(self) -> None:
        """Called when the stream dequeues the token, before it reads the snapshot."""
        self._pending = False

    @property
    def pending(self) -> bool:
        """A wake-up token is queued and not yet taken."""
        return self._pending


class SnapshotCache:
    def __init__(self) -> None:
        #: what the runner published, per gateway
        self._published: dict[str, Snapshot] = {}
        #: what streams are served: the published snapshot plus the replica membership
        self._served: dict[str, Snapshot] = {}
        self._subscribers: dict[str, set[Subscription]] = {}
        self._members: dict[int, bytes] = {}
        #: gateways with a membership update scheduled (see :func:`membership_delay`)
        self._members_due: set[str] = set()
        #: gateway -> Envoys connected to other live controllers
        self._remote: dict[str, int] = {}
        #: gateways whose configuration failed to build before any was published: their
        #: streams get no answer (an empty one would remove what the proxies run)
        self._withheld: set[str] = set()
        self.ready = asyncio.Event()
        #: the database and revision the runner serves (None until loaded), which streams
        #: check what their proxies run against (no rollback, see ``guard.py``)
        self.identity: Identity | None = None
        #: ``serve --allow-rollback``: answer every proxy, whatever it runs
        self.allow_rollback = False
        #: streams woken by a change that have not yet sent what it asks for
        self._pushing: set[Subscription] = set()
        self._pushed = asyncio.Event()
        self._pushed.set()

    def get(self, gateway: str) -> Snapshot:
        """The newest snapshot; an unknown gateway gets an empty one so Envoy starts at once."""
        snap = self._served.get(gateway)
        if snap is None:
            snap = self._serve(gateway)
        return snap

    def published(self, gateway: str) -> Snapshot | None:
        """The runner's last snapshot of ``gateway`` (without membership), if any."""
        return self._published.get(gateway)

    def gateways(self) -> list[str]:
        return sorted(self._published)

    def withhold(self, gateway: str) -> None:
        """``gateway`` has a configuration that could not be built: until one is published,
        its streams are not answered (rather than answered with an empty configuration)."""
        if gateway not in self._published:
            self._withheld.add(gateway)

    def withheld(self, gateway: str) -> bool:
        return gateway in self._withheld

    def publish(self, snapshot: Snapshot) -> None:
        previous = self._published.get(snapshot.gateway)
        self._published[snapshot.gateway] = snapshot
        self._withheld.discard(snapshot.gateway)
        if previous is not None and previous is snapshot:
            return
        self._serve(snapshot.gateway)
        self._notify(snapshot.gateway)

    def advance(self, gateway: str, revision: int) -> None:
        """Mark an unchanged gateway current at ``revision`` (its proxies are then in sync)."""
        snap = self._published.get(gateway)
        if snap is not None and snap.revision < revision:
            self.publish(snap.at(revision))

    def advance_all(self, revision: int) -> None:
        """Wake every stream (the identity they check proxies against changed)."""
        for gateway in list(self._published):
            self.advance(gateway, revision)
        for gateway in list(self._subscribers):
            self._notify(gateway)

    def subscribe(self, gateway: str, queue: asyncio.Queue[object], node: str = "") -> Subscription:
        sub = Subscription(gateway, queue, node)
        self._subscribers.setdefault(gateway, set()).add(sub)
        self._membership_changed(gateway)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._done(sub)
        subs = self._subscribers.get(sub.gateway)
        if subs is not None and sub in subs:
            subs.discard(sub)
            if not subs:
                del self._subscribers[sub.gateway]
            self._membership_changed(sub.gateway)

    def streams(self, gateway: str) -> int:
        """Envoys with a stream for ``gateway``: distinct node ids (a stream without one
        counts alone), so a node's second stream - a reconnect whose old connection has not
        timed out yet, or a copy of its certificate - is not a second replica."""
        return len({s.node or id(s) for s in self._subscribers.get(gateway, ())})

    def set_remote_members(self, counts: dict[str, int]) -> None:
        """Envoys per gateway that other controllers serve (read from the database)."""
        changed = {g for g in counts.keys() | self._remote.keys()
                   if counts.get(g, 0) != self._remote.get(g, 0)}  # fmt: skip
        self._remote = {g: n for g, n in counts.items() if n}
        for gateway in changed:
            self._membership_changed(gateway)

    def members(self, gateway: str) -> int:
        """Envoys serving ``gateway``, at least 1 (the one asking)."""
        return max(1, self.streams(gateway) + self._remote.get(gateway, 0))

    # -- membership ---------------------------------------------------------------------------

    def _serve(self, gateway: str) -> Snapshot:
        base = self._published.get(gateway)
        if base is None:
            ident = self.identity
            base = build_snapshot(
                gateway,
                ident.revision if ident else 0,
                Resources(),
                None,
                FragmentCache(),
                ident.database_id if ident else "",
            )
        count = self.members(gateway) if base.divides_by_replicas else 1
        fragment = self._members.pop(count, None)
        if fragment is None:
            data = replica_assignment(count).SerializeToString(deterministic=True)
            fragment = resource_fragment(ENDPOINT, data)
            while len(self._members) >= MEMBER_FRAGMENTS:
                del self._members[next(iter(self._members))]  # the least recently used
        self._members[count] = fragment
        served = base.with_fragment(ENDPOINT, REPLICAS, fragment, f"r{count}")
        self._served[gateway] = served
        return served

    def _membership_changed(self, gateway: str) -> None:
        if gateway not in self._published and not self._subscribers.get(gateway):
            self._served.pop(gateway, None)
        base = self._published.get(gateway)
        if base is None or not base.divides_by_replicas:
            return  # served a constant list: nothing any proxy runs changes
        if gateway in self._members_due:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a synchronous caller): at once
            self._members_changed_now(gateway)
            return
        self._members_due.add(gateway)
        delay = membership_delay(len(self._subscribers.get(gateway, ())))
        loop.call_later(delay, self._members_changed_now, gateway)

    def _members_changed_now(self, gateway: str) -> None:
        self._members_due.discard(gateway)
        before = self._served.get(gateway)
        if gateway not in self._published:
            return
        after = self._serve(gateway)
        if before is None or before.types[ENDPOINT].version != after.types[ENDPOINT].version:
            self._notify(gateway)

    # -- pushes in flight ---------------------------------------------------------------------

    def pushed(self, sub: Subscription) -> None:
        """The stream of ``sub`` sent what its last wake-up asked for (unless it was woken
        again meanwhile: then it still owes that push)."""
        if not sub.pending:
            self._done(sub)

    def _done(self, sub: Subscription) -> None:
        self._pushing.discard(sub)
        if not self._pushing:
            self._pushed.set()

    async def pushes_done(self, timeout: float) -> None:
        """Return once every stream woken by a change has sent it, or after ``timeout``
        seconds. Bookkeeping that can wait (status rows, build records: a database write
        in a thread, holding the GIL for milliseconds) waits for this, so that it does not
        slow the push it records down; a stream stuck behind a slow proxy delays it at most
        ``timeout``."""
        if self._pushed.is_set() or timeout <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._pushed.wait(), timeout)

    def _notify(self, gateway: str) -> None:
        subs = self._subscribers.get(gateway, ())
        for sub in subs:
            sub.notify()
        if subs:
            self._pushing.update(subs)
            self._pushed.clear()

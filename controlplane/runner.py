"""The revision watcher: store -> policy state -> translate -> snapshot -> cache.

Polling one indexed row every ``poll_interval`` (20 ms) notices a commit by any process,
on SQLite or PostgreSQL, in under 50 ms for a few hundred microseconds of CPU per second;
only the objects that changed are then read. A commit by this process (its admin API)
wakes the watcher at once through ``Store.on_commit``.

A failure stays with the gateway and the object at fault: a stored object that does not
validate (an :class:`Unloadable`), a translation that raises, or a snapshot that fails its
checks leaves that gateway on its last good snapshot, with the error (naming the object and
field where known) recorded for ``status``, ``--wait`` and ``/status``; other gateways and
later changes go live, and failed gateways are tried again at every revision, so fixing
the object recovers the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import cast

from .errors import GatewayError, TranslationError
from .policy import KINDS, Cluster, Gateway, PolicyModel, Route, references
from .policy.certificate import Certificate
from .policy.ratelimit import Plan
from .quota.budgets import next_quota_boundary
from .store import Identity, Store, Unloadable
from .store.backup import file_identity, save_from
from .store.db import FileWatch, RevisionProbe, file_id, sqlite_path
from .store.history import Retention, prune_history
from .translate import AggregationTarget, GatewayView, Resources, Translator
from .translate.auth import next_key_expiry
from .xds.cache import SnapshotCache
from .xds.snapshot import FragmentCache, Snapshot, build_snapshot

__all__ = ["Runner"]

log = logging.getLogger(__name__)

#: seconds between two prunings of the policy history (--history-retention)
HISTORY_PRUNE_EVERY = 600.0
#: seconds between liveness records; readers presume a controller dead after 15 s
HEARTBEAT = 5.0
#: at most this long a build record waits for the streams to send the build
RECORD_WAIT = 0.1
#: a controller silent this long is presumed dead and its proxies no longer count (the
#: same limit ``status`` and ``--wait`` apply)
DEAD_AFTER = 15.0


class Runner:
    def __init__(
        self,
        store: Store,
        cache: SnapshotCache,
        *,
        controller: str,
        xds_address: str,
        poll_interval: float = 0.02,
        aggregation: AggregationTarget | None = None,
        shard_from: int = 2000,
        proxy_expiry: float = 3600.0,
        sink_tls: bool = False,
        history_retention: Retention | None = None,
    ) -> None:
        self.store = store
        self.cache = cache
        self.controller = controller
        self.xds_address = xds_address
        self.poll_interval = poll_interval
        self.revision = -1
        self.started_at = time.time()
        self._next_expiry: datetime | None = None
        #: the next calendar boundary of quotas (unix time); None: to be computed
        self._next_boundary: float | None = None
        self.objects: dict[str, dict[str, PolicyModel]] = {kind: {} for kind in KINDS}
        self.errors: dict[str, str] = {}
        #: gateway -> the revision whose change it failed to apply (what ``--wait`` on that
        #: revision or an earlier one reports)
        self.failed_at: dict[str, int] = {}
        #: (kind, name) -> a stored object that does not validate, left out of the state
        self.invalid: dict[tuple[str, str], Unloadable] = {}
        #: gateway -> its routes by name, kept up to date change by change
        self.by_gateway: dict[str, dict[str, Route]] = {}
        #: (revision, kind -> name -> object) as of the last revision applied, for readers
        #: in other threads (the admin API's listings): rebuilt, never changed in place; a
        #: kind with an object that does not validate is None (readers use the store)
        self.listing: tuple[int, dict[str, dict[str, PolicyModel] | None]] | None = None
        self._translator = Translator(aggregation, shard_from, sink_tls)
        self._fragments = FragmentCache()
        self._record_task: asyncio.Task[None] | None = None
        self._members_task: asyncio.Task[None] | None = None
        self._last_error: str | None = None
        self._last_error_at = 0.0
        #: status rows of proxies gone (or of dead controllers) this long are deleted
        self.proxy_expiry = proxy_expiry
        self._expire_task: asyncio.Task[None] | None = None
        self._next_expire = 0.0
        #: how long change rows (history, audit, rollback targets) are kept
        self.history_retention = history_retention or Retention()
        self._prune_task: asyncio.Task[None] | None = None
        self._next_prune = 0.0
        #: the database served: id, revision, lineage (set by load, kept by poll)
        self.identity: Identity | None = None
        #: why the database is not followed any more (replaced, removed, went back); the
        #: last good policy stays served meanwhile. None when all is well.
        self.store_problem: str | None = None
        #: times a replaced or removed database was refused (a metric)
        self.store_refusals = 0
        #: ``serve --allow-rollback``: follow a replaced database even if it is older
        self.allow_rollback = False
        self._file = sqlite_path(store.url)
        self._file_id: tuple[int, int] | None = None
        self._probe: RevisionProbe | None = None
        #: the file identity whose predecessor was saved already (once per replacement)
        self._saved_for: object = None
        self._saved_note = ""
        self._checkpoint_task: asyncio.Task[None] | None = None
        self._problem_logged = 0.0

    # -- lifecycle ----------------------------------------------------------------------------

    async def load(self) -> None:
        """Load everything and publish every gateway before the first stream is answered."""
        self._file_id = self._stat()
        ident, objects = await asyncio.to_thread(self.store.load_state)
        revision = ident.revision
        self._set_identity(ident)
        for obj in objects:
            self._put(obj.kind, obj.name, obj)  # type: ignore[union-attr]
        gateways = set(self.objects["gateway"]) | {
            name for kind, name in self.invalid if kind == "gateway"
        }
        self._rebuild(gateways, revision)
        self.revision = revision
        self._publish_listing(None)
        self.cache.ready.set()
        await self._record()
        log.info(
            "loaded revision %d: %s",
            revision,
            ", ".join(f"{len(v)} {k}s" for k, v in self.objects.items()),
        )

    def _publish_listing(self, changed: set[str] | None) -> None:
        """A new :attr:`listing` at :attr:`revision`: copies of the kinds ``changed`` (all
        when None), the previous mappings of the others."""
        previous = self.listing[1] if self.listing is not None else {}
        invalid = {kind for kind, _ in self.invalid}
        kinds: dict[str, dict[str, PolicyModel] | None] = {}
        for kind in KINDS:
            if changed is not None and kind not in changed and kind in previous:
                kinds[kind] = previous[kind]
            else:
                kinds[kind] = None if kind in invalid else dict(self.objects[kind])
        self.listing = (self.revision, kinds)

    def listed(self, kind: str, revision: int) -> list[PolicyModel] | None:
        """Every object of ``kind`` by name if the state in memory is that of ``revision``
        (None otherwise: the caller reads the store). Safe from any thread."""
        listing = self.listing
        if listing is None or listing[0] != revision:
            return None
        objects = listing[1].get(kind)
        return None if objects is None else [objects[n] for n in sorted(objects)]

    def render(self, gateway: str) -> Snapshot | None:
        """Load the store and translate one gateway exactly as :meth:`load` does, without
        serving or recording anything: what a proxy of ``gateway`` would receive now
        (``gatewayctl render``). None when there is no such gateway."""
        ident, objects = self.store.load_state()
        self._set_identity(ident)
        for obj in objects:
            self._put(obj.kind, obj.name, obj)  # type: ignore[union-attr]
        if gateway not in self.objects["gateway"] and ("gateway", gateway) not in self.invalid:
            return None
        self._rebuild({gateway}, ident.revision)
        if gateway in self.errors:
            raise TranslationError(f"gateway {gateway!r}: {self.errors[gateway]}")
        return self.cache.published(gateway)

    async def run(self) -> None:
        last_beat = time.monotonic()
        probe = self.store.probe()
        seen: object = None
        sqlite = self.store.url.startswith("sqlite")
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        watch = FileWatch.for_url(self.store.url)
        interval = self.poll_interval
        if watch is not None:

            def on_event(watch: FileWatch = watch) -> None:
                # read the events as they come; only the database's own files wake the
                # loop (a log or a backup written next to it costs this read, no probe)
                if watch.drain():
                    wake.set()

            loop.add_reader(watch.fd, on_event)
            interval *= 5  # only a safety net now

        def on_commit(_revision: int) -> None:
            # a write of this process committed: look now. PostgreSQL has no file event
            # (the next poll is up to poll_interval away), and SQLite's comes with the WAL
            # write, which can precede the commit becoming visible (then a recheck 2 ms on)
            loop.call_soon_threadsafe(wake.set)

        self.store.on_commit.append(on_commit)
        self._probe = probe
        try:
            rechecks = 0
            while True:
                # a file event wakes us at once; the interval is the fallback. A write to
                # the WAL can precede the commit becoming visible (the index is in shared
                # memory, which raises no event), so a wake that finds nothing new looks
                # again a few times shortly after.
                timeout = 0.002 if rechecks else interval
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout)
                woke = wake.is_set()
                if woke:
                    wake.clear()
                # while the database is refused (replaced, removed, went back) nothing reads
                # or writes it but the check below: the policy in memory is served
                healthy = self.store_problem is None
                if healthy and time.monotonic() - last_beat >= HEARTBEAT:
                    last_beat = time.monotonic()
                    self._schedule_record()
                    self._schedule_members()
                    self._schedule_checkpoint()
                self._expire_keys()
                if healthy and time.monotonic() >= self._next_expire:
                    every = min(60.0, max(1.0, self.proxy_expiry / 4))
                    self._next_expire = time.monotonic() + every
                    self._schedule_proxy_expiry()
                if healthy and time.monotonic() >= self._next_prune:
                    self._next_prune = time.monotonic() + HISTORY_PRUNE_EVERY
                    self._schedule_history_prune()
                if self._file is not None and self._stat() != self._file_id:
                    if not await self._file_replaced():
                        await asyncio.sleep(1)
                        continue
                    seen = None
                try:
                    # SQLite's probe takes microseconds: run it inline, not in a thread
                    token = probe() if sqlite else await asyncio.to_thread(probe)
                except Exception:
                    log.exception("cannot read the policy revision; retrying")
                    await asyncio.sleep(1)
                    continue
                if token != seen:
                    rechecks = 0
                    if await self._poll_safely():
                        seen = token
                elif woke:
                    rechecks = 5
                elif rechecks:
                    rechecks -= 1
        finally:
            self.store.on_commit.remove(on_commit)
            probe.close()
            if watch is not None:
                loop.remove_reader(watch.fd)
                watch.close()

    async def _poll_safely(self) -> bool:
        try:
            await self.poll()
            return True
        except GatewayError as exc:  # e.g. a secret it cannot decrypt: keep serving the last
            # good state, retry, and say so once every 10 s rather than on every poll
            message, now = str(exc), time.monotonic()
            if message != self._last_error or now - self._last_error_at >= 10:
                log.error("revision not applied, still serving revision %d: %s", self.revision, exc)
                self._last_error, self._last_error_at = message, now
        except Exception:
            log.exception("revision watcher failed; retrying")
            await asyncio.sleep(1)
        return False

    async def poll(self) -> bool:
        """Apply whatever was committed since the last poll; True if a revision was seen."""
        ident, changes = await asyncio.to_thread(self.store.changes_state, self.revision)
        revision = ident.revision
        assert self.identity is not None
        if ident.database_id != self.identity.database_id or revision < self.revision:
            # another database, or this one went back in time (an older copy put in its
            # place): keep serving what we have, loudly, until it is put right; a SQLite
            # file overwritten in place is mixed with its WAL: write nothing more into it
            if self._file is not None:
                self.store.paused = "database went back"
            self._refuse(ident)
            return False
        self._clear_problem()
        if ident.lineage != self.identity.lineage:
            self._set_identity(ident)
            self.cache.advance_all(revision)
        if revision == self.revision:
            return False
        affected: set[str] = set()
        changed_routes = {name for kind, name, _ in changes if kind == "route"}
        for kind, name, obj in changes:
            old = self.objects[kind].get(name) or self.invalid.get((kind, name))
            affected |= self._gateways_of(kind, name, old) | self._gateways_of(kind, name, obj)
            self._put(kind, name, obj)
        retried = set(self.errors) - affected  # failed gateways: perhaps fixed by this change
        started = time.perf_counter()
        self._set_identity(ident)
        self._rebuild(affected | retried, revision, frozenset(changed_routes), retried)
        self.revision = revision
        self._publish_listing({kind for kind, _, _ in changes})
        log.info(
            "revision %d: %d object(s) changed, %d gateway(s) rebuilt in %.1f ms",
            revision,
            len(changes),
            len(affected),
            (time.perf_counter() - started) * 1e3,
        )
        self._schedule_record()
        return True

    # -- the database's identity ---------------------------------------------------------------

    def _set_identity(self, ident: Identity) -> None:
        self.identity = ident
        self.cache.identity = ident

    def _database_id(self) -> str:
        return self.identity.database_id if self.identity is not None else ""

    def _stat(self) -> tuple[int, int] | None:
        """(device, inode) of the SQLite file, None if it is gone (or not SQLite)."""
        return None if self._file is None else file_id(self._file)

    async def _file_replaced(self) -> bool:
        """The database file was removed or replaced under us: follow the new file only if
        it is this database at this revision or newer (or absorbed it by a restore), and
        reload it whole; otherwise keep serving the policy in memory. True if followed."""
        assert self.identity is not None and self._file is not None
        current = self._stat()
        # read what the new file holds by itself: opened normally, SQLite would pair it
        # with the old database's -wal
        ident = None if current is None else file_identity(self._file)
        mine = self.identity
        acceptable = ident is not None and (
            (ident.database_id == mine.database_id and ident.revision >= self.revision)
            or ident.lineage.get(mine.database_id, -1) >= self.revision
            or self.allow_rollback
        )
        if not acceptable:
            # stop writing status: through the shared -wal it would land in the new file
            self.store.paused = "database file replaced"
            saved = await self._save_replaced(current)
            if current is None:
                what = "was removed"
            elif ident is None:
                what = "was replaced by a file that is not a gateway database"
            else:
                what = f"now holds {ident.label()}"
            self._problem(
                f"database file {self._file} {what}, but this controller serves "
                f"{mine.label()}: refusing it (it would roll proxies back) and serving the "
                f"policy in memory{saved}"
            )
            return False
        assert ident is not None
        if self._probe is not None:
            self._probe.close()  # it reads the old file: it reconnects on its next call
        # so do pooled connections; new ones may open the file checked above, and only it
        self.store.reopen(current)
        self.store.paused = None
        log.warning(
            "database file %s was replaced: now %s (was %s); reloading it",
            self._file,
            ident.label(),
            mine.label(),
        )
        self._file_id = current
        await self._reload()
        self._clear_problem()
        return True

    async def _save_replaced(self, current: object) -> str:
        """Save the database the file held before (still open on this controller's
        connection) next to it, once per replacement; the sentence saying where."""
        key = ("file", current)  # a removed file (None) is a replacement too
        if self._saved_for == key:
            return self._saved_note
        self._saved_for = key
        self._saved_note = ""
        conn = self._probe.connection() if self._probe is not None else None
        if conn is None or self._file is None:
            return ""
        target = f"{self._file}.replaced-{time.strftime('%Y%m%dT%H%M%S')}"
        try:
            await asyncio.to_thread(save_from, conn, target)
        except Exception as exc:
            log.error("could not save the replaced database to %s: %s", target, exc)
            return ""
        self._saved_note = (
            f"; the database it replaced is saved in {target} (gatewayctl restore {target})"
        )
        return self._saved_note

    def _refuse(self, ident: Identity) -> None:
        assert self.identity is not None
        self._problem(
            f"the database now holds {ident.label()}, but this controller serves "
            f"{self.identity.label()}: refusing it (would roll proxies back), serving "
            "the policy in memory; bring the data back with gatewayctl restore"
        )

    def _problem(self, text: str) -> None:
        if text != self.store_problem:
            self.store_refusals += 1
            self._problem_logged = 0.0
        self.store_problem = text
        if time.monotonic() - self._problem_logged >= 30:
            self._problem_logged = time.monotonic()
            log.error("%s", text)

    def _clear_problem(self) -> None:
        if self.store_problem is not None:
            log.warning("database problem resolved: %s", self.store_problem)
            self.store_problem = None
            self.store.paused = None

    async def _reload(self) -> None:
        """Read the whole database again and rebuild every gateway (after the file was
        replaced by an acceptable one: its history may differ from ours)."""
        ident, objects = await asyncio.to_thread(self.store.load_state)
        before = set(self.objects["gateway"])
        self.objects = {kind: {} for kind in KINDS}
        self.by_gateway = {}
        self.invalid = {}
        for obj in objects:
            self._put(obj.kind, obj.name, obj)  # type: ignore[union-attr]
        self._set_identity(ident)
        gateways = set(self.objects["gateway"]) | {n for k, n in self.invalid if k == "gateway"}
        self._rebuild(before | gateways, ident.revision)
        self.revision = ident.revision
        self._publish_listing(None)
        self._schedule_record()

    # -- translation --------------------------------------------------------------------------

    def _put(self, kind: str, name: str, obj: PolicyModel | Unloadable | None) -> None:
        """Replace one object in the state and in the per-gateway route index; an object
        that does not validate is left out of the state and kept in ``invalid``."""
        if isinstance(obj, Unloadable):
            self.invalid[(kind, name)] = obj
            obj = None
        else:
            self.invalid.pop((kind, name), None)
        old = self.objects[kind].pop(name, None)
        if obj is not None:
            self.objects[kind][name] = obj
        if isinstance(old, Route):
            for gateway in old.gateways:
                self.by_gateway.get(gateway, {}).pop(name, None)
        if isinstance(obj, Route):
            for gateway in obj.gateways:
                self.by_gateway.setdefault(gateway, {})[name] = obj
        if kind == "cluster" and obj is None:
            self._translator.forget_cluster(name)

    def _gateways_of(self, kind: str, name: str, obj: PolicyModel | Unloadable | None) -> set[str]:
        if obj is None:
            return set()
        if isinstance(obj, Unloadable):
            return {g for g in self._all_gateways() if self._concerns(g, obj)}
        if isinstance(obj, Gateway):
            return {obj.name}
        if isinstance(obj, Route):
            return set(obj.gateways)
        if isinstance(obj, Cluster):
            return {g for g in self.by_gateway if self._translator.uses_cluster(g, name)}
        if isinstance(obj, Certificate):  # the gateways whose tls names it
            return {
                g.name
                for g in cast(dict[str, Gateway], self.objects["gateway"]).values()
                if g.tls is not None and name in g.tls.certificates
            }
        if isinstance(obj, Plan):  # only gateways whose routes limit by consumer
            return {g for g in self.by_gateway if self._translator.uses_plans(g)} | {
                g.name
                for g in cast(dict[str, Gateway], self.objects["gateway"]).values()
                if g.rate_limit is not None and g.rate_limit.key == "consumer"
            }
        # identity providers, consumers and keys are shared by every gateway
        return set(self.objects["gateway"])

    def _quota_boundary(self) -> None:
        """Refusals of calendar quotas name the window's end: rebuild every gateway at each
        midnight of the time zones quotas use (the quota filters then carry the next end)."""
        now = time.time()
        if self._next_boundary is None:
            self._next_boundary = next_quota_boundary(self.objects, now)
        if now < self._next_boundary:
            return
        self._next_boundary = next_quota_boundary(self.objects, now + 1)
        log.info("a quota window ended: rebuilding every gateway")
        self._rebuild(set(self.objects["gateway"]), self.revision, retried=set(self.errors))

    def _expire_keys(self) -> None:
        """Envoy cannot expire a key by itself: rebuild when the next one expires."""
        self._quota_boundary()
        now = datetime.now(UTC)
        if self._next_expiry is None or now < self._next_expiry:
            return
        log.info("an API key expired: rebuilding every gateway")
        self._rebuild(set(self.objects["gateway"]), self.revision, retried=set(self.errors))

    def _all_gateways(self) -> set[str]:
        return set(self.objects["gateway"]) | {n for k, n in self.invalid if k == "gateway"}

    def _concerns(self, gateway: str, bad: Unloadable) -> bool:
        """Whether the stored object ``bad`` (which does not validate) is part of
        ``gateway``'s configuration, as far as its state and the raw row tell."""
        if bad.kind == "gateway":
            return bad.name == gateway
        if bad.kind == "route":
            spec = bad.spec if isinstance(bad.spec, dict) else {}
            names = spec.get("gateways")
            return not isinstance(names, list) or gateway in names
        if bad.kind in ("consumer", "api_key", "plan"):
            return True  # identities and plans are shared by every gateway
        target = (bad.kind, bad.name)
        gw = self.objects["gateway"].get(gateway)
        users = [*self.by_gateway.get(gateway, {}).values(), *([gw] if gw else [])]
        return any(target in references(obj) for obj in users)

    def _fault(self, gateway: str) -> Unloadable | None:
        for bad in self.invalid.values():
            if self._concerns(gateway, bad):
                return bad
        return None

    def _rebuild(
        self,
        gateways: set[str],
        revision: int,
        changed_routes: frozenset[str] | None = None,
        retried: set[str] | frozenset[str] = frozenset(),
    ) -> None:
        """Translate ``gateways`` at ``revision``; ``changed_routes``, when known, spares
        the translator a scan of every route. ``retried``: gateways rebuilt only because
        they failed before (their failure stays dated at the revision that caused it)."""
        clusters = cast(dict[str, Cluster], self.objects["cluster"])
        for name in sorted(gateways):
            gateway = cast(Gateway | None, self.objects["gateway"].get(name))
            try:
                bad = self._fault(name)
                if bad is not None:
                    raise TranslationError(
                        f"stored {bad.problem} (fix it with update or apply, or delete it)"
                    )
                if gateway is None:
                    self._translator.forget_gateway(name)
                    resources = Resources()
                else:
                    routes = self.by_gateway.get(name, {})
                    view = GatewayView(gateway, routes, clusters, self.objects, changed_routes)
                    resources = self._translator.translate(view)
                previous = self.cache.published(name)
                snapshot = build_snapshot(
                    name, revision, resources, previous, self._fragments, self._database_id()
                )
            except Exception as exc:
                self._failed(name, revision, exc, retried=name in retried)
                continue
            self.errors.pop(name, None)
            self.failed_at.pop(name, None)
            self.cache.publish(snapshot)
        self._next_expiry = next_key_expiry(self.objects["api_key"], datetime.now(UTC))
        self._next_boundary = None  # the zones in use may have changed
        for name in self.cache.gateways():  # unaffected gateways are current at this revision
            if name not in gateways:
                self.cache.advance(name, revision)

    def _failed(self, name: str, revision: int, exc: Exception, *, retried: bool) -> None:
        """Record why ``name`` keeps its last good configuration."""
        if isinstance(exc, GatewayError):
            message = str(exc)
            log.error("gateway %s keeps its last good configuration: %s", name, message)
        else:  # a bug, or a value no check caught: still only this gateway's problem
            message = f"translation failed: {type(exc).__name__}: {exc}"
            log.exception("gateway %s keeps its last good configuration", name)
        message = " ".join(message.split())
        self.errors[name] = message
        if not retried or name not in self.failed_at:
            self.failed_at[name] = revision
        # the next attempt starts from a clean table: a half-added route is not kept
        self._translator.forget_gateway(name)
        self.cache.withhold(name)  # no configuration yet: its proxies keep what they run

    def builds(self) -> dict[str, tuple[int, str | None]]:
        """gateway -> (revision its configuration last changed, or the revision whose change
        it failed to apply; error or None), for ``status``, ``--wait`` and ``/status``."""
        out: dict[str, tuple[int, str | None]] = {}
        for name in self.cache.gateways():
            out[name] = (self.cache.get(name).changed_revision, None)
        for name, error in self.errors.items():
            out[name] = (self.failed_at.get(name, self.revision), error)
        return out

    # -- status -------------------------------------------------------------------------------

    def _schedule_checkpoint(self) -> None:
        """Keep the SQLite WAL empty between bursts of writes: a file put in place of the
        database is then not mixed with the old database's WAL frames (SQLite pairs a
        -wal with whatever file has the name)."""
        if self._file is None or self.store.paused:
            return
        if self._checkpoint_task is None or self._checkpoint_task.done():
            self._checkpoint_task = asyncio.create_task(asyncio.to_thread(self.store.checkpoint))

    def _schedule_members(self) -> None:
        if self._members_task is None or self._members_task.done():
            self._members_task = asyncio.create_task(self._read_members())

    async def _read_members(self) -> None:
        """Envoys other live controllers serve, per gateway, so rate-limit budgets are
        divided among every replica of a gateway, not only this controller's."""
        try:
            proxies, controllers = await asyncio.gather(
                asyncio.to_thread(self.store.proxies), asyncio.to_thread(self.store.controllers)
            )
        except Exception:
            log.exception("could not read other controllers' proxies")
            return
        now = time.time()
        alive = {c for c, _addr, _rev, beat in controllers if now - beat < DEAD_AFTER}
        counts: dict[str, int] = {}
        for p in proxies:
            if p.connected and p.controller != self.controller and p.controller in alive:
                counts[p.gateway] = counts.get(p.gateway, 0) + 1
        self.cache.set_remote_members(counts)

    def _schedule_proxy_expiry(self) -> None:
        if self._expire_task is None or self._expire_task.done():
            self._expire_task = asyncio.create_task(self._expire_proxies())

    async def _expire_proxies(self) -> None:
        """Forget proxies that left (or whose controller died) ``proxy_expiry`` ago, and
        controllers dead for that long, so no row - a crashed controller's, or one a client
        invented - stays in ``status``."""
        before = time.time() - self.proxy_expiry
        try:
            n = await asyncio.to_thread(self.store.expire_proxies, before, DEAD_AFTER)
            dead = await asyncio.to_thread(self.store.expire_controllers, before, DEAD_AFTER)
        except Exception:
            log.exception("could not expire old proxy and controller status rows")
            return
        if n:
            log.info("forgot %d proxy status row(s) gone for over %.0f s", n, self.proxy_expiry)
        if dead:
            log.info("forgot %d controller(s) dead for over %.0f s", dead, self.proxy_expiry)

    def _schedule_history_prune(self) -> None:
        if self._prune_task is None or self._prune_task.done():
            self._prune_task = asyncio.create_task(self._prune_history())

    async def _prune_history(self) -> None:
        """Delete change rows older than ``--history-retention`` (whole revisions)."""
        try:
            n = await asyncio.to_thread(
                prune_history, self.store, self.history_retention, None, DEAD_AFTER
            )
        except Exception:
            log.exception("could not prune old policy history")
            return
        if n:
            log.info(
                "pruned %d change row(s) beyond the history retention (%s)",
                n,
                self.history_retention.label(),
            )

    def _schedule_record(self) -> None:
        if self._record_task is None or self._record_task.done():
            self._record_task = asyncio.create_task(self._record())

    async def _record(self) -> None:
        """Tell CLIs waiting on ``--wait`` which revision this controller has translated:
        once the streams have sent it (within ``RECORD_WAIT``), as ``--wait`` also waits for
        the proxies' ACKs, and this write would otherwise slow that push down."""
        await self.cache.pushes_done(RECORD_WAIT)
        recorded = None
        while recorded != self.revision:
            recorded = self.revision
            builds = self.builds()
            try:
                await asyncio.to_thread(
                    self.store.save_builds,
                    self.controller,
                    self.xds_address,
                    recorded,
                    builds,
                    self.started_at,
                )
            except Exception:
                log.exception("could not record build status")
                return

"""The policy store: every change is one transaction that bumps the revision.

Callers hand over validated policy objects; the store adds what only the database can
check atomically (names unique, references resolvable at commit time) and records which
objects each revision touched so watchers read only the difference.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Connection, delete, insert, inspect, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError, SQLAlchemyError

from ..errors import Conflict, NotFound, PolicyInvalid, StoreError
from ..policy import (
    CONTENT_KINDS,
    KINDS,
    PLURALS,
    Bundle,
    PolicyModel,
    content_errors,
    format_validation_error,
    parse_object,
    references,
)
from .db import RevisionProbe, make_engines, normalize_url
from .tables import Change, ControllerRow, EventRow, GatewayBuild, Meta, ProxyRow, Ref, Resource

__all__ = ["ApplyResult", "ObjectChange", "ProxyStatus", "Store", "Unloadable"]

_MIGRATIONS = Path(__file__).parent / "migrations"
#: newest migration; a test checks it against alembic's head. Comparing it with one query
#: keeps alembic (150 ms to import) out of every CLI call on an up-to-date database.
SCHEMA_HEAD = "0002"
#: PostgreSQL advisory lock held while migrating
_MIGRATE_LOCK = 0x6761_7465


@dataclass(frozen=True)
class ObjectChange:
    """One object created, updated or deleted, with its canonical spec before and after."""

    op: str
    kind: str
    name: str
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None


@dataclass(frozen=True)
class ApplyResult:
    revision: int
    changes: list[ObjectChange] = field(default_factory=list)


@dataclass(frozen=True)
class Unloadable:
    """A stored object that no longer validates: written before a check existed, by an
    older or newer version, or straight into the database. The controller reports it and
    leaves the gateways it concerns on their last good configuration."""

    kind: str
    name: str
    spec: Any
    #: one line naming the object and field, e.g. ``cluster 'app': circuit_breakers...``
    problem: str


@dataclass(frozen=True)
class ProxyStatus:
    node_id: str
    gateway: str
    controller: str
    connected: bool
    address: str
    envoy_version: str
    acked_revision: int
    nack_revision: int | None
    nack_type: str | None
    nack_error: str | None
    nack_objects: str | None
    connected_at: float
    updated_at: float
    acked_at: float | None = None


class Store:
    """Policy and status in one SQL database (SQLite file or PostgreSQL)."""

    def __init__(self, db: str | None = None, *, migrate: bool = True) -> None:
        self.url = normalize_url(db)
        try:
            self._writer, self._reader = make_engines(self.url)
        except (SQLAlchemyError, ImportError) as exc:
            raise StoreError(f"cannot open database {self.url!r}: {exc}") from None
        if migrate:
            self.migrate()

    def close(self) -> None:
        self._writer.dispose()
        self._reader.dispose()

    # -- schema ---------------------------------------------------------------------------

    def migrate(self) -> None:
        """Bring the schema to the newest migration (one query when it already is)."""
        try:
            if self.schema_version() == SCHEMA_HEAD:
                return
            from alembic import command

            with self._writer.begin() as conn:
                if conn.dialect.name == "postgresql":
                    # Controllers starting together: one migrates, the others wait here and
                    # then find the schema current (alembic re-reads the version).
                    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATE_LOCK})
                cfg = alembic_config()
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
        except (OperationalError, ProgrammingError) as exc:
            raise StoreError(f"cannot open database {self.url!r}: {exc.orig}") from None

    def schema_version(self) -> str | None:
        with self._reader.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return None
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()

    # -- reads ----------------------------------------------------------------------------

    def probe(self) -> RevisionProbe:
        """A dedicated cheap commit detector (see :class:`RevisionProbe`)."""
        return RevisionProbe(self._reader)

    def revision(self) -> int:
        with self._reader.connect() as conn:
            return int(conn.execute(select(Meta.revision).where(Meta.id == 1)).scalar_one())

    def get(self, kind: str, name: str) -> PolicyModel:
        with self._reader.connect() as conn:
            spec = conn.execute(
                select(Resource.spec).where(Resource.kind == kind, Resource.name == name)
            ).scalar_one_or_none()
        if spec is None:
            raise NotFound(f"{kind} {name!r} does not exist")
        return _load(kind, spec)

    def list_objects(self, kind: str) -> list[PolicyModel]:
        with self._reader.connect() as conn:
            rows = conn.execute(
                select(Resource.spec).where(Resource.kind == kind).order_by(Resource.name)
            ).scalars()
            return [_load(kind, spec) for spec in rows]

    def load_all(self) -> tuple[int, list[PolicyModel]]:
        """Every object and the revision they belong to, read in one transaction; a stored
        object that does not validate raises StoreError naming it."""
        rev, objects = self.load_all_checked()
        for obj in objects:
            if isinstance(obj, Unloadable):
                raise StoreError(_unloadable_message(obj))
        return rev, objects  # type: ignore[return-value]  # checked above

    def load_all_checked(self) -> tuple[int, list[PolicyModel | Unloadable]]:
        """Like load_all, with an :class:`Unloadable` in place of each object that does not
        validate, so one bad row never stops a controller from loading the rest."""
        with self._reader.begin() as conn:
            rev = int(conn.execute(select(Meta.revision).where(Meta.id == 1)).scalar_one())
            rows = conn.execute(select(Resource.kind, Resource.name, Resource.spec)).all()
        return rev, [_load_checked(kind, name, spec) for kind, name, spec in rows if kind in KINDS]

    def bundle(self) -> Bundle:
        return Bundle.from_objects(self.load_all()[1])

    def changes_since(
        self, revision: int
    ) -> tuple[int, list[tuple[str, str, PolicyModel | Unloadable | None]]]:
        """(newest revision, [(kind, name, object, Unloadable if it does not validate, or
        None if deleted)]) after ``revision``."""
        with self._reader.begin() as conn:
            rev = int(conn.execute(select(Meta.revision).where(Meta.id == 1)).scalar_one())
            if rev == revision:
                return rev, []
            touched = conn.execute(
                select(Change.kind, Change.name)
                .where(Change.revision > revision, Change.revision <= rev)
                .distinct()
            ).all()
            out: list[tuple[str, str, PolicyModel | Unloadable | None]] = []
            for kind, name in touched:
                spec = conn.execute(
                    select(Resource.spec).where(Resource.kind == kind, Resource.name == name)
                ).scalar_one_or_none()
                obj = None if spec is None else _load_checked(kind, name, spec)
                out.append((kind, name, obj))
        return rev, out

    def changed_objects(self, after: int, upto: int) -> list[tuple[str, str]]:
        """Objects touched by revisions in (after, upto]: the suspects of a rejection."""
        with self._reader.connect() as conn:
            rows = conn.execute(
                select(Change.kind, Change.name)
                .where(Change.revision > after, Change.revision <= upto)
                .distinct()
                .order_by(Change.kind, Change.name)
            ).all()
        return [(k, n) for k, n in rows]

    # -- writes ---------------------------------------------------------------------------

    def create(self, obj: PolicyModel) -> int:
        return self._commit([("create", obj.kind, obj.name, obj)]).revision  # type: ignore[attr-defined]

    def replace(self, obj: PolicyModel) -> int:
        return self._commit([("update", obj.kind, obj.name, obj)]).revision  # type: ignore[attr-defined]

    def update(
        self, kind: str, name: str, patch: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> ApplyResult:
        """Read-modify-write inside the write transaction, so concurrent patches both land."""

        def plan(current: dict[tuple[str, str], dict[str, Any]]) -> list[_Op]:
            spec = current.get((kind, name))
            if spec is None:
                raise NotFound(f"{kind} {name!r} does not exist")
            new = parse_object(kind, patch(dict(spec)), f"{kind} {name!r}")
            if new.name != name:  # type: ignore[attr-defined]
                raise PolicyInvalid(f"{kind} {name!r}: name: cannot be changed by update")
            return [("update", kind, name, new)]

        return self._commit(plan, keys=[(kind, name)])

    def apply_objects(self, objects: Iterable[PolicyModel]) -> ApplyResult:
        """Create or replace these objects in one transaction, leaving others alone."""
        ops: list[_Op] = []
        wanted = {(o.kind, o.name): o for o in objects}  # type: ignore[attr-defined]

        def plan(current: dict[tuple[str, str], dict[str, Any]]) -> list[_Op]:
            for key, obj in wanted.items():
                if key not in current:
                    ops.append(("create", *key, obj))
                elif current[key] != obj.spec():
                    ops.append(("update", *key, obj))
            return ops

        return self._commit(plan, keys=list(wanted))

    def delete(self, kind: str, name: str) -> int:
        return self._commit([("delete", kind, name, None)]).revision

    def apply(self, bundle: Bundle, *, prune: bool = False, dry_run: bool = False) -> ApplyResult:
        """Make the store hold the bundle's objects (and, with prune, nothing else)."""
        wanted = {(o.kind, o.name): o for o in bundle.objects()}  # type: ignore[attr-defined]

        def plan(current: dict[tuple[str, str], dict[str, Any]]) -> list[_Op]:
            ops: list[_Op] = []
            for key, obj in wanted.items():
                if key not in current:
                    ops.append(("create", *key, obj))
                elif current[key] != obj.spec():
                    ops.append(("update", *key, obj))
            if prune:  # only declarative kinds: API keys are not in files
                ops += [
                    ("delete", *key, None)
                    for key in current
                    if key not in wanted and key[0] in PLURALS
                ]
            return ops

        return self._commit(plan, dry_run=dry_run)

    # -- the one write path -------------------------------------------------------------

    def _commit(
        self,
        plan: Sequence[_Op] | Callable[[dict[tuple[str, str], dict[str, Any]]], list[_Op]],
        *,
        keys: Iterable[tuple[str, str]] | None = None,
        dry_run: bool = False,
    ) -> ApplyResult:
        try:
            with self._writer.begin() as conn:
                return self._commit_in(conn, plan, keys, dry_run)
        except OperationalError as exc:
            raise StoreError(f"database error: {exc.orig}") from None

    def _commit_in(
        self,
        conn: Connection,
        plan: Sequence[_Op] | Callable[[dict[tuple[str, str], dict[str, Any]]], list[_Op]],
        keys: Iterable[tuple[str, str]] | None,
        dry_run: bool,
    ) -> ApplyResult:
        # Bumping first takes the write lock (the meta row in PostgreSQL), so everything read
        # below is current and no concurrent writer can interleave.
        conn.execute(update(Meta).where(Meta.id == 1).values(revision=Meta.revision + 1))
        rev = int(conn.execute(select(Meta.revision).where(Meta.id == 1)).scalar_one())
        if callable(plan):
            query = select(Resource.kind, Resource.name, Resource.spec)
            if keys is not None:
                wanted = list(keys)
                query = query.where(
                    Resource.kind.in_({k for k, _ in wanted}),
                    Resource.name.in_({n for _, n in wanted}),
                )
            current = {(k, n): s for k, n, s in conn.execute(query)}
            ops = plan(current)
        else:
            ops = list(plan)
            current = _fetch(conn, [(k, n) for _, k, n, _ in ops])

        changes: list[ObjectChange] = []
        for op, kind, name, obj in ops:
            before = current.get((kind, name))
            if op == "create" and before is not None:
                raise Conflict(f"{kind} {name!r} already exists (use update or apply)")
            if op in ("update", "delete") and before is None:
                raise NotFound(f"{kind} {name!r} does not exist")
            after = obj.spec() if obj is not None else None
            if op == "update" and after == before:
                continue  # an update to the same content is no change and bumps nothing
            changes.append(ObjectChange(op, kind, name, before, after))
        if not changes or dry_run:
            conn.rollback()
            return ApplyResult(rev - 1, changes)

        objects = {(k, n): o for _, k, n, o in ops}
        created, edges = [], []
        for ch in changes:
            obj = objects[(ch.kind, ch.name)]
            key = (Resource.kind == ch.kind) & (Resource.name == ch.name)
            if ch.op == "create":  # new objects have no edges yet; inserted in bulk below
                created.append(
                    {"kind": ch.kind, "name": ch.name, "spec": ch.after, "revision": rev}
                )
            else:
                conn.execute(delete(Ref).where((Ref.kind == ch.kind) & (Ref.name == ch.name)))
                if ch.op == "update":
                    conn.execute(update(Resource).where(key).values(spec=ch.after, revision=rev))
                else:
                    conn.execute(delete(Resource).where(key))
            if obj is not None:
                edges += [
                    {"kind": ch.kind, "name": ch.name, "to_kind": tk, "to_name": tn}
                    for tk, tn in sorted(set(references(obj)))
                ]
        if created:
            conn.execute(insert(Resource), created)
        if edges:
            conn.execute(insert(Ref), edges)
        _check_references(conn, {(c.kind, c.name) for c in changes if c.op == "delete"})
        _check_contents(conn, changes, objects)
        conn.execute(
            insert(Change),
            [
                {"revision": rev, "kind": c.kind, "name": c.name, "op": c.op, "at": time.time()}
                for c in changes
            ],
        )
        return ApplyResult(rev, changes)

    # -- status (written by controllers, read by the CLI) ---------------------------------

    def save_proxy(self, status: ProxyStatus) -> None:
        values = status.__dict__.copy()

        self._write_status(lambda conn: _upsert(conn, ProxyRow.node_id, status.node_id, values))

    def _write_status(self, write: Callable[[Connection], None]) -> None:
        """Run an update-else-insert transaction. On PostgreSQL two controllers can both find
        no row and both insert; the second fails on the key, and its rerun updates the row."""
        for attempt in range(3):
            try:
                with self._writer.begin() as conn:
                    write(conn)
                return
            except IntegrityError:
                if attempt == 2:
                    raise

    def disconnect_controller_proxies(self, controller: str) -> None:
        with self._writer.begin() as conn:
            conn.execute(
                update(ProxyRow)
                .where(ProxyRow.controller == controller)
                .values(connected=False, updated_at=time.time())
            )

    def proxies(self) -> list[ProxyStatus]:
        columns = [getattr(ProxyRow, f) for f in ProxyStatus.__dataclass_fields__]
        with self._reader.connect() as conn:
            rows = conn.execute(select(*columns).order_by(ProxyRow.gateway, ProxyRow.node_id)).all()
        return [ProxyStatus(**row._asdict()) for row in rows]

    def save_builds(
        self,
        controller: str,
        xds_address: str,
        revision: int,
        builds: dict[str, tuple[int, str | None]],
        started_at: float,
    ) -> None:
        """Record that ``controller`` translated ``revision``; gateway -> (changed, error)."""
        now = time.time()

        def write(conn: Connection) -> None:
            for gateway, (changed, error) in builds.items():
                build = {"built_revision": revision, "changed_revision": changed, "error": error}
                _upsert(conn, GatewayBuild.gateway, gateway, build)
            liveness = {
                "xds_address": xds_address,
                "built_revision": revision,
                "heartbeat_at": now,
                "started_at": started_at,
            }
            _upsert(conn, ControllerRow.id, controller, liveness)

        self._write_status(write)

    def gateway_builds(self) -> dict[str, tuple[int, int, str | None]]:
        with self._reader.connect() as conn:
            rows = conn.execute(
                select(
                    GatewayBuild.gateway,
                    GatewayBuild.built_revision,
                    GatewayBuild.changed_revision,
                    GatewayBuild.error,
                )
            ).all()
        return {g: (b, c, e) for g, b, c, e in rows}

    def controllers(self) -> list[tuple[str, str, int, float]]:
        with self._reader.connect() as conn:
            rows = conn.execute(
                select(
                    ControllerRow.id,
                    ControllerRow.xds_address,
                    ControllerRow.built_revision,
                    ControllerRow.heartbeat_at,
                )
            ).all()
        return [(i, a, r, h) for i, a, r, h in rows]

    # -- event history (not policy: never bumps the revision) --------------------------------

    def add_events(self, events: list[dict[str, Any]], keep: int = 100_000) -> None:
        """Append events; beyond ``keep`` rows the oldest are deleted (checked now and then)."""
        with self._writer.begin() as conn:
            conn.execute(insert(EventRow), events)
            last = conn.execute(select(EventRow.id).order_by(EventRow.id.desc()).limit(1)).scalar()
            if last is not None and last % 1000 < len(events):
                conn.execute(delete(EventRow).where(EventRow.id <= last - keep))

    def events(self, since: float | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The newest events and policy changes (oldest first), merged by time."""
        with self._reader.connect() as conn:
            q = select(
                EventRow.at,
                EventRow.kind,
                EventRow.gateway,
                EventRow.node,
                EventRow.revision,
                EventRow.detail,
            )
            c = select(Change.at, Change.op, Change.kind, Change.name, Change.revision).where(
                Change.at.is_not(None)
            )
            if since is not None:
                q = q.where(EventRow.at >= since)
                c = c.where(Change.at >= since)
            rows = conn.execute(q.order_by(EventRow.at.desc()).limit(limit)).all()
            changes = conn.execute(c.order_by(Change.id.desc()).limit(limit)).all()
        out = [
            {"at": at, "kind": kind, "gateway": gw, "node": node, "revision": rev, "detail": d}
            for at, kind, gw, node, rev, d in rows
        ]
        out += [
            {
                "at": at,
                "kind": "change",
                "gateway": "",
                "node": "",
                "revision": rev,
                "detail": f"{op} {kind} {name}",
            }
            for at, op, kind, name, rev in changes
        ]
        out.sort(key=lambda e: float(e["at"] or 0))
        return out[-limit:]

    def ping(self) -> None:
        with self._reader.connect() as conn:
            conn.execute(text("SELECT 1"))


_Op = tuple[str, str, str, PolicyModel | None]


def _upsert(conn: Connection, column: Any, key: str, values: dict[str, Any]) -> None:
    """Update the row whose ``column`` is ``key``, or insert it (see ``_write_status``)."""
    table = column.class_
    done = conn.execute(update(table).where(column == key).values(**values))
    if done.rowcount == 0:
        conn.execute(insert(table).values({column.key: key, **values}))


def alembic_config() -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    return cfg


def _load(kind: str, spec: dict[str, Any]) -> PolicyModel:
    """A stored object; StoreError (one line naming it) if it does not validate."""
    obj = _load_checked(kind, str(spec.get("name") if isinstance(spec, dict) else "?"), spec)
    if isinstance(obj, Unloadable):
        raise StoreError(_unloadable_message(obj))
    return obj


def _load_checked(kind: str, name: str, spec: Any) -> PolicyModel | Unloadable:
    try:
        return KINDS[kind].model_validate(spec)
    except ValidationError as exc:
        return Unloadable(kind, name, spec, format_validation_error(exc, f"{kind} {name!r}"))
    except Exception as exc:
        return Unloadable(kind, name, spec, f"{kind} {name!r}: cannot be loaded: {exc!r}")


def _unloadable_message(obj: Unloadable) -> str:
    return (
        f"stored {obj.problem} (written before this check or outside gatewayctl; "
        f"fix it with update or apply, or delete it)"
    )


def _fetch(conn: Connection, keys: list[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for kind, name in keys:
        spec = conn.execute(
            select(Resource.spec).where(Resource.kind == kind, Resource.name == name)
        ).scalar_one_or_none()
        if spec is not None:
            out[(kind, name)] = spec
    return out


def _check_contents(
    conn: Connection,
    changes: list[ObjectChange],
    objects: dict[tuple[str, str], PolicyModel | None],
) -> None:
    """What referenced objects hold (a proto's services), checked inside the transaction:
    for the objects written, and for the referrers of an updated proto."""
    loaded: dict[tuple[str, str], PolicyModel | None] = {}

    def lookup(kind: str, name: str) -> PolicyModel | None:
        key = (kind, name)
        if key not in loaded:
            obj = objects.get(key)
            if obj is None:
                spec = _fetch(conn, [key]).get(key)
                # a stored object that does not validate has no content to check against;
                # it is reported by the controller, and refused when it is written again
                checked = _load_checked(kind, name, spec) if spec is not None else None
                obj = None if isinstance(checked, Unloadable) else checked
            loaded[key] = obj
        return loaded[key]

    checked = [
        obj
        for c in changes
        if c.op != "delete"
        and (obj := objects.get((c.kind, c.name))) is not None
        and hasattr(obj, "reference_problem")
    ]
    for c in changes:
        if c.op != "update" or c.kind not in CONTENT_KINDS:
            continue
        rows = conn.execute(
            select(Ref.kind, Ref.name).where(Ref.to_kind == c.kind, Ref.to_name == c.name)
        )
        for kind, name in rows:
            if (kind, name) not in objects:
                referrer = lookup(kind, name)
                if referrer is not None:
                    checked.append(referrer)
    problems = content_errors(checked, lookup)
    if problems:
        raise PolicyInvalid(problems[0])


def _check_references(conn: Connection, deleted: set[tuple[str, str]]) -> None:
    target = Resource.__table__.alias("target")
    dangling = conn.execute(
        select(Ref.kind, Ref.name, Ref.to_kind, Ref.to_name)
        .select_from(
            Ref.__table__.outerjoin(
                target, (target.c.kind == Ref.to_kind) & (target.c.name == Ref.to_name)
            )
        )
        .where(target.c.name.is_(None))
        .limit(1)
    ).first()
    if dangling is None:
        return
    kind, name, to_kind, to_name = dangling
    if (to_kind, to_name) in deleted:
        raise Conflict(f"cannot delete {to_kind} {to_name!r}: {kind} {name!r} uses it")
    raise PolicyInvalid(f"{kind} {name!r}: {to_kind} {to_name!r} does not exist")

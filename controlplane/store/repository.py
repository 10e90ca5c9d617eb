"""The policy store: every change is one transaction that bumps the revision.

Callers hand over validated policy objects; the store adds what only the database can
check atomically (names unique, references resolvable at commit time) and records which
objects each revision touched so watchers read only the difference.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import (
    Connection,
    Engine,
    bindparam,
    delete,
    func,
    insert,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError, ProgrammingError, SQLAlchemyError

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
from .actor import current_actor
from .db import (
    FilePin,
    RevisionProbe,
    create_sqlite_file,
    make_engines,
    normalize_url,
    sqlite_path,
)
from .secrets import Sealed, SecretKeys
from .tables import (
    Change,
    ControllerRow,
    EventRow,
    GatewayBuild,
    Lineage,
    Meta,
    ProxyRow,
    Ref,
    Resource,
)

__all__ = [
    "ApplyResult",
    "Identity",
    "ObjectChange",
    "ProxyStatus",
    "SecretsReport",
    "Store",
    "Unloadable",
    "Validator",
    "WriteView",
]

log = logging.getLogger(__name__)

_MIGRATIONS = Path(__file__).parent / "migrations"
#: newest migration; a test checks it against alembic's head. Comparing it with one query
#: keeps alembic (150 ms to import) out of every CLI call on an up-to-date database.
SCHEMA_HEAD = "0006"
#: PostgreSQL advisory lock held while migrating
_MIGRATE_LOCK = 0x6761_7465


@dataclass(frozen=True, slots=True)
class ObjectChange:
    """One object created, updated or deleted, with its canonical spec before and after.
    (Slots: a bulk apply holds one per object, 50,000 of them.)"""

    op: str
    kind: str
    name: str
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None


@dataclass(frozen=True)
class ApplyResult:
    revision: int
    changes: list[ObjectChange] = field(default_factory=list)
    #: what the user should hear about the write (e.g. that Envoy did not validate it)
    notes: list[str] = field(default_factory=list)


class WriteView:
    """The policy as a write would leave it, read inside the write's own transaction, for
    a :data:`Validator`: the validator runs after every check of the write and before its
    commit, so what it reads is exactly what would be committed."""

    def __init__(
        self,
        conn: Connection,
        secrets: SecretKeys,
        changes: list[ObjectChange],
        objects: dict[tuple[str, str], PolicyModel | None],
        dry_run: bool,
    ) -> None:
        self._conn = conn
        self._secrets = secrets
        #: the objects this write creates, updates or deletes
        self.changes = changes
        #: whether the write is a dry run (rolled back whatever the validator says)
        self.dry_run = dry_run
        self._written = objects
        self._cache: dict[tuple[str, str], PolicyModel | None] = {}

    def get(self, kind: str, name: str) -> PolicyModel | None:
        """The object as the write leaves it (None: absent or does not validate)."""
        key = (kind, name)
        if key in self._written:
            return self._written[key]
        if key not in self._cache:
            spec = _fetch(self._conn, [key], self._secrets).get(key)
            obj = _load_checked(kind, name, spec) if spec is not None else None
            self._cache[key] = None if isinstance(obj, Unloadable) else obj
        return self._cache[key]

    def all_of(self, kind: str) -> dict[str, PolicyModel]:
        """Every object of ``kind`` as the write leaves it (those that validate)."""
        # names first: the specs of the objects this write holds are not read (at 50,000
        # written routes their decoded rows were ~12 MiB of a bulk apply's peak)
        names = self._conn.execute(select(Resource.name).where(Resource.kind == kind)).scalars()
        out: dict[str, PolicyModel | None] = {}
        stored: list[tuple[str, str]] = []
        for name in names:
            out[name] = self._written.get((kind, name))
            if out[name] is None:
                stored.append((kind, name))
        for (_, name), spec in _fetch(self._conn, stored, self._secrets).items():
            loaded = _load_checked(kind, name, spec)
            out[name] = None if isinstance(loaded, Unloadable) else loaded
        return {name: obj for name, obj in out.items() if obj is not None}

    def referrers(self, kind: str, name: str) -> list[tuple[str, str]]:
        """(kind, name) of the objects that reference ``kind`` ``name`` after the write."""
        rows = self._conn.execute(
            select(Ref.kind, Ref.name).where(Ref.to_kind == kind, Ref.to_name == name)
        ).all()
        return sorted((k, n) for k, n in rows)


#: called by every write after its checks and before its commit (also for a dry run);
#: raises (e.g. :class:`~controlplane.errors.PolicyRejected`) to refuse the write, returns
#: notes for the user (``ApplyResult.notes``)
Validator = Callable[[WriteView], list[str]]


@dataclass(frozen=True)
class SecretsReport:
    """Which keys the database's secrets are encrypted with, and which keys are configured."""

    source: str
    configured: list[str]
    current: str | None
    rows_by_key: dict[str, int]
    clear_rows: int


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
    hold: str | None = None


@dataclass(frozen=True)
class Identity:
    """Which database and revision a controller serves, and the databases a restore brought
    into it (id -> the revision restored): what proxies' reported versions are checked
    against so that no proxy is rolled back."""

    database_id: str
    revision: int
    lineage: dict[str, int] = field(default_factory=dict)

    def label(self) -> str:
        return f"revision {self.revision} of database {self.database_id}"


def _one_line(exc: BaseException | None) -> str:
    """A driver's error as one line (psycopg adds a hint on a second line)."""
    return " ".join(str(exc).split())


def init_hint(url: str) -> str:
    """How to create the database ``url`` names, for error messages."""
    return f"create it with: gatewayctl init --db {display_url(url)}"


def display_url(url: str) -> str:
    """A database for messages: the SQLite file's path, or the URL without its password."""
    path = sqlite_path(url)
    if path is not None:
        return path
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


#: event rows kept; beyond that the oldest are deleted (checked now and then)
_EVENTS_KEPT = 100_000


class Store:
    """Policy and status in one SQL database (SQLite file or PostgreSQL).

    Opening never creates a database: a missing SQLite file or a PostgreSQL database
    without the schema is a :class:`StoreError` naming how to create it, unless
    ``create`` is set (``gatewayctl init``, ``up``, ``serve --create``). An existing
    database with an older schema is migrated.
    """

    def __init__(
        self,
        db: str | None = None,
        *,
        migrate: bool = True,
        create: bool = False,
        secrets: SecretKeys | None = None,
        validator: Validator | None = None,
    ) -> None:
        self.url = normalize_url(db)
        #: checks every write before its commit (``controlplane.validate``: the real Envoy)
        self.validator = validator
        parsed = make_url(self.url)
        sqlite = parsed.get_backend_name() == "sqlite"
        #: the keys secret fields are encrypted with (read on first use)
        self.secrets = secrets or SecretKeys.for_database(parsed.database, sqlite)
        #: whether this Store created the database (the SQLite file or the schema)
        self.created = False
        #: set (to why) while nothing may be written: the file was replaced under a
        #: controller, and writing would mix its data into the new file through the WAL, or
        #: land in the removed file (status is skipped, policy writes refused)
        self.paused: str | None = None
        path = sqlite_path(self.url)
        if path is not None and not Path(path).exists():
            if not create:
                raise StoreError(f"database file {path} does not exist; {init_hint(self.url)}")
            try:
                self.created = create_sqlite_file(path)
            except OSError as exc:
                raise StoreError(f"cannot create database file {path}: {exc.strerror}") from None
        #: the file this store's connections may open (None: not a SQLite file)
        self.pin = FilePin(path) if path is not None else None
        #: called in the writing thread with the revision of each commit of a change: a
        #: watcher in this process looks at once instead of at its next file event or poll
        self.on_commit: list[Callable[[int], None]] = []
        try:
            self._writer, self._reader = make_engines(self.url, self.pin)
        except ImportError as exc:
            raise StoreError(
                f"cannot open database {display_url(self.url)}: {_missing_driver(self.url, exc)}"
            ) from None
        except SQLAlchemyError as exc:
            raise StoreError(
                f"cannot open database {display_url(self.url)}: {_one_line(exc)}"
            ) from None
        if migrate:
            if not create and self._schema_version_or_error() is None:
                self.close()
                raise StoreError(
                    f"database {display_url(self.url)} has no gateway schema; {init_hint(self.url)}"
                )
            self.created |= self._schema_version_or_error() is None
            self.migrate()

    def _schema_version_or_error(self) -> str | None:
        try:
            return self.schema_version()
        except (OperationalError, ProgrammingError) as exc:
            raise StoreError(
                f"cannot open database {display_url(self.url)}: {_one_line(exc.orig)}"
            ) from None

    def reopen(self, file: tuple[int, int] | None = None) -> None:
        """Drop every pooled connection: the next query opens the file at the path
        (after the file was replaced, pooled connections still read the old one). ``file``:
        the (device, inode) the caller checked; new connections open only that file."""
        self._writer.dispose()
        self._reader.dispose()
        if self.pin is not None:
            self.pin.accept(file)

    @property
    def writer_engine(self) -> Engine:
        """The writer engine, for state kept beside policy (quota counters)."""
        return self._writer

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
                cfg.attributes["secret_keys"] = self.secrets
                command.upgrade(cfg, "head")
            self._checkpoint()
        except (OperationalError, ProgrammingError) as exc:
            raise StoreError(
                f"cannot open database {display_url(self.url)}: {_one_line(exc.orig)}"
            ) from None

    def _checkpoint(self) -> None:
        """SQLite: copy the WAL into the database file and empty it, so values a migration
        or a rotation replaced survive in neither file (``secure_delete`` zeroed their old
        place). Best effort: a reader still open elsewhere can keep older frames alive."""
        if self._writer.dialect.name != "sqlite":
            return
        raw = self._writer.raw_connection()  # outside a transaction, as checkpoints must be
        try:
            raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        finally:
            raw.close()

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

    def identity(self) -> Identity:
        with self._reader.begin() as conn:
            return _identity(conn)

    def load_state(self) -> tuple[Identity, list[PolicyModel | Unloadable]]:
        """Every object and the identity (database, revision) they belong to, in one read."""
        with self._reader.begin() as conn:
            ident = _identity(conn)
            rows = conn.execute(select(Resource.kind, Resource.name, *_SPEC)).all()
        return ident, [
            _load_checked(kind, name, _spec(self.secrets, kind, name, *rest))
            for kind, name, *rest in rows
            if kind in KINDS
        ]

    def changes_state(
        self, revision: int
    ) -> tuple[Identity, list[tuple[str, str, PolicyModel | Unloadable | None]]]:
        """:meth:`changes_since` plus the identity read in the same transaction, so a
        replaced database (another id, a revision that went back) is seen before its
        changes are applied."""
        with self._reader.begin() as conn:
            ident = _identity(conn)
            if ident.revision <= revision:
                return ident, []
            return ident, _changes(conn, revision, ident.revision, self.secrets)

    def get(self, kind: str, name: str) -> PolicyModel:
        with self._reader.connect() as conn:
            spec = _fetch(conn, [(kind, name)], self.secrets).get((kind, name))
        if spec is None:
            raise NotFound(f"{kind} {name!r} does not exist")
        return _load(kind, spec)

    def clear_spec(self, kind: str, name: str) -> dict[str, Any]:
        """The stored spec without its secret fields, nothing decrypted: what can still be
        read of a row whose secret no longer decrypts (to check or remove it)."""
        with self._reader.connect() as conn:
            spec = conn.execute(
                select(Resource.spec).where(Resource.kind == kind, Resource.name == name)
            ).scalar()
        if spec is None:
            raise NotFound(f"{kind} {name!r} does not exist")
        return dict(spec)

    def list_objects(self, kind: str) -> list[PolicyModel]:
        with self._reader.connect() as conn:
            rows = conn.execute(
                select(Resource.name, *_SPEC).where(Resource.kind == kind).order_by(Resource.name)
            ).all()
        return [_load(kind, _spec(self.secrets, kind, name, *rest)) for name, *rest in rows]

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
            rows = conn.execute(select(Resource.kind, Resource.name, *_SPEC)).all()
        return rev, [
            _load_checked(kind, name, _spec(self.secrets, kind, name, *rest))
            for kind, name, *rest in rows
            if kind in KINDS
        ]

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
            return rev, _changes(conn, revision, rev, self.secrets)

    def revision_time(self, revision: int) -> float | None:
        """When ``revision`` was committed (epoch seconds); None if unknown (revision 0, or
        written before commit times were recorded)."""
        with self._reader.connect() as conn:
            at = conn.execute(select(func.max(Change.at)).where(Change.revision == revision))
            value = at.scalar_one_or_none()
        return None if value is None else float(value)

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

    def create(self, obj: PolicyModel, *, expect_revision: int | None = None) -> int:
        ops: list[_Op] = [("create", obj.kind, obj.name, obj)]  # type: ignore[attr-defined]
        return self._commit(ops, expect_revision=expect_revision).revision

    def replace(self, obj: PolicyModel, *, expect_revision: int | None = None) -> int:
        ops: list[_Op] = [("update", obj.kind, obj.name, obj)]  # type: ignore[attr-defined]
        return self._commit(ops, expect_revision=expect_revision).revision

    def update(
        self,
        kind: str,
        name: str,
        patch: Callable[[dict[str, Any]], dict[str, Any]],
        *,
        expect_revision: int | None = None,
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

        return self._commit(plan, keys=[(kind, name)], expect_revision=expect_revision)

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

    def delete(self, kind: str, name: str, *, expect_revision: int | None = None) -> int:
        return self._commit(
            [("delete", kind, name, None)], expect_revision=expect_revision
        ).revision

    def write(
        self,
        ops: Sequence[tuple[str, str, str, PolicyModel | None]],
        *,
        expect_revision: int | None = None,
        dry_run: bool = False,
    ) -> ApplyResult:
        """``(op, kind, name, object or None)`` operations in one transaction, with the
        objects' values before and after (what ``--atomic`` needs to undo them)."""
        return self._commit(list(ops), expect_revision=expect_revision, dry_run=dry_run)

    def revert(self, result: ApplyResult) -> ApplyResult:
        """Write back the values ``result``'s changes replaced, as a new revision (history
        is never rewritten); refused (Conflict) if anything was written since ``result``,
        so a later change is never undone blindly."""
        ops: list[_Op] = []
        for ch in reversed(result.changes):
            if ch.op == "create":
                ops.append(("delete", ch.kind, ch.name, None))
            else:
                assert ch.before is not None
                obj = _load(ch.kind, dict(ch.before))  # as stored: no new-input checks
                ops.append(("update" if ch.op == "update" else "create", ch.kind, ch.name, obj))
        return self._commit(ops, expect_revision=result.revision)

    def apply(
        self,
        bundle: Bundle,
        *,
        prune: bool = False,
        dry_run: bool = False,
        expect_revision: int | None = None,
        checks: bool = True,
        extra: Iterable[PolicyModel] = (),
    ) -> ApplyResult:
        """Make the store hold the bundle's objects (and, with prune, nothing else).

        ``dry_run`` runs the whole write (every check, so the answer is the real apply's)
        and rolls it back; ``checks=False`` with it only compares (``diff``). ``extra``:
        objects of kinds outside declarative files (API keys from ``export --secrets``),
        created or replaced, never pruned."""
        objects = [*bundle.objects(), *extra]
        wanted = {(o.kind, o.name): o for o in objects}  # type: ignore[attr-defined]

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

        if not checks:
            return self._commit(plan, dry_run=True, compare_only=True)
        return self._commit(plan, dry_run=dry_run, expect_revision=expect_revision)

    # -- the one write path -------------------------------------------------------------

    def _commit(
        self,
        plan: Sequence[_Op] | Callable[[dict[tuple[str, str], dict[str, Any]]], list[_Op]],
        *,
        keys: Iterable[tuple[str, str]] | None = None,
        dry_run: bool = False,
        expect_revision: int | None = None,
        compare_only: bool = False,
    ) -> ApplyResult:
        """Plan and write in one transaction. ``dry_run``: every check of the write runs,
        then the transaction is rolled back. ``expect_revision``: refused (Conflict) unless
        the database is still at the revision the change was planned against."""
        self.check_writable()
        try:
            with self._writer.begin() as conn:
                result = self._commit_in(
                    conn,
                    plan,
                    keys,
                    dry_run,
                    expect_revision=expect_revision,
                    compare_only=compare_only,
                )
        except OperationalError as exc:
            raise StoreError(f"database error: {exc.orig}") from None
        if result.changes and not dry_run and not compare_only:  # a new revision
            for hook in list(self.on_commit):
                try:
                    hook(result.revision)
                except Exception:  # committed all the same: the watcher's poll still sees it
                    log.exception("after-commit hook failed")
        return result

    def _commit_in(
        self,
        conn: Connection,
        plan: Sequence[_Op] | Callable[[dict[tuple[str, str], dict[str, Any]]], list[_Op]],
        keys: Iterable[tuple[str, str]] | None,
        dry_run: bool,
        *,
        keep_empty: bool = False,
        expect_revision: int | None = None,
        compare_only: bool = False,
    ) -> ApplyResult:
        # Bumping first takes the write lock (the meta row in PostgreSQL), so everything read
        # below is current and no concurrent writer can interleave.
        conn.execute(update(Meta).where(Meta.id == 1).values(revision=Meta.revision + 1))
        rev = int(conn.execute(select(Meta.revision).where(Meta.id == 1)).scalar_one())
        if expect_revision is not None and rev - 1 != expect_revision:
            # checked under the write lock: no other writer can slip in between
            raise Conflict(
                f"revision is {rev - 1}, not {expect_revision} as expected: "
                "another change was written since; nothing written (plan again)"
            )
        if callable(plan):
            query = select(Resource.kind, Resource.name, *_SPEC)
            if keys is not None:
                wanted = list(keys)
                query = query.where(
                    Resource.kind.in_({k for k, _ in wanted}),
                    Resource.name.in_({n for _, n in wanted}),
                )
            current = {
                (k, n): _spec(self.secrets, k, n, *rest) for k, n, *rest in conn.execute(query)
            }
            ops = plan(current)
        else:
            ops = list(plan)
            current = _fetch(conn, [(k, n) for op, k, n, _ in ops if op != "delete"], self.secrets)
            # deleting needs no secret: a row that no longer decrypts can still be removed
            # (its history then records the object without its secret fields)
            deletes = [(k, n) for op, k, n, _ in ops if op == "delete"]
            try:
                current |= _fetch(conn, deletes, self.secrets)
            except (StoreError, ValueError):
                current |= _fetch(conn, deletes, None)

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
        if compare_only or (not changes and not keep_empty):
            conn.rollback()
            return ApplyResult(rev - 1, changes)

        objects = {(k, n): o for _, k, n, o in ops}
        del ops  # a bulk apply's 50,000 tuples: everything below reads changes and objects
        sealer = self.secrets
        if any(c.after is not None and _secret_fields(c.kind) for c in changes):
            self.secrets.check_known(_key_ids(conn))
            if dry_run:  # sealing would create the default key file: a dry run writes nothing
                sealer = self.secrets.for_dry_run()
        # rows are inserted a batch at a time: the statement parameters (a JSON string per
        # spec, a dict per row) of 50,000 objects at once were most of a bulk apply's memory
        created = _Batches(conn, insert(Resource))
        edges = _Batches(conn, insert(Ref))
        for ch in changes:
            obj = objects[(ch.kind, ch.name)]
            columns = _seal(sealer, ch.kind, ch.name, ch.after) if ch.after else {}
            if ch.op == "create":  # new objects have no edges yet; inserted in batches
                created.add({"kind": ch.kind, "name": ch.name, "revision": rev, **columns})
            else:
                key = (Resource.kind == ch.kind) & (Resource.name == ch.name)
                conn.execute(delete(Ref).where((Ref.kind == ch.kind) & (Ref.name == ch.name)))
                if ch.op == "update":
                    conn.execute(update(Resource).where(key).values(revision=rev, **columns))
                else:
                    conn.execute(delete(Resource).where(key))
            if obj is not None:
                for tk, tn in sorted(set(references(obj))):
                    edges.add({"kind": ch.kind, "name": ch.name, "to_kind": tk, "to_name": tn})
        created.flush()
        edges.flush()
        _check_references(conn, {(c.kind, c.name) for c in changes if c.op == "delete"})
        _check_contents(conn, changes, objects, self.secrets)
        notes: list[str] = []
        if self.validator is not None:  # last: it renders the state every check accepted
            notes = self.validator(WriteView(conn, self.secrets, changes, objects, dry_run))
        if changes:
            # one time and one actor per revision; the object before and after (secret
            # fields replaced by a digest) is what history, audit and rollback read
            at, actor = time.time(), current_actor()
            recorded = _Batches(conn, insert(Change))
            for c in changes:
                recorded.add(
                    {
                        "revision": rev,
                        "kind": c.kind,
                        "name": c.name,
                        "op": c.op,
                        "at": at,
                        "actor": actor,
                        "before": redact_spec(c.kind, c.before),
                        "after": redact_spec(c.kind, c.after),
                        "recorded": True,
                    }
                )
            recorded.flush()
        if dry_run:  # every check above ran, exactly as for the real write: now undo it
            conn.rollback()
            return ApplyResult(rev - 1, changes, notes)
        return ApplyResult(rev, changes, notes)

    # -- history (store/history.py) -----------------------------------------------------------

    def history(
        self,
        kind: str | None = None,
        name: str | None = None,
        limit: int = 50,
        before_revision: int | None = None,
    ) -> list[Any]:
        """Revisions newest first, each with when, who and its changes."""
        from .history import history

        return history(self, kind, name, limit, before_revision)

    def audit(
        self,
        actor: str | None = None,
        kind: str | None = None,
        name: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[Any]:
        """Change rows newest first with the old and new value (secrets redacted)."""
        from .history import audit

        return audit(self, actor, kind, name, since, limit)

    def policy_at(self, revision: int) -> dict[tuple[str, str], dict[str, Any]]:
        """Every object as of ``revision`` (secret fields redacted)."""
        from .history import policy_at

        return policy_at(self, revision)

    def diff_revisions(self, a: int, b: int) -> list[ObjectChange]:
        from .history import diff_revisions

        return diff_revisions(self, a, b)

    def rollback(
        self, revision: int, *, expect_revision: int | None = None, dry_run: bool = False
    ) -> Any:
        """Write the policy as of ``revision`` as one new revision (see history.rollback)."""
        from .history import rollback

        return rollback(self, revision, expect_revision=expect_revision, dry_run=dry_run)

    # -- secrets ----------------------------------------------------------------------------

    def rotate_secrets(self) -> int:
        """Re-encrypt every secret under the newest key, in one transaction; rows written
        in clear (by an older schema) are encrypted too. The number of rows written.

        Not a policy change: the revision stays, controllers keep what they serve. On
        SQLite the old ciphertexts are zeroed (``secure_delete``) and the WAL emptied.
        """
        ring = self.secrets.ring(create=True)
        kinds = [k for k in KINDS if _secret_fields(k)]
        try:
            with self._writer.begin() as conn:
                if conn.dialect.name == "sqlite":
                    conn.exec_driver_sql("PRAGMA secure_delete=ON")
                # hold the writers' lock (the meta row) without bumping the revision
                conn.execute(update(Meta).where(Meta.id == 1).values(revision=Meta.revision))
                rows = conn.execute(
                    select(Resource.kind, Resource.name, *_SPEC).where(Resource.kind.in_(kinds))
                ).all()
                rewritten = []
                for kind, name, spec, secret, kid in rows:
                    in_clear = set(_secret_fields(kind)) & set(spec)
                    if (kid == ring.current_id or secret is None) and not in_clear:
                        continue
                    full = _spec(self.secrets, kind, name, spec, secret, kid)
                    columns = _seal(self.secrets, kind, name, full)
                    rewritten.append({"k": kind, "n": name, **columns})
                if rewritten:
                    conn.execute(
                        update(Resource)
                        .where(Resource.kind == bindparam("k"), Resource.name == bindparam("n"))
                        .values(
                            spec=bindparam("spec"),
                            secret=bindparam("secret"),
                            secret_key_id=bindparam("secret_key_id"),
                        ),
                        rewritten,
                    )
        except OperationalError as exc:
            raise StoreError(f"database error: {exc.orig}") from None
        self._checkpoint()
        return len(rewritten)

    def secrets_report(self) -> SecretsReport:
        """What ``gatewayctl secrets status`` shows: configured keys, rows per key."""
        kinds = [k for k in KINDS if _secret_fields(k)]
        with self._reader.connect() as conn:
            by_key = {
                str(kid): int(n)
                for kid, n in conn.execute(
                    select(Resource.secret_key_id, func.count())
                    .where(Resource.secret_key_id.is_not(None))
                    .group_by(Resource.secret_key_id)
                )
            }
            clear = sum(
                1
                for kind, spec in conn.execute(
                    select(Resource.kind, Resource.spec).where(
                        Resource.kind.in_(kinds), Resource.secret.is_(None)
                    )
                )
                if set(_secret_fields(kind)) & set(spec)
            )
        try:
            ring = self.secrets.ring()
            configured, current = list(ring.keys), ring.current_id
        except StoreError:
            if by_key or clear:
                raise
            configured, current = [], None
        return SecretsReport(self.secrets.source, configured, current, by_key, clear)

    # -- status (written by controllers, read by the CLI) ---------------------------------

    def save_proxy(self, status: ProxyStatus) -> None:
        self.save_status([status])

    def save_status(
        self, proxies: Sequence[ProxyStatus], events: Sequence[dict[str, Any]] = ()
    ) -> None:
        """Record proxies' status and events in ONE transaction: every proxy row by one
        upsert statement executed for all rows, the events by one insert. A controller's
        status recorder writes what 100 proxies' ACKs of one push changed this way: one
        commit (and one wake of every revision watcher on the database) instead of one
        per proxy, which cost more CPU than the push itself (docs/benchmarks.md)."""
        if not proxies and not events:
            return

        def write(conn: Connection) -> None:
            if proxies:
                rows = [dict(p.__dict__) for p in proxies]
                _upsert_many(conn, ProxyRow.node_id, rows)
            if events:
                _add_events(conn, list(events), _EVENTS_KEPT)

        self._write_status(write)

    def check_writable(self) -> None:
        """Refuse a write while the controller found its database file replaced, removed
        or gone back (``paused``): this process still has the old file open, so the write
        would land in a file nobody reads any more and be lost while its caller is told
        it was committed."""
        if self.paused:
            raise StoreError(
                f"refusing the write: {self.paused} under this controller, which serves the "
                "policy it had in memory (a write now would be lost); put the database back "
                "(gatewayctl restore) or restart the controller on the new file"
            )

    def _write_status(self, write: Callable[[Connection], None]) -> None:
        """Run one status transaction of ``_upsert`` statements. Each is a single
        ``INSERT ... ON CONFLICT DO UPDATE``, atomic in both dialects, so two controllers
        writing the same new row at once need no retry."""
        if self._no_status():
            return
        with self._writer.begin() as conn:
            write(conn)

    def _no_status(self) -> bool:
        """Status and housekeeping writes are skipped while writes are paused, and when
        the file was replaced or removed but the controller has yet to notice (they are
        best effort; the pin would refuse their connection anyway)."""
        return bool(self.paused) or (self.pin is not None and self.pin.moved())

    def disconnect_controller_proxies(self, controller: str) -> None:
        if self._no_status():
            return
        with self._writer.begin() as conn:
            conn.execute(
                update(ProxyRow)
                .where(ProxyRow.controller == controller)
                .values(connected=False, updated_at=time.time())
            )

    def expire_proxies(self, before: float, dead_after: float = 15.0) -> int:
        """Delete the status rows of proxies gone since ``before`` (epoch seconds): those
        that disconnected before it, and those of controllers presumed dead (silent for
        ``dead_after`` seconds) since then - a controller that died without marking its
        proxies disconnected. Returns how many."""
        if self._no_status():
            return 0
        live = select(ControllerRow.id).where(ControllerRow.heartbeat_at >= before - dead_after)
        with self._writer.begin() as conn:
            result = conn.execute(
                delete(ProxyRow).where(
                    or_(
                        (ProxyRow.connected.is_(False)) & (ProxyRow.updated_at < before),
                        ProxyRow.controller.not_in(live),
                    )
                )
            )
        return int(result.rowcount or 0)

    def expire_controllers(self, before: float, dead_after: float = 15.0) -> int:
        """Delete the rows of controllers presumed dead (silent for ``dead_after`` seconds)
        since ``before`` (epoch seconds), so ``status`` stops counting them. A controller
        that comes back writes its row again with its next heartbeat. Returns how many."""
        if self._no_status():
            return 0
        with self._writer.begin() as conn:
            result = conn.execute(
                delete(ControllerRow).where(ControllerRow.heartbeat_at < before - dead_after)
            )
        return int(result.rowcount or 0)

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

    def add_events(self, events: list[dict[str, Any]], keep: int = _EVENTS_KEPT) -> None:
        """Append events; beyond ``keep`` rows the oldest are deleted (checked now and then)."""
        if self._no_status() or not events:
            return
        with self._writer.begin() as conn:
            _add_events(conn, events, keep)

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

    def checkpoint(self) -> None:
        """SQLite: move the WAL into the database file and empty it (best effort: a busy
        database is checkpointed next time)."""
        if self._writer.dialect.name != "sqlite" or self._no_status():
            return
        conn = self._writer.raw_connection()
        raw: Any = conn.driver_connection
        try:
            # it holds the writer lock while it waits for readers: wait briefly, never
            # stall the CLI's writes (a busy database is checkpointed next time)
            raw.execute("PRAGMA busy_timeout=50")
            raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except Exception:
            log.debug("WAL checkpoint skipped", exc_info=True)
        finally:
            raw.execute("PRAGMA busy_timeout=10000")
            conn.close()

    def ping(self) -> None:
        with self._reader.connect() as conn:
            conn.execute(text("SELECT 1"))


_Op = tuple[str, str, str, PolicyModel | None]


def _identity(conn: Connection) -> Identity:
    rev, database_id = conn.execute(
        select(Meta.revision, Meta.database_id).where(Meta.id == 1)
    ).one()
    lineage = {d: int(r) for d, r in conn.execute(select(Lineage.database_id, Lineage.revision))}
    return Identity(database_id or "", int(rev), lineage)


def _changes(
    conn: Connection, after: int, upto: int, secrets: SecretKeys
) -> list[tuple[str, str, PolicyModel | Unloadable | None]]:
    touched = conn.execute(
        select(Change.kind, Change.name)
        .where(Change.revision > after, Change.revision <= upto)
        .distinct()
    ).all()
    specs = _fetch(conn, [(kind, name) for kind, name in touched], secrets)
    out: list[tuple[str, str, PolicyModel | Unloadable | None]] = []
    for kind, name in touched:
        spec = specs.get((kind, name))
        out.append((kind, name, None if spec is None else _load_checked(kind, name, spec)))
    return out


#: what installs the PostgreSQL driver the project depends on (psycopg 3)
POSTGRES_EXTRA = "pip install 'gateway-controlplane[postgres]'"


def _missing_driver(url: str, exc: ImportError) -> str:
    """Why a database URL cannot be opened when its driver module is not installed, and
    how to fix it: the ``[postgres]`` extra for PostgreSQL through psycopg."""
    parsed = make_url(url)
    module = exc.name or "the driver"
    if parsed.get_backend_name() != "postgresql":
        return f"its driver is not installed ({_one_line(exc)})"
    if parsed.get_driver_name() == "psycopg":
        return f"the PostgreSQL driver psycopg is not installed: {POSTGRES_EXTRA}"
    return (
        f"the PostgreSQL driver {module!r} ({parsed.drivername}) is not installed: install "
        f"it, or use postgresql:// (psycopg) after {POSTGRES_EXTRA}"
    )


def _add_events(conn: Connection, events: list[dict[str, Any]], keep: int) -> None:
    conn.execute(insert(EventRow), events)
    last = conn.execute(select(EventRow.id).order_by(EventRow.id.desc()).limit(1)).scalar()
    if last is not None and last % 1000 < len(events):
        conn.execute(delete(EventRow).where(EventRow.id <= last - keep))


def _upsert_many(conn: Connection, column: Any, rows: list[dict[str, Any]]) -> None:
    """Insert or update many rows keyed by the primary key ``column`` with ONE
    ``INSERT ... ON CONFLICT DO UPDATE SET c = excluded.c`` statement executed for every
    row (compiled once; the values are bound parameters, not part of the statement)."""
    from sqlalchemy.dialects import postgresql, sqlite

    table = column.class_.__table__
    if conn.dialect.name == "postgresql":
        statement: Any = postgresql.insert(table)
    elif conn.dialect.name == "sqlite":
        statement = sqlite.insert(table)
    else:  # make_engines accepts only these two
        raise StoreError(f"status rows: the {conn.dialect.name} dialect is not supported")
    names = list(rows[0])
    changed = {name: statement.excluded[name] for name in names if name != column.key}
    conn.execute(statement.on_conflict_do_update(index_elements=[column.key], set_=changed), rows)


def _upsert(conn: Connection, column: Any, key: str, values: dict[str, Any]) -> None:
    """Insert the row whose primary key ``column`` is ``key``, or update it when it exists:
    one ``INSERT ... ON CONFLICT DO UPDATE`` statement (SQLite 3.24+, PostgreSQL 9.5+)."""
    from sqlalchemy.dialects import postgresql, sqlite

    row = {**values, column.key: key}
    changed = {name: value for name, value in row.items() if name != column.key}
    statement: Any
    if conn.dialect.name == "postgresql":
        statement = postgresql.insert(column.class_).values(row)
    elif conn.dialect.name == "sqlite":
        statement = sqlite.insert(column.class_).values(row)
    else:  # make_engines accepts only these two
        raise StoreError(f"status rows: the {conn.dialect.name} dialect is not supported")
    conn.execute(statement.on_conflict_do_update(index_elements=[column], set_=changed))


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


#: the columns that together give an object's spec (see :func:`_spec`)
_SPEC = (Resource.spec, Resource.secret, Resource.secret_key_id)


def _secret_fields(kind: str) -> tuple[str, ...]:
    return tuple(getattr(KINDS.get(kind), "secret_fields", ()))


#: what a secret field's value is replaced by in recorded history: a digest, so a diff still
#: shows that a private key changed while the value itself is never stored in clear
REDACTED_PREFIX = "<redacted sha256:"


def redact_spec(kind: str, spec: dict[str, Any] | None) -> dict[str, Any] | None:
    """``spec`` with each secret field replaced by ``<redacted sha256:XXXXXXXXXXXX>`` (the
    first 48 bits of the value's SHA-256). Secret values are >= 128-bit random (API keys)
    or private keys, so the digest reveals nothing usable; equal markers mean equal values,
    which is how a rollback knows whether it holds a revision's secret."""
    hidden = _secret_fields(kind)
    if spec is None or not hidden:
        return spec
    return {k: (_digest(v) if k in hidden else v) for k, v in spec.items()}


def is_redacted(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(REDACTED_PREFIX)


def _digest(value: Any) -> str:
    data = value if isinstance(value, str) else repr(value)
    return f"{REDACTED_PREFIX}{hashlib.sha256(data.encode()).hexdigest()[:12]}>"


def _seal(secrets: SecretKeys, kind: str, name: str, spec: dict[str, Any] | None) -> dict[str, Any]:
    """The column values of a spec: its secret fields encrypted, the rest in clear."""
    assert spec is not None
    hidden = {f: spec[f] for f in _secret_fields(kind) if f in spec}
    if not hidden:
        return {"spec": spec, "secret": None, "secret_key_id": None}
    sealed = secrets.seal(kind, name, hidden)
    public = {k: v for k, v in spec.items() if k not in hidden}
    return {"spec": public, "secret": sealed.blob, "secret_key_id": sealed.key_id}


def _spec(
    secrets: SecretKeys,
    kind: str,
    name: str,
    spec: dict[str, Any],
    secret: str | None,
    key_id: str | None,
) -> dict[str, Any]:
    """The whole spec of a row: the clear part and the decrypted secret fields."""
    if secret is None or key_id is None:
        return spec
    return {**spec, **secrets.open(kind, name, Sealed(key_id, secret))}


def _key_ids(conn: Connection) -> set[str]:
    rows = conn.execute(
        select(Resource.secret_key_id).where(Resource.secret_key_id.is_not(None)).distinct()
    ).scalars()
    return {str(kid) for kid in rows}


class _Batches:
    """Rows for one INSERT statement, executed (executemany) every :data:`_INSERT_BATCH`
    rows and by :meth:`flush`: the rows and their bound parameters of one batch at a time
    are in memory, whatever the size of the write (still one transaction)."""

    def __init__(self, conn: Connection, statement: Any) -> None:
        self.conn, self.statement = conn, statement
        self.rows: list[dict[str, Any]] = []

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if len(self.rows) >= _INSERT_BATCH:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.conn.execute(self.statement, self.rows)
            self.rows = []


#: rows per executemany of a bulk write
_INSERT_BATCH = 1_000

#: names per ``IN (...)`` when reading objects in batches: well under every SQLite build's
#: bound-parameter limit (999 before 3.32), and large enough that 50,000 objects take 100
_FETCH_BATCH = 500


def _fetch(
    conn: Connection, keys: Iterable[tuple[str, str]], secrets: SecretKeys | None
) -> dict[tuple[str, str], dict[str, Any]]:
    """Specs by key; without ``secrets``, only their clear part (secret fields left out).

    One SELECT per kind and :data:`_FETCH_BATCH` names, not one per object: reading the
    10,000 objects of a bulk change one row at a time was most of the controller's work."""
    names: dict[str, list[str]] = {}
    for kind, name in dict.fromkeys(keys):
        names.setdefault(kind, []).append(name)
    out = {}
    for kind, wanted in names.items():
        for i in range(0, len(wanted), _FETCH_BATCH):
            rows = conn.execute(
                select(Resource.name, *_SPEC).where(
                    Resource.kind == kind, Resource.name.in_(wanted[i : i + _FETCH_BATCH])
                )
            )
            for name, *row in rows:
                out[(kind, name)] = row[0] if secrets is None else _spec(secrets, kind, name, *row)
    return out


def _check_contents(
    conn: Connection,
    changes: list[ObjectChange],
    objects: dict[tuple[str, str], PolicyModel | None],
    secrets: SecretKeys,
) -> None:
    """What referenced objects hold (a proto's services), checked inside the transaction:
    for the objects written, and for the referrers of an updated proto."""
    loaded: dict[tuple[str, str], PolicyModel | None] = {}

    def lookup(kind: str, name: str) -> PolicyModel | None:
        key = (kind, name)
        if key not in loaded:
            obj = objects.get(key)
            if obj is None:
                spec = _fetch(conn, [key], secrets).get(key)
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

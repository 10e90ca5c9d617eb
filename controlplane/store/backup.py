"""Backup and restore of the policy database while controllers run.

Backup uses SQLite's online backup API: one read transaction copies every page, so the
copy is consistent even while the controller and CLIs write (WAL readers never block
writers). Restore never replaces the live database file: it brings a backup's policy into
the live database as one NEW revision above the current one, in one write transaction, and
records the backup's database id and revision (``lineage``), so proxies that run the
backup's policy, or anything older than the new revision, take it without a rollback.
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy.dialects import postgresql, sqlite

from ..errors import GatewayError, PolicyInvalid
from ..policy import KINDS, PolicyModel, parse_object
from .db import sqlite_path
from .repository import SCHEMA_HEAD, ApplyResult, Identity, Store, _identity, _Op
from .secrets import Sealed, SecretKeys
from .tables import Lineage

__all__ = ["BackupContents", "backup", "file_identity", "read_backup", "restore", "save_from"]


class UsageError(GatewayError):
    """The command cannot do this (bad file, unsupported database)."""

    exit_code = 2


@dataclass(frozen=True)
class BackupContents:
    """What a backup file holds that restore uses: its identity and its policy objects."""

    identity: Identity
    objects: list[PolicyModel]


def backup(store: Store, target: str, *, force: bool = False) -> Identity:
    """Copy the live SQLite database to ``target`` (mode 0600), consistently, while others
    write. The copy is a self-contained file (rollback journal, no -wal)."""
    source = sqlite_path(store.url)
    if source is None:
        raise UsageError(
            f"backup copies SQLite files; back up {store.url.split('://', 1)[0]} databases "
            "with pg_dump (see README, Backup and restore)"
        )
    dest = Path(target).expanduser().resolve()
    if dest == Path(source).resolve():
        raise UsageError(f"backup: {target} is the live database itself")
    if dest.exists() and not force:
        raise UsageError(f"backup: {target} exists (use --force to overwrite it)")
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.close(fd)
    try:
        src = sqlite3.connect(f"file:{quote(source)}?mode=rw", uri=True, timeout=10)
        dst = sqlite3.connect(tmp)
        try:
            src.backup(dst)  # every page in one step: one consistent read transaction
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()
            src.close()
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return read_backup(str(dest), store.secrets).identity


def file_identity(path: str) -> Identity | None:
    """The identity a SQLite file holds by itself, ignoring any ``-wal`` next to it (after
    a file was put in place of a live database, that WAL is the old database's and SQLite
    would mix the two); None if it is missing or not a gateway database."""
    try:
        conn = sqlite3.connect(f"file:{quote(path)}?mode=ro&immutable=1", uri=True)
    except sqlite3.Error:
        return None
    try:
        revision, database_id = conn.execute(
            "SELECT revision, database_id FROM meta WHERE id = 1"
        ).fetchone()
        lineage = dict(conn.execute("SELECT database_id, revision FROM lineage"))
    except (sqlite3.Error, TypeError):
        return None
    finally:
        conn.close()
    return Identity(database_id or "", int(revision), {d: int(r) for d, r in lineage.items()})


def save_from(connection: sqlite3.Connection, target: str) -> None:
    """Back up the database an open connection reads (mode 0600): after the file was
    removed or replaced, a controller's connection still reads the old one."""
    fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.close(fd)
    dst = sqlite3.connect(target)
    try:
        connection.backup(dst)
        dst.execute("PRAGMA journal_mode=DELETE")
    finally:
        dst.close()


def read_backup(file: str, secrets: SecretKeys | None = None) -> BackupContents:
    """Identity and validated policy objects of a backup file (opened read-only).

    Secret fields are encrypted in the backup as in the live database: ``secrets`` (the
    live database's keys) opens them; a backup sealed with a key they lack is an error.
    """
    path = Path(file).expanduser()
    if not path.is_file():
        raise UsageError(f"restore: {file} does not exist")
    try:
        conn = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise UsageError(f"restore: cannot open {file}: {exc}") from None
    try:
        try:
            version = conn.execute("SELECT version_num FROM alembic_version").fetchone()
            columns = {r[1] for r in conn.execute("PRAGMA table_info(meta)")}
            has_id = "database_id" in columns
            meta = conn.execute(
                f"SELECT revision, {'database_id' if has_id else 'NULL'} FROM meta WHERE id = 1"
            ).fetchone()
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            lineage = (
                dict(conn.execute("SELECT database_id, revision FROM lineage"))
                if "lineage" in tables
                else {}
            )
            sealed = "secret" in {r[1] for r in conn.execute("PRAGMA table_info(resources)")}
            rows = conn.execute(
                "SELECT kind, name, spec, "
                + ("secret, secret_key_id" if sealed else "NULL, NULL")
                + " FROM resources"
            ).fetchall()
        except sqlite3.DatabaseError as exc:
            raise UsageError(f"restore: {file} is not a gateway database backup: {exc}") from None
    finally:
        conn.close()
    if version is None or meta is None:
        raise UsageError(f"restore: {file} is not a gateway database backup (no schema)")
    if int(version[0]) > int(SCHEMA_HEAD):
        raise UsageError(
            f"restore: {file} has schema {version[0]}, newer than this gatewayctl ({SCHEMA_HEAD})"
        )
    objects = []
    for kind, name, spec, secret, key_id in rows:
        if kind not in KINDS:
            continue
        data: dict[str, Any] = json.loads(spec) if isinstance(spec, str) else spec
        if secret is not None and key_id is not None:
            if secrets is None:
                raise UsageError(f"restore: {file}: {kind} {name!r} holds an encrypted secret")
            data = {**data, **secrets.open(kind, name, Sealed(key_id, secret))}
        try:
            objects.append(parse_object(kind, data, f"{kind} {name!r}"))
        except PolicyInvalid as exc:
            raise PolicyInvalid(f"restore: {file}: {exc}") from None
    ident = Identity(meta[1] or "", int(meta[0]), {d: int(r) for d, r in lineage.items()})
    return BackupContents(ident, objects)


def restore(store: Store, file: str) -> tuple[ApplyResult, BackupContents]:
    """Make the live database hold exactly the backup's policy, as one new revision."""
    contents = read_backup(file, store.secrets)
    wanted = {(o.kind, o.name): o for o in contents.objects}  # type: ignore[attr-defined]

    def plan(current: dict[tuple[str, str], dict[str, Any]]) -> list[_Op]:
        ops: list[_Op] = []
        for key, obj in wanted.items():
            if key not in current:
                ops.append(("create", *key, obj))
            elif current[key] != obj.spec():  # type: ignore[attr-defined]
                ops.append(("update", *key, obj))
        ops += [("delete", *key, None) for key in current if key not in wanted]
        return ops

    source = contents.identity
    with store._writer.begin() as conn:  # one transaction: all of it or nothing
        live = _identity(conn)
        result = store._commit_in(conn, plan, None, False, keep_empty=True)
        # proxies running the backup's database (or one it absorbed) at up to the revision
        # it holds may take this database's policy: it is that policy, or newer
        absorbed = dict(source.lineage)
        if source.database_id and source.database_id != live.database_id:
            absorbed[source.database_id] = source.revision
        for database_id, revision in absorbed.items():
            if database_id == live.database_id:
                continue
            known = live.lineage.get(database_id)
            if known is not None and known >= revision:
                continue
            _upsert_lineage(conn, database_id, revision)
    return result, contents


def _upsert_lineage(conn: Any, database_id: str, revision: int) -> None:
    table = Lineage.__table__
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(table).values(database_id=database_id, revision=revision)
    stmt = stmt.on_conflict_do_update(
        index_elements=[table.c.database_id], set_={"revision": revision}
    )
    conn.execute(stmt)

"""Engines for SQLite (default) and PostgreSQL, with the locking each needs.

SQLite: WAL so the controller reads while a CLI writes, and writers start with
``BEGIN IMMEDIATE`` so two writers queue on the lock instead of failing at commit time.
PostgreSQL: every write transaction first updates the single ``meta`` row, which serialises
writers on a row lock. Either way no update is lost.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import NullPool

from ..errors import StoreError

__all__ = [
    "FilePin",
    "FileWatch",
    "RevisionProbe",
    "create_sqlite_file",
    "default_db_path",
    "file_id",
    "make_engines",
    "normalize_url",
    "sqlite_path",
]


def default_db_path() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "gatewayctl" / "gateway.db"


def normalize_url(db: str | None) -> str:
    """A file path or any SQLAlchemy URL; ``None`` means the per-user default file."""
    if not db:
        db = str(default_db_path())
    if "://" in db:
        try:
            url = make_url(db)
        except (ArgumentError, ValueError) as exc:  # a bad port; the message shows no URL
            raise StoreError(f"database URL {db}: cannot parse it: {exc}") from None
        if url.drivername == "postgresql":  # prefer psycopg 3, which we depend on
            url = url.set(drivername="postgresql+psycopg")
        return url.render_as_string(hide_password=False)
    return f"sqlite:///{Path(db).expanduser().resolve()}"


def sqlite_path(url: str) -> str | None:
    """The file of a SQLite URL; None for other databases and in-memory SQLite."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return parsed.database


def create_sqlite_file(path: str) -> bool:
    """Create an empty database file readable by its owner only (it holds credentials);
    False if it already exists. Only ``init`` (and ``up``, ``serve --create``) call this:
    everything else opens existing files only."""
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def file_id(path: str) -> tuple[int, int] | None:
    """(device, inode) of a file, None if it is gone: what tells a replaced file apart."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


class FilePin:
    """The SQLite file (device, inode) a Store's connections may open.

    After a file was put in place of the database, a new connection of this process
    would open the new file with the old one's ``-wal`` and ``-shm`` still beside it:
    SQLite would take the old WAL's frames for the new file's, and, being the first
    connection of this process to the new file (POSIX locks never conflict within one
    process), truncate the ``-shm`` that the old file's connections still have mapped;
    their next read of it is a SIGBUS that kills the process. So a connection to a file
    other than the pinned one is refused until the controller has checked the new file
    and accepted it (:meth:`accept`).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.identity = file_id(path)

    def accept(self, identity: tuple[int, int] | None = None) -> None:
        """Let connections open the file with this (device, inode): the one the caller
        checked (a file replaced again since then stays refused), else the one at the
        path now."""
        self.identity = identity if identity is not None else file_id(self.path)

    def moved(self) -> bool:
        """The path no longer names the pinned file (replaced or removed)."""
        return file_id(self.path) != self.identity


def _open_existing(path: str, pin: FilePin | None = None) -> sqlite3.Connection:
    """Open a database file that must exist: ``mode=rw`` makes SQLite fail instead of
    creating an empty one (a controller re-connecting after the file was removed must not
    create a new database in its place). With a ``pin``, only the pinned file: SQLite
    opens the file itself here but its ``-wal`` and ``-shm`` only on the first statement,
    so a connection found on another file is closed before it touched either."""
    conn = sqlite3.connect(
        f"file:{quote(path)}?mode=rw", uri=True, check_same_thread=False, timeout=10
    )
    if pin is not None and pin.moved():
        conn.close()
        raise StoreError(
            f"database file {path} was replaced or removed under this process: not opening "
            "it before the controller has checked what it holds"
        )
    return conn


def make_engines(url: str, pin: FilePin | None = None) -> tuple[Engine, Engine]:
    """(writer, reader) engines; they differ only in how SQLite transactions begin.

    SQLite files are opened read-write but never created (see :func:`create_sqlite_file`),
    and with a ``pin`` only while the path still names the pinned file.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        engine = create_engine(url, pool_pre_ping=True, pool_size=4, max_overflow=4)
        # Reads see one snapshot per transaction, as SQLite's do (READ COMMITTED would let a
        # commit land between load_all's or changes_since's statements). Writers stay READ
        # COMMITTED: they queue on the meta row lock instead of failing to serialise.
        return engine, engine.execution_options(isolation_level="REPEATABLE READ")
    path = sqlite_path(url)

    def build(begin: str) -> Engine:
        if path is None:
            engine = create_engine(url, poolclass=NullPool if not parsed.database else None)
        else:
            engine = create_engine(url, creator=lambda: _open_existing(path, pin))

        @event.listens_for(engine, "connect")
        def _connect(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=10000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn) -> None:  # type: ignore[no-untyped-def]
            conn.exec_driver_sql(begin)

        return engine

    return build("BEGIN IMMEDIATE"), build("BEGIN")


class RevisionProbe:
    """A cheap "has anything been committed?" check for the watcher's 20 ms loop.

    SQLite: ``PRAGMA data_version`` on a dedicated connection changes whenever another
    connection commits; it costs microseconds and no SQL parsing of our tables. Status
    commits (proxies' ACKs, events, builds) change it too, so when it changed the probe
    reads what names a policy revision - the meta row (revision, database id) and the
    lineage - and only that is the result: a status commit then costs the watcher one
    primary-key read, not a read of the changes. PostgreSQL: one primary-key read of
    ``meta.revision`` on a dedicated autocommit connection. Either way the result only
    says *whether* to look; the store then reads what changed.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._conn: Any = None
        self._sqlite = engine.dialect.name == "sqlite"
        #: SQLite: the data_version last seen, and the policy token read then
        self._data_version: object = None
        self._token: object = None

    def __call__(self) -> object:
        if self._conn is None:
            self._conn = self._engine.raw_connection()
            if not self._sqlite:
                self._conn.driver_connection.autocommit = True
        cur = self._conn.cursor()
        try:
            if not self._sqlite:
                cur.execute("SELECT revision FROM meta WHERE id = 1")
                return cur.fetchone()[0]
            cur.execute("PRAGMA data_version")
            version = cur.fetchone()[0]
            if version != self._data_version or self._token is None:
                cur.execute("SELECT revision, database_id FROM meta WHERE id = 1")
                meta = cur.fetchone()
                cur.execute("SELECT database_id, revision FROM lineage ORDER BY database_id")
                self._token = (meta, tuple(cur.fetchall()))
                self._data_version = version
            return self._token
        except Exception:
            self.close()  # reconnect on the next call
            raise
        finally:
            cur.close()

    def connection(self) -> sqlite3.Connection | None:
        """The SQLite connection this probe holds open (None before the first call)."""
        if self._conn is None or not self._sqlite:
            return None
        return self._conn.driver_connection  # type: ignore[no-any-return]

    def close(self) -> None:
        self._data_version = self._token = None
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None


class FileWatch:
    """Wakes the watcher the moment any process writes, replaces or removes the SQLite
    database (Linux inotify, through ``inotify_simple``).

    Polling stays as the fallback (and the only mechanism for PostgreSQL); with a watch,
    a commit is noticed in well under a millisecond instead of half a poll interval.
    The watch is on the folder, not the file: a file renamed over the database or a
    ``-wal`` created after the watch started are seen too, and the watch survives the
    file it watches being replaced. Events of other files in that folder (a backup written
    next to the database, a log) do not count as a wake.
    """

    def __init__(self, notify: Any, names: frozenset[str]) -> None:
        from inotify_simple import flags

        self._notify = notify
        self._overflow = int(flags.Q_OVERFLOW)
        #: the database file and the files SQLite writes beside it
        self.names = names

    @property
    def fd(self) -> int:
        """The non-blocking inotify descriptor, for ``loop.add_reader``."""
        return int(self._notify.fd)

    @classmethod
    def for_url(cls, url: str) -> FileWatch | None:
        """A watch on the database file's folder, or None where that is not possible."""
        parsed = make_url(url)
        if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
            return None
        try:
            from inotify_simple import INotify, flags
        except ImportError:  # not Linux: polling only
            return None
        path = Path(parsed.database).resolve()
        # contents written (MODIFY; CLOSE_WRITE for writers that only close), a -wal or
        # -journal that appears (CREATE), a file renamed over the database (MOVED_TO) or
        # the database removed (DELETE)
        mask = flags.MODIFY | flags.CLOSE_WRITE | flags.CREATE | flags.MOVED_TO | flags.DELETE
        try:
            notify = INotify(nonblocking=True)
        except (OSError, AttributeError):  # no inotify in this kernel or libc
            return None
        try:
            notify.add_watch(path.parent, mask | flags.ONLYDIR)
        except OSError:  # the folder is gone, or the per-user watch limit is reached
            notify.close()
            return None
        names = frozenset(path.name + suffix for suffix in ("", "-wal", "-journal"))
        return cls(notify, names)

    def drain(self) -> bool:
        """Read the pending events (all that the kernel holds: one size query, one read);
        True if one concerns the database, or events were lost to a queue overflow, which
        may have hidden one. Events that arrive later make the descriptor readable again."""
        events = self._notify.read(timeout=0)
        return any(e.name in self.names or e.mask & self._overflow for e in events)

    def close(self) -> None:
        self._notify.close()

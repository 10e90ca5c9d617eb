"""A throwaway PostgreSQL cluster for the test session.

``initdb`` into a temporary directory, ``pg_ctl start`` on a free loopback port (unix
sockets stay in that directory), durability off since the data dies with the session.
PostgreSQL refuses to run as root, so under root (as in CI) the server runs as the
``postgres`` system user (or ``nobody``), which owns the directory. Only missing binaries
skip the tests; any other failure is an error with the server's log attached.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

__all__ = ["PgCluster", "find_binaries", "start_cluster"]

SUPERUSER = "gateway"
TOOLS = ("initdb", "pg_ctl", "postgres")


def find_binaries() -> Path | None:
    """The newest /usr/lib/postgresql/*/bin holding initdb, pg_ctl and postgres, else PATH."""

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", Path(path).parent.name))

    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if all(os.access(Path(candidate, tool), os.X_OK) for tool in TOOLS):
            return Path(candidate)
    found = [shutil.which(tool) for tool in TOOLS]
    if all(found):
        folders = {Path(f).resolve().parent for f in found if f}
        if len(folders) == 1:
            return folders.pop()
    return None


def _server_user() -> pwd.struct_passwd | None:
    """The unprivileged account to run the server as; None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' user exists")


def _searchable_by_all(path: Path) -> bool:
    return all(os.stat(p).st_mode & 0o001 for p in [path.resolve(), *path.resolve().parents])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PgCluster:
    bin_dir: Path
    base: Path
    port: int
    user: pwd.struct_passwd | None
    databases: list[str] = field(default_factory=list)

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def log_path(self) -> Path:
        return self.base / "server.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def run(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        """A PostgreSQL program as the server's user; raises with its output on failure."""
        extra: dict[str, Any] = {}
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        if self.user is not None:
            extra = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
            env.update(HOME=self.user.pw_dir, USER=self.user.pw_name, LOGNAME=self.user.pw_name)
        proc = subprocess.run(
            [str(self.bin_dir / tool), *args],
            cwd=self.base,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            **extra,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"{tool} {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}{proc.stdout}"
                f"{self.server_log()}"
            )
        return proc

    def server_log(self) -> str:
        with contextlib.suppress(OSError):
            return "\n--- server log ---\n" + self.log_path.read_text(errors="replace")[-3000:]
        return ""

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        import psycopg

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        dsn = f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname=postgres"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
        self.databases.append(name)
        return self.url(name)

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self.run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)


def start_cluster() -> PgCluster:
    """Start a cluster, or ``pytest.skip`` when PostgreSQL is not installed."""
    bin_dir = find_binaries()
    if bin_dir is None:
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found in "
            "/usr/lib/postgresql/*/bin or on PATH"
        )
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.fail("psycopg is not installed: pip install -e '.[postgres]'")
    user = _server_user()
    parent = tempfile.gettempdir()
    if user is not None and not _searchable_by_all(Path(parent)):
        parent = "/tmp"  # e.g. TMPDIR under /root: the server user could not reach it
    base = Path(tempfile.mkdtemp(prefix="gateway-pg-", dir=parent))
    if user is not None:
        os.chown(base, user.pw_uid, user.pw_gid)
    cluster = PgCluster(bin_dir, base, 0, user)
    try:
        cluster.run(
            "initdb",
            "-D",
            str(cluster.data),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        )
        for attempt in range(3):  # a free port may be taken between probe and bind
            cluster.port = _free_port()
            with open(cluster.data / "postgresql.auto.conf", "a") as conf:
                conf.write(
                    f"port = {cluster.port}\n"
                    "listen_addresses = '127.0.0.1'\n"
                    f"unix_socket_directories = '{base}'\n"
                    "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                    "max_connections = 300\n"
                )
            try:
                cluster.run(
                    "pg_ctl",
                    "start",
                    "-D",
                    str(cluster.data),
                    "-l",
                    str(cluster.log_path),
                    "-w",
                    "-t",
                    "30",
                )
                break
            except RuntimeError:
                if attempt == 2:
                    raise
        return cluster
    except BaseException:
        cluster.stop()
        raise

"""The SQLite file watch (``controlplane.store.db.FileWatch``, inotify through inotify_simple)
and the watcher loop that relies on it: a commit, a file renamed over the database and the
database's removal each wake the watcher at once, so none waits for the safety-net poll;
other files in the database's folder do not wake it."""

from __future__ import annotations

import asyncio
import os
import select
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.policy import Cluster
from controlplane.store import Store
from controlplane.store.db import FileWatch
from tests.unit.watching import PATIENCE, until, watcher_running

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="inotify is Linux only")


def _cluster(name: str) -> Cluster:
    return Cluster(name=name, endpoints=["127.0.0.1:9"])


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(str(tmp_path / "db" / "gateway.db"), create=True)
    s.apply_objects([_cluster("a")])
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def watch(store: Store) -> Iterator[FileWatch]:
    w = FileWatch.for_url(store.url)
    assert w is not None
    w.drain()
    try:
        yield w
    finally:
        w.close()


def _readable(watch: FileWatch, timeout: float = PATIENCE) -> bool:
    return bool(select.select([watch.fd], [], [], timeout)[0])


def _copy(store: Store, to: Path) -> None:
    """A consistent copy of the database as it is now (what ``gatewayctl backup`` makes)."""
    src, dst = sqlite3.connect(store.url.removeprefix("sqlite:///")), sqlite3.connect(to)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


def test_no_watch_for_postgresql_or_memory() -> None:
    assert FileWatch.for_url("postgresql+psycopg://u@localhost/gw") is None
    assert FileWatch.for_url("sqlite://") is None
    assert FileWatch.for_url("sqlite:///:memory:") is None


def test_a_commit_wakes_the_watch_and_drain_empties_it(store: Store, watch: FileWatch) -> None:
    assert not _readable(watch, 0)
    store.apply_objects([_cluster("b")])
    assert _readable(watch)
    assert watch.drain() is True
    assert not _readable(watch, 0)
    assert watch.drain() is False  # nothing pending


def test_other_files_in_the_folder_do_not_count(
    store: Store, watch: FileWatch, tmp_path: Path
) -> None:
    folder = tmp_path / "db"
    (folder / "gateway.db.replaced-1").write_bytes(b"x" * 4096)
    (folder / "notes.txt").write_text("hello")
    assert _readable(watch)  # the kernel reports them, the watch reads them ...
    assert watch.drain() is False  # ... and says they are not the database's


@pytest.mark.parametrize("how", ["renamed over", "removed"])
def test_replacing_or_removing_the_file_wakes_the_watch(
    store: Store, watch: FileWatch, tmp_path: Path, how: str
) -> None:
    db = tmp_path / "db" / "gateway.db"
    if how == "renamed over":
        _copy(store, tmp_path / "incoming.db")  # prepared in another folder
        watch.drain()  # (reading the database to copy it closed its -wal: an event)
        assert not _readable(watch, 0)
        os.replace(tmp_path / "incoming.db", db)
    else:
        db.unlink()
    assert _readable(watch)
    assert watch.drain() is True


@pytest.mark.parametrize("how", ["older copy renamed over it", "removed"])
def test_the_watcher_notices_without_waiting_for_its_poll(
    store: Store, tmp_path: Path, how: str
) -> None:
    """The poll interval is a minute (the safety net five): a commit and then a replaced or
    removed database file are noticed within seconds only because the file watch woke
    the watcher."""
    db = tmp_path / "db" / "gateway.db"
    older = tmp_path / "older.db"
    _copy(store, older)

    async def scenario() -> None:
        async with watcher_running(store) as runner:
            before = runner.revision
            writer = Store(str(db))
            try:
                writer.apply_objects([_cluster("b")])
            finally:
                writer.close()
            await until(lambda: runner.revision > before, "the commit applied")
            assert "b" in runner.objects["cluster"]
            if how == "removed":
                db.unlink()
            else:
                os.replace(older, db)
            await until(lambda: runner.store_problem is not None, "the file refused")
            assert "refusing" in (runner.store_problem or "")
            if how == "removed":
                assert "was removed" in (runner.store_problem or "")
            else:
                assert "holds revision" in (runner.store_problem or "")
            assert "b" in runner.objects["cluster"]  # the newer policy stays in memory

    asyncio.run(scenario())

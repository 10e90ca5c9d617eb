"""A Store opens no connection to a file put in place of its database until the controller
accepted it (``controlplane.store.db.FilePin``).

Such a connection would pair the new file with the old one's ``-wal`` and, being this
process's first connection to the new file, truncate the ``-shm`` its old connections have
mapped: the next read through one of them was a SIGBUS that killed the process (seen once,
in a backup of the replaced database taken while a status write opened the new file).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.errors import StoreError
from controlplane.policy import Cluster
from controlplane.store import Store
from controlplane.store.db import file_id


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(str(tmp_path / "gateway.db"), create=True)
    s.apply_objects([Cluster(name="a", endpoints=["127.0.0.1:9"])])
    try:
        yield s
    finally:
        s.close()


def _other_database(store: Store, at: Path) -> None:
    """A copy of the database with one more cluster (what a restore or a copy puts in)."""
    other = Store(str(at), create=True)
    try:
        other.apply_objects([Cluster(name="b", endpoints=["127.0.0.1:9"])])
    finally:
        other.close()


def test_no_new_connection_to_a_replaced_file_until_it_is_accepted(
    store: Store, tmp_path: Path
) -> None:
    db = tmp_path / "gateway.db"
    probe = store.probe()
    probe()  # an old connection, with the -shm mapped, as the controller's probe has
    store.checkpoint()  # as the controller keeps it: the old -wal then lends no frames
    _other_database(store, tmp_path / "incoming.db")
    os.replace(tmp_path / "incoming.db", db)

    store._reader.dispose()  # no idle connection left: the next read must open one
    store._writer.dispose()
    with pytest.raises(StoreError, match="was replaced or removed under this process"):
        store.load_state()
    # a status write before the controller noticed is skipped, not an error
    store.save_builds("c1", "-", 1, {"web": (1, None)}, time.time())
    # and nothing reached either file: the old one through the probe, the new one by name
    old = probe.connection()
    assert old is not None
    assert old.execute("SELECT count(*) FROM gateway_builds").fetchone() == (0,)
    new = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        assert new.execute("SELECT count(*) FROM gateway_builds").fetchone() == (0,)
    finally:
        new.close()
    probe.close()

    store.reopen()  # what the controller does once it checked the new file
    names = {o.name for o in store.load_state()[1] if o.kind == "cluster"}
    assert names == {"b"}
    store.save_builds("c1", "-", 1, {"web": (1, None)}, time.time())
    assert store.gateway_builds()["web"][0] == 1


def test_a_removed_file_is_not_opened_again_when_one_appears_at_its_path(
    store: Store, tmp_path: Path
) -> None:
    db = tmp_path / "gateway.db"
    db.unlink()
    _other_database(store, db)  # e.g. `gatewayctl init` run again
    store._reader.dispose()
    with pytest.raises(StoreError, match="was replaced or removed"):
        store.load_state()


def test_the_file_it_opened_stays_usable(store: Store) -> None:
    """No false alarm: the pinned file itself opens as often as needed."""
    for _ in range(3):
        store._reader.dispose()
        store._writer.dispose()
        assert {o.name for o in store.load_state()[1]} == {"a"}
        store.apply_objects([Cluster(name="a", endpoints=["127.0.0.1:10"])])


def test_the_controllers_access_log_sink_writes_through_the_pinned_engine(
    store: Store, tmp_path: Path
) -> None:
    """The controller's sink shares the store's writer engine: after the file was replaced
    it keeps its rollups for a later flush instead of opening the new file."""
    from controlplane.analytics.scope import Scope
    from controlplane.analytics.sink import AccessLogSink
    from tests.unit.test_sink_scope import _entry, _policy

    sink = AccessLogSink(store.url, Scope(*_policy()), sink_id="s", engine=store.writer_engine)
    sink.ingest("public", [_entry("api", "a")])
    asyncio.run(sink.flush())
    assert 'gateway_analytics_flushes_total{result="ok"} 1' in sink.registry.render()

    store.checkpoint()
    _other_database(store, tmp_path / "incoming.db")
    os.replace(tmp_path / "incoming.db", tmp_path / "gateway.db")
    store._writer.dispose()
    sink.ingest("public", [_entry("api", "a")])
    asyncio.run(sink.flush())
    assert 'gateway_analytics_flushes_total{result="error"} 1' in sink.registry.render()
    assert sum(c.requests for c in sink.rollups.cells.values()) == 1  # kept
    sink.close()  # the store's engine is the store's to close
    store.reopen()
    asyncio.run(sink.flush())
    assert 'gateway_analytics_flushes_total{result="ok"} 2' in sink.registry.render()


def test_only_the_file_the_controller_checked_is_accepted(store: Store, tmp_path: Path) -> None:
    """The controller checks a new file, then reopens the store on that file: one put in
    its place in between is refused like any other replacement."""
    db = tmp_path / "gateway.db"
    store.checkpoint()
    _other_database(store, tmp_path / "checked.db")
    os.replace(tmp_path / "checked.db", db)
    checked = file_id(str(db))
    _other_database(store, tmp_path / "later.db")
    os.replace(tmp_path / "later.db", db)  # after the check, before the reopen
    store.reopen(checked)
    with pytest.raises(StoreError, match="was replaced or removed"):
        store.load_state()

"""Status rows (proxies, gateway builds, controllers) are written with one atomic upsert."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from controlplane.store import Store
from controlplane.store.repository import ProxyStatus


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(str(tmp_path / "gateway.db"), create=True)
    yield s
    s.close()


def _proxy(node: str, revision: int) -> ProxyStatus:
    now = time.time()
    return ProxyStatus(
        node_id=node, gateway="web", controller="ctl", connected=True, address="127.0.0.1:5",
        envoy_version="1.40", acked_revision=revision, nack_revision=None, nack_type=None,
        nack_error=None, nack_objects=None, connected_at=now, updated_at=now,
    )  # fmt: skip


def test_each_status_row_is_one_insert_on_conflict(store: Store) -> None:
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(store._writer, "before_cursor_execute", seen)
    try:
        store.save_proxy(_proxy("web-1", 1))  # a new row
        store.save_proxy(_proxy("web-1", 2))  # the same row again
        store.save_builds("ctl", "127.0.0.1:1", 2, {"web": (2, None)}, time.time())
    finally:
        event.remove(store._writer, "before_cursor_execute", seen)
    writes = [s for s in statements if s.split()[0] in ("INSERT", "UPDATE", "DELETE")]
    assert len(writes) == 4, writes
    assert all(s.startswith("INSERT") and "ON CONFLICT" in s for s in writes), writes
    [proxy] = store.proxies()
    assert proxy.acked_revision == 2 and proxy.address == "127.0.0.1:5"
    assert store.gateway_builds() == {"web": (2, 2, None)}
    assert [c[:3] for c in store.controllers()] == [("ctl", "127.0.0.1:1", 2)]


def test_a_fleets_acks_are_written_in_one_transaction(store: Store) -> None:
    """100 proxies ACKing one push: their rows and events are one commit, not 100 (every
    commit also wakes each revision watcher on the database), and every row is right."""
    import asyncio

    from controlplane.xds.status import ProxyState, StatusRecorder

    recorder = StatusRecorder(store, "ctl")
    states = [
        ProxyState(f"web-{i}", gateway="web", address=f"127.0.0.1:{i}", envoy_version="1.40")
        for i in range(100)
    ]
    for state in states:
        state.acked_revision = 7
        recorder.event("ack", state, 7, "in sync")
        recorder.changed(state)
    states[3].nack_revision, states[3].nack_type, states[3].nack_error = 7, "Listener", "bad"
    recorder.changed(states[3])  # changed twice before the flush: written once, newest state
    commits: list[object] = []

    def committed(conn: Any) -> None:
        commits.append(conn)

    event.listen(store._writer, "commit", committed)
    try:
        asyncio.run(recorder.flush())
    finally:
        event.remove(store._writer, "commit", committed)
    assert len(commits) == 1
    rows = {p.node_id: p for p in store.proxies()}
    assert len(rows) == 100
    assert all(r.acked_revision == 7 and r.controller == "ctl" for r in rows.values())
    assert rows["web-3"].nack_error == "bad" and rows["web-4"].nack_error is None
    assert rows["web-42"].address == "127.0.0.1:42"
    acks = [e for e in store.events(limit=1000) if e["kind"] == "ack"]
    assert len(acks) == 100 and {e["node"] for e in acks} == {s.node_id for s in states}

    states[5].acked_revision = 8  # a later flush updates the existing row in place
    recorder.changed(states[5])
    asyncio.run(recorder.flush())
    rows = {p.node_id: p for p in store.proxies()}
    assert len(rows) == 100 and rows["web-5"].acked_revision == 8
    assert rows["web-6"].acked_revision == 7


def test_changes_that_keep_coming_are_written_once_they_stop(store: Store) -> None:
    """The recorder writes once the changes pause (the ACKs of one push), not while they
    keep arriving: one transaction for the whole burst."""
    import asyncio

    from controlplane.xds.status import ProxyState, StatusRecorder

    recorder = StatusRecorder(store, "ctl", coalesce=2.0, max_delay=60)
    commits: list[object] = []

    def committed(conn: Any) -> None:
        commits.append(conn)

    async def burst() -> None:
        task = asyncio.create_task(recorder.run())
        for i in range(20):  # 0.2 s of changes, none more than 2 s after the previous
            state = ProxyState(f"web-{i}", gateway="web", address="a", envoy_version="1.40")
            recorder.event("ack", state, 1, "in sync")
            recorder.changed(state)
            await asyncio.sleep(0.01)
        while len(store.proxies()) < 20:
            await asyncio.sleep(0.05)
        task.cancel()

    event.listen(store._writer, "commit", committed)
    try:
        asyncio.run(asyncio.wait_for(burst(), 60))
    finally:
        event.remove(store._writer, "commit", committed)
    assert len(commits) == 1
    assert len([e for e in store.events(limit=100) if e["kind"] == "ack"]) == 20

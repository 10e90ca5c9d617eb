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

"""The revision watcher's probe changes with policy commits only, not with status commits
(a fleet's ACKs would otherwise make the watcher read the changes after every batch)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.policy import Gateway
from controlplane.store import Store
from controlplane.store.repository import ProxyStatus


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[Store, Store]]:
    """The controller's store (whose probe is read) and another process's writer."""
    path = str(tmp_path / "gateway.db")
    watcher = Store(path, create=True)
    writer = Store(path)
    yield watcher, writer
    writer.close()
    watcher.close()


def _status(node: str) -> ProxyStatus:
    now = time.time()
    return ProxyStatus(
        node_id=node, gateway="web", controller="ctl", connected=True, address="127.0.0.1:5",
        envoy_version="1.40", acked_revision=1, nack_revision=None, nack_type=None,
        nack_error=None, nack_objects=None, connected_at=now, updated_at=now,
    )  # fmt: skip


def test_status_commits_leave_the_probe_unchanged(stores: tuple[Store, Store]) -> None:
    watcher, writer = stores
    probe = watcher.probe()
    try:
        before = probe()
        assert probe() == before
        writer.save_proxy(_status("web-1"))
        writer.add_events([{"at": time.time(), "kind": "ack", "gateway": "web",
                            "node": "web-1", "revision": 1, "detail": "in sync"}])  # fmt: skip
        writer.save_builds("ctl", "127.0.0.1:1", 0, {}, time.time())
        assert probe() == before  # status only: nothing for the watcher to read
        writer.apply_objects([Gateway(name="web", port=18080)])
        after = probe()
        assert after != before  # a policy revision
        assert probe() == after
        writer.apply_objects([Gateway(name="web", port=18090)])
        assert probe() not in (before, after)
    finally:
        probe.close()

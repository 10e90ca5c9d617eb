"""Status rows of gone proxies expire (``Store.expire_proxies``); PostgreSQL: tests/postgres."""

from __future__ import annotations

import time
from pathlib import Path

from controlplane.store import ProxyStatus, Store


def _row(node: str, controller: str, connected: bool, at: float) -> ProxyStatus:
    return ProxyStatus(
        node_id=node,
        gateway="public",
        controller=controller,
        connected=connected,
        address="",
        envoy_version="1.40.0",
        acked_revision=0,
        nack_revision=None,
        nack_type=None,
        nack_error=None,
        nack_objects=None,
        connected_at=at,
        updated_at=at,
    )


def check_expiry(store: Store) -> None:
    now = time.time()
    store.save_builds("alive", "-", 0, {}, now)  # heartbeat now
    store.save_builds("dead", "-", 0, {}, now)
    store.save_builds("long-dead", "-", 0, {}, now)
    # backdate the heartbeats of the dead controllers
    from sqlalchemy import update

    from controlplane.store.tables import ControllerRow

    with store._writer.begin() as conn:
        conn.execute(
            update(ControllerRow).where(ControllerRow.id == "dead").values(heartbeat_at=now - 20)
        )
        conn.execute(
            update(ControllerRow)
            .where(ControllerRow.id == "long-dead")
            .values(heartbeat_at=now - 200)
        )
    rows = [
        _row("live-old", "alive", True, now - 500),  # a stable stream: stays
        _row("left-long-ago", "alive", False, now - 500),  # expired
        _row("left-now", "alive", False, now - 1),  # stays until the expiry passes
        _row("dead-recently", "dead", True, now - 500),  # dead 5 s ago: stays for now
        _row("dead-long-ago", "long-dead", True, now - 500),  # expired
        _row("unknown-controller", "never-seen", True, now - 1),  # invented: expired
    ]
    for row in rows:
        store.save_proxy(row)
    assert store.expire_proxies(now - 100, dead_after=15) == 3
    assert {p.node_id for p in store.proxies()} == {"live-old", "left-now", "dead-recently"}
    # controllers dead for longer than the expiry are forgotten too
    assert store.expire_controllers(now - 100, dead_after=15) == 1
    assert sorted(c[0] for c in store.controllers()) == ["alive", "dead"]


def test_expire_proxies_sqlite(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "g.db"), create=True)
    try:
        check_expiry(store)
    finally:
        store.close()

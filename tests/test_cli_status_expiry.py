"""``status``: each proxy's address; dead controllers and gone proxies expire or are pruned."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from sqlalchemy import update

from controlplane.store import ProxyStatus, Store
from controlplane.store.tables import ControllerRow
from tests.e2e.harness import Cli


def _proxy(node: str, controller: str, address: str, connected: bool = True) -> ProxyStatus:
    now = time.time()
    return ProxyStatus(
        node_id=node, gateway="public", controller=controller, connected=connected,
        address=address, envoy_version="1.40.0", acked_revision=0, nack_revision=None,
        nack_type=None, nack_error=None, nack_objects=None, connected_at=now, updated_at=now,
        acked_at=now,
    )  # fmt: skip


def _beat(store: Store, controller: str, ago: float) -> None:
    store.save_builds(controller, "127.0.0.1:1", 0, {}, time.time())
    with store._writer.begin() as conn:
        conn.execute(
            update(ControllerRow)
            .where(ControllerRow.id == controller)
            .values(heartbeat_at=time.time() - ago)
        )


def test_status_shows_addresses_and_forgets_dead_controllers(tmp_path: Path) -> None:
    cli = Cli(
        db=str(tmp_path / "gateway.db"), env={"GATEWAY_PROXY_EXPIRY": "600", "COLUMNS": "200"}
    )
    store = Store(cli.db)
    try:
        _beat(store, "alive", 0)
        _beat(store, "crashed", 60)  # dead a while, within the expiry: still listed
        _beat(store, "long-gone", 3 * 3600)  # dead for longer than the expiry
        # gRPC's peer strings, as the controller records them
        store.save_proxy(_proxy("envoy-1", "alive", "ipv4:10.1.2.3:41234"))
        store.save_proxy(_proxy("envoy-2", "crashed", "ipv6:%5B::1%5D:5000"))
    finally:
        store.close()

    def status(*args: str) -> Any:
        # the live controller's heartbeat just before each look: a slow machine may take
        # longer than 15 s between two commands
        fresh = Store(cli.db)
        try:
            fresh.save_builds("alive", "127.0.0.1:1", 0, {}, time.time())
        finally:
            fresh.close()
        return cli.run("status", *args)

    report = json.loads(status("-o", "json").stdout)
    assert {p["node"]: p["address"] for p in report["proxies"]} == {
        "envoy-1": "10.1.2.3:41234",
        "envoy-2": "[::1]:5000",
    }
    assert {c["id"]: c["alive"] for c in report["controllers"]} == {
        "alive": True,
        "crashed": False,
    }
    table = status()
    assert "ADDRESS" in table.stdout and "10.1.2.3:41234" in table.stdout
    assert "1 live controller(s) of 2 known" in table.stderr

    # --prune removes what is gone now: the dead controller and its proxy
    pruned = status("--prune")
    assert "pruned 1 proxy and 2 controller status row(s)" in pruned.stderr
    assert "1 live controller(s) of 1 known" in pruned.stderr
    report = json.loads(status("-o", "json").stdout)
    assert [c["id"] for c in report["controllers"]] == ["alive"]
    assert [p["node"] for p in report["proxies"]] == ["envoy-1"]


def test_controllers_expire_in_the_store(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "gateway.db"), create=True)
    try:
        _beat(store, "alive", 0)
        _beat(store, "recent", 30)
        _beat(store, "old", 500)
        # dead (15 s silent) for more than 100 s: only "old"
        assert store.expire_controllers(time.time() - 100, dead_after=15) == 1
        assert sorted(c[0] for c in store.controllers()) == ["alive", "recent"]
    finally:
        store.close()

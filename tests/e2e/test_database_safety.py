"""A missing, fresh, older or replaced database never takes a running gateway down
(ADR 0019); backup and restore work while the controller runs.

Real CLI, real controller, real Envoy; requests go through Envoy throughout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from controlplane.demo.echo import EchoServer
from controlplane.envoy_launcher import free_port
from controlplane.store.backup import read_backup

from .harness import Cli, Controller, Envoy, KeepAliveLoad, gatewayctl_command, request, wait_until

pytestmark = pytest.mark.e2e


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_serve_and_read_commands_never_create_a_database(tmp_path: Path) -> None:
    db = tmp_path / "data" / "gateway.db"
    env = {**os.environ, "GATEWAY_DB": str(db)}
    proc = subprocess.run(
        [*gatewayctl_command(), "serve", "--xds-address", "127.0.0.1:0", "--health-address", ""],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert str(db) in lines[0] and "gatewayctl init" in lines[0]
    assert not (tmp_path / "data").exists()  # not even the folder

    (tmp_path / "data").mkdir()
    cli = Cli(db=str(db), init=False)
    reads = [
        ("serve", "--xds-address", "127.0.0.1:0", "--health-address", ""),
        ("gateway", "list"),
        ("route", "get", "nothing"),
        ("status",),
        ("export",),
        ("events",),
        ("analytics", "summary"),
        ("-o", "json", "cluster", "list"),
    ]
    for args in reads:
        out = cli.run(*args, check=False)
        assert out.returncode != 0, args
        assert "gatewayctl init" in out.stderr, (args, out.stderr)
        assert _files(tmp_path / "data") == [], args  # no file, no -wal, no -shm

    # init creates it (0600), once; a second init leaves it alone
    first = cli.run("init")
    assert "created database" in first.stderr
    assert _files(tmp_path / "data") == ["gateway.db"]
    assert (db.stat().st_mode & 0o777) == 0o600
    assert "exists" in cli.run("init").stderr
    assert cli.json("gateway", "list") == []


def _health(ctl: Controller) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{ctl.health_port}/status", timeout=30) as r:
        return json.loads(r.read())


def _metric(ctl: Controller, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{ctl.health_port}/metrics", timeout=30) as r:
        text = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def _controller_on(cli: Cli, folder: Path, xds_port: int, *args: str) -> Controller:
    folder.mkdir(exist_ok=True)
    ctl = Controller(cli, folder, args)
    ctl.xds_port = xds_port  # the Envoy reconnects to the same address
    ctl.start()
    return ctl


def _policy(port: int, backend: int, routes: int) -> str:
    return yaml.safe_dump(
        {
            "gateways": [{"name": "public", "port": port, "address": "127.0.0.1"}],
            "clusters": [{"name": "echo", "endpoints": [f"127.0.0.1:{backend}"]}],
            "routes": [
                {
                    "name": f"r{i}",
                    "gateway": "public",
                    "match": {"path_prefix": f"/r{i}/"},
                    "cluster": "echo",
                }
                for i in range(routes)
            ],
        }
    )


def test_a_fresh_database_does_not_roll_back_a_running_envoy(tmp_path: Path) -> None:
    """A controller started on a fresh (init-ed, empty) database while an Envoy runs another
    database's policy holds the stream: Envoy keeps its listeners and keeps answering 200;
    status and health say why; --allow-rollback then lets the empty policy through."""
    echo = EchoServer("echo").start()
    port = free_port()
    real = Cli(db=str(tmp_path / "real.db"))
    real.run("apply", "-f", "-", input=_policy(port, echo.port, 3))
    first = _controller_on(real, tmp_path / "a", free_port())
    envoy = Envoy("public", "edge-1", first.xds_port, tmp_path)
    fresh: Controller | None = None
    try:
        wait_until(lambda: request(port, "/r1/x")[0] == 200, 30, 0.1)
        with KeepAliveLoad(port, ["/r0/a", "/r1/b", "/r2/c"]) as load:
            load.more(30)
            first.stop()
            empty = Cli(db=str(tmp_path / "empty.db"))  # init-ed: a new database id
            fresh = _controller_on(empty, tmp_path / "b", first.xds_port)
            held = wait_until(lambda: _health(fresh)["held"], 60, 0.2)  # type: ignore[union-attr]
            assert held[0]["node"] == "edge-1" and "database" in held[0]["reason"]
            load.more(300, timeout=60)
            [proxy] = empty.json("status")["proxies"]
            assert proxy["hold"] and not proxy["in_sync"]
            assert "HELD" in empty.run("status").stdout
            assert _metric(fresh, "gateway_xds_rollbacks_refused_total") >= 1
        assert set(load.outcomes) == {"2xx"}, load.outcomes
        assert request(port, "/r2/y")[0] == 200

        # the explicit override: the empty policy reaches Envoy, which drops the listener
        fresh.stop()
        fresh = _controller_on(empty, tmp_path / "c", first.xds_port, "--allow-rollback")

        def gone() -> bool:
            try:
                return request(port, "/r1/x", timeout=1)[0] != 200
            except OSError:
                return True

        wait_until(gone, 60, 0.2)
        assert _health(fresh)["held"] == []
    finally:
        if fresh is not None:
            fresh.stop()
        first.stop()
        envoy.stop()
        echo.stop()


ROUTES = 2000


def test_backup_and_restore_under_a_running_controller(tmp_path: Path) -> None:
    """Backup while the controller runs; the database is lost and re-created empty (the
    Envoy is held, keeps serving); restore brings every route back as a new revision, the
    Envoy takes it (no rollback), and requests through Envoy succeed throughout."""
    echo = EchoServer("echo").start()
    port = free_port()
    db = tmp_path / "gateway.db"
    cli = Cli(db=str(db))
    cli.run("apply", "-f", "-", input=_policy(port, echo.port, ROUTES), timeout=300)
    ctl = _controller_on(cli, tmp_path / "a", free_port())
    envoy = Envoy("public", "edge-1", ctl.xds_port, tmp_path)
    ctl2: Controller | None = None
    try:
        wait_until(lambda: request(port, f"/r{ROUTES - 1}/x")[0] == 200, 120, 0.2)
        paths = ["/r0/a", f"/r{ROUTES // 2}/b", f"/r{ROUTES - 1}/c"]
        with KeepAliveLoad(port, paths) as load:
            load.more(30)
            backup = tmp_path / "backups" / "gateway.backup"
            backup.parent.mkdir()
            # a write landing while the backup runs does not make it inconsistent
            writer = subprocess.Popen(
                [*gatewayctl_command(), "cluster", "add", "spare", "--endpoint", "127.0.0.1:9"],
                env={**os.environ, "GATEWAY_DB": str(db)},
            )
            out = cli.run("backup", str(backup))
            assert writer.wait(60) == 0
            assert "backed up revision" in out.stderr
            assert (backup.stat().st_mode & 0o777) == 0o600
            assert _files(backup.parent) == ["gateway.backup"]  # self-contained: no -wal

            # the disaster: the controller stops, the database is lost, a new one is made
            ctl.stop()
            for suffix in ("", "-wal", "-shm"):
                Path(f"{db}{suffix}").unlink(missing_ok=True)
            cli.run("init")
            ctl2 = _controller_on(cli, tmp_path / "b", ctl.xds_port)
            wait_until(lambda: _health(ctl2)["held"], 60, 0.2)  # type: ignore[union-attr]
            load.more(100, timeout=60)

            restored = cli.run("-o", "json", "restore", str(backup), "--wait=120s", timeout=300)
            result = json.loads(restored.stdout)
            assert result["created"] >= ROUTES + 2 and result["revision"] >= 1
            assert "is live on every connected proxy" in restored.stderr
            assert _health(ctl2)["held"] == []
            load.more(300, timeout=60)
        assert set(load.outcomes) == {"2xx"}, load.outcomes
        assert len(cli.json("route", "list")) == ROUTES
        for i in (0, 777, ROUTES - 1):
            assert request(port, f"/r{i}/z")[0] == 200

        # restoring into the live database (same id) is a new revision above the current one
        before = cli.json("status")["revision"]
        cli.run("route", "delete", "r5", "--wait")
        assert request(port, "/r5/z")[0] == 404
        out = json.loads(cli.run("-o", "json", "restore", str(backup), "--wait").stdout)
        assert out["revision"] > before + 1 and out["created"] == 1
        assert wait_until(lambda: request(port, "/r5/z")[0] == 200, 30, 0.1)
    finally:
        if ctl2 is not None:
            ctl2.stop()
        ctl.stop()
        envoy.stop()
        echo.stop()


@pytest.mark.parametrize("how", ["older copy", "removed"])
def test_a_replaced_or_removed_database_file_is_refused(tmp_path: Path, how: str) -> None:
    """Copying a backup over the live file, or deleting it, under a running controller: the
    controller refuses the new state loudly, keeps serving what it has and saves the
    database the file held; Envoy keeps the newer policy; nothing is rolled back or lost."""
    echo = EchoServer("echo").start()
    port = free_port()
    db = tmp_path / "gateway.db"
    cli = Cli(db=str(db))
    cli.run("apply", "-f", "-", input=_policy(port, echo.port, 2))
    ctl = _controller_on(cli, tmp_path / "a", free_port())
    envoy = Envoy("public", "edge-1", ctl.xds_port, tmp_path)
    try:
        wait_until(lambda: request(port, "/r1/x")[0] == 200, 30, 0.1)
        cli.run("backup", str(tmp_path / "old.backup"))
        cli.add_route("late", "public", "/late/", "echo", "--wait")
        assert request(port, "/late/x")[0] == 200
        with KeepAliveLoad(port, ["/late/a", "/r0/b"]) as load:
            load.more(20)
            if how == "older copy":
                # the usual way to put a file in place: copy next to it, rename over it
                shutil.copyfile(tmp_path / "old.backup", tmp_path / "incoming.db")
                os.replace(tmp_path / "incoming.db", db)
            else:
                db.unlink()
            problem = wait_until(lambda: _health(ctl)["store_problem"], 30, 0.1)
            assert "refusing" in problem
            assert ("was removed" if how == "removed" else "holds revision") in problem
            if how == "removed":  # and no command brings an empty database in its place
                assert cli.run("--db", cli.db, "route", "list", check=False).returncode != 0
                assert not db.exists()
            # the controller's admin API takes no write: it would land in the file the
            # controller still has open, which is gone or no longer the database
            assert cli.server is ctl  # the harness's CLI goes through that API
            lost = ("route", "add", "lost", "--gateway", "public", "--path-prefix", "/lost")
            refused = cli.run(*lost, "--cluster", "echo", check=False)
            assert refused.returncode == 5, refused.stderr
            assert "refusing the write: database file replaced" in refused.stderr
            assert (how == "removed") != db.exists()
            assert _metric(ctl, "gateway_store_refusals") >= 1
            load.more(200, timeout=60)
            assert set(load.outcomes) == {"2xx"}, load.outcomes
            assert "refusing" in ctl.log()
            assert request(port, "/late/y")[0] == 200  # the newer policy stays served
            assert ctl.proc is not None and ctl.proc.poll() is None

            # nothing is lost: the replaced database was saved; with the controller
            # stopped it goes back in place, and a controller on it serves the Envoy again
            [saved] = [p for p in tmp_path.iterdir() if p.name.startswith("gateway.db.replaced-")]
            assert (saved.stat().st_mode & 0o777) == 0o600
            assert {r.name for r in read_backup(str(saved)).objects} >= {"late", "r0", "r1"}
            ctl.stop()
            for suffix in ("", "-wal", "-shm"):
                Path(f"{db}{suffix}").unlink(missing_ok=True)
            shutil.copyfile(saved, db)
            ctl2 = _controller_on(cli, tmp_path / "b", ctl.xds_port)
            try:
                wait_until(
                    lambda: [p["in_sync"] for p in cli.json("status")["proxies"]] == [True], 120
                )
                assert _health(ctl2)["held"] == [] and not _health(ctl2)["store_problem"]
                load.more(100, timeout=60)
            finally:
                ctl2.stop()
        assert set(load.outcomes) == {"2xx"}, load.outcomes
    finally:
        ctl.stop()
        envoy.stop()
        echo.stop()

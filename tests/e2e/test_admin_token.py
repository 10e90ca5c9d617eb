"""The first admin token: a fresh ``serve`` or ``up`` writes it to a file with mode 0600."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
from pathlib import Path

import pytest

from controlplane.api.auth import authenticate
from controlplane.envoy_launcher import free_port
from controlplane.store import Store
from controlplane.store.tokens import BOOTSTRAP_NAME, TOKEN_PATTERN

from .harness import Cli, Controller, gatewayctl_command, request, wait_until

pytestmark = pytest.mark.e2e


def _check_token_file(path: Path, db: str) -> str:
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = path.read_text().strip()
    assert TOKEN_PATTERN.match(token)
    store = Store(db)
    try:
        principal = authenticate(store, f"Bearer {token}")
    finally:
        store.close()
    assert (principal.name, principal.role, principal.gateways) == (
        BOOTSTRAP_NAME,
        "admin",
        frozenset(),
    )
    return token


def test_serve_on_a_fresh_database_writes_the_token_once(tmp_path: Path) -> None:
    db = tmp_path / "data" / "gateway.db"
    cli = Cli(db=str(db), init=False)
    controller = Controller(cli, tmp_path, args=("--create",))
    controller.start()
    try:
        path = db.parent / "admin-token"
        line = f"admin token written to {path} (mode 0600)"
        assert line in controller.log()
        token = _check_token_file(path, str(db))
        assert token not in controller.log()  # the token itself is never logged
    finally:
        controller.stop()
    # a restart finds the admin token: no new one, the file is left as it is
    before = path.stat().st_mtime_ns
    controller.start()
    try:
        assert "admin token" not in controller.log()
        assert path.stat().st_mtime_ns == before
        assert [t["name"] for t in cli.json("token", "list")] == [BOOTSTRAP_NAME]
    finally:
        controller.stop()


def test_up_writes_the_token_and_says_how_to_use_it(tmp_path: Path) -> None:
    db = str(tmp_path / "gateway.db")
    token_file = tmp_path / "secret" / "token"
    port, xds, admin, aggregator = free_port(), free_port(), free_port(), free_port()
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                *gatewayctl_command(),
                *("--db", db, "up", "--demo", "--port", str(port)),
                *("--xds-port", str(xds), "--admin-port", str(admin)),
                *("--aggregator-port", str(aggregator)),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "GATEWAY_DB": "", "GATEWAY_ADMIN_TOKEN_FILE": str(token_file)},
            start_new_session=True,
        )
    try:
        wait_until(lambda: "is up" in log.read_text() or proc.poll() is not None, 60, 0.1)
        assert proc.poll() is None, log.read_text()
        text = log.read_text()
        assert f"admin token written to {token_file} (mode 0600)" in text
        assert f"export GATEWAY_TOKEN=$(cat {token_file})" in text
        token = _check_token_file(token_file, db)
        assert token not in text
        assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
        status, _, _ = request(port, "/hello")
        assert status == 200
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise

"""``gatewayctl up``: the README's first command, a working local gateway."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from controlplane.envoy_launcher import free_port

from .harness import Cli, gatewayctl_command, request, wait_until

pytestmark = pytest.mark.e2e


def test_up_serves_the_demo_and_takes_changes(tmp_path: Path) -> None:
    db = str(tmp_path / "gateway.db")
    port, xds, admin = free_port(), free_port(), free_port()
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                *gatewayctl_command(),
                "--db",
                db,
                "up",
                "--demo",
                "--port",
                str(port),
                "--xds-port",
                str(xds),
                "--admin-port",
                str(admin),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "GATEWAY_DB": ""},
            start_new_session=True,
        )
    try:
        wait_until(lambda: "is up" in log.read_text() or proc.poll() is not None, 60, 0.1)
        assert proc.poll() is None, log.read_text()
        assert f"http://127.0.0.1:{port}/" in log.read_text()

        status, headers, body = request(port, "/hello")
        assert status == 200 and headers["x-backend"] == "demo" and body["path"] == "/hello"

        # the CLI changes the running gateway: same database, pushed live
        cli = Cli(db=db)
        cli.run(
            "route",
            "add",
            "teapot",
            "--gateway",
            "public",
            "--path",
            "/tea",
            "--direct-response",
            "418",
            "--body",
            "short and stout",
            "--wait",
        )
        status, _, body = request(port, "/tea")
        assert (status, body) == (418, "short and stout")
        [proxy] = cli.json("status")["proxies"]
        assert proxy["gateway"] == "public" and proxy["in_sync"]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    # Ctrl-C stops Envoy too: nothing is left listening
    time.sleep(0.2)
    with pytest.raises(OSError):
        request(port, "/hello", timeout=1)

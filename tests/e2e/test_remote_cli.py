"""The CLI as a thin client: only GATEWAY_URL and GATEWAY_TOKEN, from another working
directory, against a real ``serve --admin-address`` and a real Envoy.

Written against the admin API contract; skipped until the server (``controlplane.api``)
is part of the tree.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("controlplane.api")

from controlplane.envoy_launcher import free_port

from .harness import Cli, Controller, backend_of, gatewayctl_command

pytestmark = pytest.mark.e2e


@pytest.fixture
def admin_port() -> int:
    return free_port()


@pytest.fixture
def controller(cli: Cli, tmp_path: Path, admin_port: int):  # type: ignore[no-untyped-def]
    c = Controller(cli, tmp_path, ("--admin-address", f"127.0.0.1:{admin_port}"))
    c.start()
    yield c
    c.stop()


def _token(cli: Cli) -> str:
    """A new admin token (``token add`` prints it once, on standard output)."""
    out = cli.run("token", "add", "remote-e2e", "--role", "admin").stdout
    return next(word for word in out.split() if word.startswith("gw_"))


class Remote:
    """``gatewayctl`` with no database: only the URL and the token, another directory."""

    def __init__(self, url: str, token: str, workdir: Path) -> None:
        workdir.mkdir(exist_ok=True)
        self.workdir = workdir
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        self.env.update(
            GATEWAY_URL=url, GATEWAY_TOKEN=token, XDG_CONFIG_HOME=str(workdir / "config")
        )

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [*gatewayctl_command(), *args],
            env=self.env,
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"gatewayctl {' '.join(args)} exited {proc.returncode}: {proc.stderr}"
            )
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "-o", "json").stdout)


def test_remote_cli_manages_a_running_controller(  # type: ignore[no-untyped-def]
    cli, controller, envoy_factory, backends, gateway_port, admin_port, tmp_path
):
    remote = Remote(f"http://127.0.0.1:{admin_port}", _token(cli), tmp_path / "elsewhere")
    remote.run("gateway", "add", "public", "--port", str(gateway_port), "--address", "127.0.0.1")
    envoy_factory("public")
    alpha = backends["alpha"].port
    remote.run("cluster", "add", "alpha", "--endpoint", f"127.0.0.1:{alpha}", "--wait")
    remote.run(
        "route", "add", "users", "--gateway", "public", "--path-prefix", "/users",
        "--cluster", "alpha", "--wait",
    )  # fmt: skip
    # --wait returned: the first request through Envoy already takes the new route
    assert backend_of(gateway_port, "/users/1") == "alpha"

    beta = backends["beta"].port
    remote.run("cluster", "add", "beta", "--endpoint", f"127.0.0.1:{beta}")
    remote.run("route", "update", "users", "--cluster", "beta", "--wait")
    assert backend_of(gateway_port, "/users/1") == "beta"

    # the same objects print the same JSON locally and through the admin API
    for args in (
        ("route", "list"),
        ("cluster", "list"),
        ("gateway", "list"),
        ("route", "get", "users"),
        ("cluster", "get", "beta"),
    ):
        assert remote.json(*args) == cli.json(*args), args

    status = remote.run("status", "-o", "json", check=False)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["revision"] == cli.json("status")["revision"]

    remote.run("route", "delete", "users", "--wait")
    assert backend_of(gateway_port, "/users/1") == 404


def test_remote_errors_and_no_token(  # type: ignore[no-untyped-def]
    cli, controller, admin_port, tmp_path
):
    url = f"http://127.0.0.1:{admin_port}"
    token = _token(cli)
    remote = Remote(url, token, tmp_path / "elsewhere")
    missing = remote.run("route", "get", "nope", check=False)
    assert missing.returncode == 3
    assert len(missing.stderr.strip().splitlines()) == 1
    anonymous = Remote(url, "", tmp_path / "anonymous")
    anonymous.env.pop("GATEWAY_TOKEN")
    denied = anonymous.run("route", "list", check=False)
    assert denied.returncode == 9
    assert token not in denied.stderr + missing.stderr
    local_only = remote.run("secrets", "status", check=False)
    assert local_only.returncode == 2
    assert "works on the database directly: use --db" in local_only.stderr

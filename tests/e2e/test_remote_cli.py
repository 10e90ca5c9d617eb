"""The CLI as a thin client: only GATEWAY_URL and GATEWAY_TOKEN, from another working
directory, against a real ``serve --admin-address`` and a real Envoy.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controlplane.envoy_launcher import free_port

from .harness import Cli, Controller, Remote, backend_of

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
    assert "works on the local database only: use --db" in local_only.stderr


def test_remote_identities_audit_history_and_rollback(  # type: ignore[no-untyped-def]
    cli, controller, envoy_factory, backends, gateway_port, admin_port, tmp_path
):
    """Through the admin API only: an admin makes a viewer and a gateway-scoped editor;
    the viewer cannot write (exit 9), the scoped editor cannot touch another gateway's
    route (exit 9) but writes its own; ``audit`` names each writer with old and new values;
    ``rollback`` writes the old policy as a new revision that Envoy serves; a revoked
    token is refused on its next call."""
    url = f"http://127.0.0.1:{admin_port}"
    admin = Remote(url, _token(cli), tmp_path / "admin")
    admin.run("gateway", "add", "public", "--port", str(gateway_port), "--address", "127.0.0.1")
    admin.run("gateway", "add", "internal", "--port", "1", "--address", "127.0.0.1")
    envoy_factory("public")
    alpha, beta = backends["alpha"].port, backends["beta"].port
    admin.run("cluster", "add", "alpha", "--endpoint", f"127.0.0.1:{alpha}")
    admin.run("cluster", "add", "beta", "--endpoint", f"127.0.0.1:{beta}")
    admin.run(
        "route", "add", "users", "--gateway", "public", "--path-prefix", "/users",
        "--cluster", "alpha", "--wait",
    )  # fmt: skip
    admin.run(
        "route", "add", "ops", "--gateway", "internal", "--path-prefix", "/ops",
        "--cluster", "alpha",
    )  # fmt: skip
    planned = cli.json("status")["revision"]

    viewer_token = admin.run("token", "add", "reader", "--role", "viewer").stdout.strip()
    team_token = admin.run(
        "token", "add", "web-team", "--role", "editor", "--gateway", "public"
    ).stdout.strip()
    listed = {t["name"]: t for t in admin.json("token", "list")}
    assert listed["reader"]["role"] == "viewer" and listed["web-team"]["gateways"] == ["public"]
    assert viewer_token not in json.dumps(listed) and team_token not in json.dumps(listed)

    viewer = Remote(url, viewer_token, tmp_path / "viewer")
    assert [r["name"] for r in viewer.json("route", "list")] == ["ops", "users"]
    refused = viewer.run("route", "update", "users", "--cluster", "beta", check=False)
    assert refused.returncode == 9, refused.stderr
    assert viewer_token not in refused.stderr

    team = Remote(url, team_token, tmp_path / "team")
    other = team.run("route", "update", "ops", "--cluster", "beta", check=False)
    assert other.returncode == 9 and "ops" in other.stderr, other.stderr
    team.run("route", "update", "users", "--cluster", "beta", "--wait")
    assert backend_of(gateway_port, "/users/1") == "beta"

    # the audit names the token that wrote, with the old and the new value
    [entry] = admin.json("audit", "--kind", "route", "--name", "users", "--actor", "web-team")
    assert entry["before"]["cluster"] == "alpha" and entry["after"]["cluster"] == "beta"
    history = admin.json("history", "route", "users")
    assert history[0]["actor"] == "web-team"

    # rollback to the revision before the team's change: a NEW revision, served by Envoy
    admin.run("rollback", str(planned), "--wait")
    assert backend_of(gateway_port, "/users/1") == "alpha"
    assert cli.json("status")["revision"] > planned + 1
    assert cli.json("route", "get", "users")["cluster"] == "alpha"

    admin.run("token", "revoke", "web-team")
    revoked = team.run("route", "list", check=False)
    assert revoked.returncode == 9, revoked.stderr

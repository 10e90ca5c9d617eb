"""A bad object in the database stops only its own gateway, on a real controller and Envoys.

The row is written straight into SQLite (as an older version or a hand edit could, past
every check): the gateway it belongs to keeps serving its last good configuration and says
why in ``status``, ``/status`` and ``--wait``; the other gateway and later valid changes go
live; a restarted controller starts and serves; fixing the object brings the gateway back.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest

from controlplane.envoy_launcher import free_port
from tests.unit.test_confinement import corrupt

from .harness import Cli, Controller, backend_of, wait_connected, wait_until

pytestmark = pytest.mark.e2e

FAULT = "stored cluster 'alpha': circuit_breakers.max_requests: 4294967296 is out of range"


def _controller_status(controller: Controller) -> dict[str, Any]:
    url = f"http://127.0.0.1:{controller.health_port}/status"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def _error_of(cli: Cli, gateway: str) -> str | None:
    return cli.json("status")["gateways"].get(gateway, {}).get("error")  # type: ignore[no-any-return]


def test_bad_row_is_confined_to_its_gateway(  # type: ignore[no-untyped-def]
    cli, controller, envoy_factory, backends
):
    web_port, api_port = free_port(), free_port()
    cli.add_gateway("web", web_port)
    cli.add_gateway("api", api_port)
    cli.run("cluster", "add", "alpha", "--endpoint", f"127.0.0.1:{backends['alpha'].port}")
    cli.run("cluster", "add", "beta", "--endpoint", f"127.0.0.1:{backends['beta'].port}")
    cli.add_route("web-root", "web", "/", "alpha")
    cli.run("route", "add", "api-root", "--gateway", "api", "--path-prefix", "/",
            "--cluster", "beta", "--wait")  # fmt: skip
    envoy_factory("web")
    envoy_factory("api")
    wait_until(lambda: backend_of(web_port, "/x") == "alpha", timeout=30)
    wait_until(lambda: backend_of(api_port, "/x") == "beta", timeout=30)

    # 1. a value out of range lands in the database behind the controller's back
    corrupt(
        cli.db, "cluster", "alpha", lambda s: s.update(circuit_breakers={"max_requests": 2**32})
    )
    wait_until(lambda: (_error_of(cli, "web") or "").startswith(FAULT), timeout=30)
    assert _controller_status(controller)["gateways"]["web"]["error"].startswith(FAULT)
    text = cli.run("status").stderr
    assert f"gateway web: not updated: {FAULT}" in text
    assert _error_of(cli, "api") is None
    assert backend_of(web_port, "/x") == "alpha"  # the last good configuration still serves

    # 2. a later valid change to the other gateway goes live, and --wait says so
    cli.run("route", "add", "api-new", "--gateway", "api", "--path-prefix", "/new",
            "--cluster", "beta", "--wait")  # fmt: skip
    assert backend_of(api_port, "/new") == "beta"
    # ... while a change to the failing gateway is reported by --wait, naming both
    proc = cli.run("route", "add", "web-new", "--gateway", "web", "--path-prefix", "/new",
                   "--cluster", "beta", "--wait=20s", check=False)  # fmt: skip
    assert proc.returncode == 7, proc.stderr
    assert f"gateway 'web' was not updated: {FAULT}" in proc.stderr
    assert backend_of(web_port, "/new") == "alpha"  # still the old routes

    # 3. a controller restarted on this database starts, serves and reports
    controller.stop()
    controller.start()
    assert _controller_status(controller)["gateways"]["web"]["error"].startswith(FAULT)
    wait_connected(cli, 2)
    cli.run("route", "add", "api-later", "--gateway", "api", "--path-prefix", "/later",
            "--cluster", "beta", "--wait")  # fmt: skip
    assert backend_of(api_port, "/later") == "beta"
    assert backend_of(web_port, "/x") == "alpha"  # Envoy keeps what it ran

    # 4. fixing the object brings the gateway back, with the change made meanwhile
    cli.run("cluster", "update", "alpha", "--max-requests", "100", "--wait")
    assert _error_of(cli, "web") is None
    assert _controller_status(controller)["gateways"]["web"]["error"] is None
    wait_until(lambda: backend_of(web_port, "/new") == "beta", timeout=30)

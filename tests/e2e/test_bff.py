"""Backends for frontends: two gateways from one controller, each with its own Envoy."""

from __future__ import annotations

import pytest

from controlplane.envoy_launcher import free_port

from .harness import backend_of

pytestmark = pytest.mark.e2e


def test_two_gateways_see_their_own_routes_and_share_one(  # type: ignore[no-untyped-def]
    cli, controller, envoy_factory, backends
) -> None:
    web, mobile = free_port(), free_port()
    cli.add_gateway("web", web)
    cli.add_gateway("mobile", mobile)
    for name, server in backends.items():
        cli.run("cluster", "add", name, "--endpoint", f"127.0.0.1:{server.port}")
    cli.add_route("pages", "web", "/pages", "alpha")
    cli.add_route("feed", "mobile", "/feed", "beta")
    cli.run("route", "add", "account", "--gateway", "web", "--gateway", "mobile",
            "--path-prefix", "/account", "--cluster", "alpha")  # fmt: skip
    envoy_factory("web", "web-1")
    envoy_factory("mobile", "mobile-1")
    cli.run("route", "update", "account", "--timeout", "5s", "--wait")

    assert backend_of(web, "/pages/1") == "alpha"
    assert backend_of(web, "/feed") == 404  # the mobile gateway's route
    assert backend_of(mobile, "/feed") == "beta"
    assert backend_of(mobile, "/pages/1") == 404  # the web gateway's route
    assert backend_of(web, "/account") == backend_of(mobile, "/account") == "alpha"

    # a change to the shared route reaches both fleets; a web-only change leaves mobile alone
    cli.run("route", "update", "account", "--cluster", "beta", "--wait")
    assert backend_of(web, "/account") == backend_of(mobile, "/account") == "beta"
    cli.run("route", "update", "pages", "--cluster", "beta", "--wait")
    assert backend_of(web, "/pages/1") == "beta" and backend_of(mobile, "/pages/1") == 404

    status = cli.json("status")
    serving = {p["node"]: p["gateway"] for p in status["proxies"] if p["connected"]}
    assert serving == {"web-1": "web", "mobile-1": "mobile"}
    assert all(p["in_sync"] for p in status["proxies"])

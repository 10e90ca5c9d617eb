"""CORS answered by Envoy: preflights never reach the backend; refused origins get no grant."""

from __future__ import annotations

import pytest

from .harness import request

pytestmark = pytest.mark.e2e


def test_cors_preflight_and_actual_requests(cli, controller, envoy_factory, backends, gateway_port):  # type: ignore[no-untyped-def]
    cli.run(
        "gateway",
        "add",
        "public",
        "--port",
        str(gateway_port),
        "--address",
        "127.0.0.1",
        "--cors-origin",
        "https://app.example.com",
        "--cors-max-age",
        "10m",
    )
    cli.run("cluster", "add", "alpha", "--endpoint", f"127.0.0.1:{backends['alpha'].port}")
    cli.run("consumer", "add", "acme")
    key = cli.run("consumer", "key", "add", "acme").stdout.strip()
    # the route overrides the gateway's policy and needs an API key
    cli.run(
        "route",
        "add",
        "api",
        "--gateway",
        "public",
        "--path-prefix",
        "/api",
        "--cluster",
        "alpha",
        "--auth-api-key",
        "--cors-origin",
        "https://*.example.org",
        "--cors-credentials",
        "--cors-header",
        "x-api-key",
        "--cors-max-age",
        "5m",
    )
    cli.run(
        "route",
        "add",
        "site",
        "--gateway",
        "public",
        "--path-prefix",
        "/site",
        "--cluster",
        "alpha",
    )
    envoy_factory("public")
    cli.run("route", "update", "site", "--timeout", "5s", "--wait")
    hits = backends["alpha"].hits

    preflight = {
        "origin": "https://shop.example.org",
        "access-control-request-method": "POST",
        "access-control-request-headers": "x-api-key",
    }
    status, headers, _ = request(gateway_port, "/api/orders", method="OPTIONS", headers=preflight)
    assert status == 200  # answered without an API key
    assert headers["access-control-allow-origin"] == "https://shop.example.org"
    assert headers["access-control-allow-credentials"] == "true"
    assert "POST" in headers["access-control-allow-methods"]
    assert "x-api-key" in headers["access-control-allow-headers"]
    assert headers["access-control-max-age"] == "300"
    assert backends["alpha"].hits == hits  # the backend never saw the preflight

    refused = {**preflight, "origin": "https://evil.example.com"}
    status, headers, _ = request(gateway_port, "/api/orders", method="OPTIONS", headers=refused)
    assert "access-control-allow-origin" not in headers

    status, headers, _ = request(
        gateway_port,
        "/api/orders",
        headers={"origin": "https://shop.example.org", "x-api-key": key},
    )
    assert status == 200 and headers["access-control-allow-origin"] == "https://shop.example.org"
    status, headers, _ = request(
        gateway_port,
        "/api/orders",
        headers={"origin": "https://evil.example.com", "x-api-key": key},
    )
    assert status == 200 and "access-control-allow-origin" not in headers

    # the gateway's own policy on a route without one
    status, headers, _ = request(
        gateway_port, "/site", headers={"origin": "https://app.example.com"}
    )
    assert headers["access-control-allow-origin"] == "https://app.example.com"
    status, headers, _ = request(
        gateway_port, "/site", headers={"origin": "https://shop.example.org"}
    )
    assert "access-control-allow-origin" not in headers


def test_bad_cors_input(cli) -> None:  # type: ignore[no-untyped-def]
    cli.run("gateway", "add", "public", "--port", "8080")
    before = cli.run("export").stdout
    proc = cli.run("gateway", "update", "public", "--cors-origin", "app.example.com", check=False)
    assert (
        proc.returncode == 2
        and "cors.allow_origins" in proc.stderr
        and "is not an origin" in proc.stderr
    )
    proc = cli.run(
        "gateway", "update", "public", "--cors-origin", "*", "--cors-credentials", check=False
    )
    assert proc.returncode == 2 and "allow_credentials" in proc.stderr
    assert cli.run("export").stdout == before

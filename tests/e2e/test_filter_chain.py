"""The lean filter chain (ADR 0045) through the real CLI, controller and Envoy: the first
protected route of a plain gateway changes no listener, drops no request, and is checked
on a connection opened before it existed."""

from __future__ import annotations

import http.client

import pytest

from controlplane.envoy_launcher import stats

from .harness import KeepAliveLoad, request, wait_until

pytestmark = pytest.mark.e2e

LISTENER_STATS = (
    r"listener_manager\.(listener_added|listener_modified|listener_in_place_updated"
    r"|listener_removed|total_listeners_draining)$"
)


def test_the_first_keyed_route_changes_no_listener(  # type: ignore[no-untyped-def]
    cli, controller, envoy_factory, backends, gateway_port
) -> None:
    cli.add_gateway("public", gateway_port)
    cli.run("cluster", "add", "alpha", "--endpoint", f"127.0.0.1:{backends['alpha'].port}")
    cli.run("consumer", "add", "acme")
    cli.add_route("open", "public", "/open", "alpha")
    envoy = envoy_factory("public")
    cli.run("route", "update", "open", "--timeout", "5s", "--wait")
    assert request(gateway_port, "/open")[0] == 200
    before = stats(envoy.admin_port, LISTENER_STATS)
    assert len(before) == 5, before

    # a keep-alive connection opened before the protected route exists
    early = http.client.HTTPConnection("127.0.0.1", gateway_port, timeout=5)
    early.request("GET", "/open")
    early.getresponse().read()
    with KeepAliveLoad(gateway_port, ["/open/x"]) as load:
        load.more(50)
        cli.add_route("keyed", "public", "/keyed", "alpha", "--auth-api-key", "--wait")
        key = cli.run("consumer", "key", "add", "acme", "--wait").stdout.strip()
        load.more(50)
    assert set(load.outcomes) == {"2xx"}, load.outcomes
    assert stats(envoy.admin_port, LISTENER_STATS) == before  # nothing drained or replaced

    # the connection opened before: its next request meets the key check (the filter was
    # in its chain all along, switched on by the route)
    early.request("GET", "/keyed", headers={"x-consumer-id": "mallory"})
    resp = early.getresponse()
    resp.read()
    assert resp.status == 401
    early.request("GET", "/keyed", headers={"x-api-key": key, "x-consumer-id": "mallory"})
    resp = early.getresponse()
    body = resp.read()
    assert resp.status == 200, body
    assert b'"x-consumer-id": "acme"' in body  # the gateway's identity, not the client's
    early.close()
    # and the plain route now strips a client's identity header too
    status, _, echoed = request(gateway_port, "/open", headers={"x-consumer-id": "mallory"})
    assert status == 200 and "x-consumer-id" not in echoed["headers"]
    wait_until(lambda: cli.json("status")["proxies"][0]["in_sync"])

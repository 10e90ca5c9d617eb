"""Route shards (ADR 0017) through the real CLI, controller and Envoy: a gateway over the
controller's threshold is served by scoped RDS, routes exactly as one table would, and
changes of layout (listener changes) drop no request."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.envoy_launcher import stats
from controlplane.xds.server import LATE_INTERVAL

from .harness import Controller, KeepAliveLoad, backend_of, request, wait_until
from .tlsutil import TestCA, https_request

pytestmark = pytest.mark.e2e

#: routes: /api/users00 ... /api/users29 (alpha, odd ones beta), an exact path, and one
#: route for one host only
ROUTES = 30


@pytest.fixture
def controller(cli, tmp_path: Path) -> Iterator[Controller]:  # type: ignore[no-untyped-def]
    c = Controller(cli, tmp_path, ("--route-shards-from", "20"))
    c.start()
    yield c
    c.stop()


def _policy(gateway_port: int, backends: dict) -> dict:  # type: ignore[type-arg]
    routes = [
        {
            "name": f"users{i:02d}",
            "gateways": ["public"],
            "match": {"path_prefix": f"/api/users{i:02d}"},
            "cluster": "beta" if i % 2 else "alpha",
        }
        for i in range(ROUTES)
    ]
    routes.append(
        {
            "name": "health",
            "gateways": ["public"],
            "match": {"path": "/api/health"},
            "cluster": "beta",
        }
    )
    routes.append(
        {
            "name": "special",
            "gateways": ["public"],
            "hosts": ["special.example"],
            "match": {"path_prefix": "/api/users04"},
            "cluster": "beta",
        }
    )
    return {
        "gateways": [{"name": "public", "port": gateway_port}],
        "clusters": [
            {"name": n, "endpoints": [f"127.0.0.1:{s.port}"]} for n, s in backends.items()
        ],
        "routes": routes,
    }


#: the scope keys of _policy(): 11 characters ("/api/users0" is shared by 11 routes), and
#: the fallback (routes shorter than the key, ADR 0045)
SCOPES = {"11/api/users0", "11/api/users1", "11/api/users2", "11/api/health", "11*"}


def _apply(cli, envoy_factory, policy: dict, tmp_path: Path):  # type: ignore[no-untyped-def]
    """An Envoy for gateway public, then the policy applied with --wait."""
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(policy))
    envoy = envoy_factory("public")
    cli.run("apply", "-f", str(path), "--wait")
    return envoy


def _admin_json(admin_port: int, path: str) -> dict:  # type: ignore[type-arg]
    conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=5)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())  # type: ignore[no-any-return]
    finally:
        conn.close()


def _scopes(admin_port: int) -> set[str]:
    dump = _admin_json(admin_port, "/config_dump?resource=dynamic_scoped_route_configs")
    out = set()
    for entry in dump.get("configs", []):
        for scope in entry.get("scoped_route_configs", []):
            out.add(scope["key"]["fragments"][0]["string_key"])
    return out


def _backend_on(conn: http.client.HTTPConnection, path: str) -> str:
    conn.request("GET", path)
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 200, resp.status
    return resp.getheader("x-backend", "")


def _route_specifier(admin_port: int) -> str:
    dump = _admin_json(admin_port, "/config_dump?resource=dynamic_listeners")
    [listener] = [x for x in dump["configs"] if x["name"] == "public"]
    hcm = listener["active_state"]["listener"]["filter_chains"][0]["filters"][0]["typed_config"]
    return "scoped_routes" if "scoped_routes" in hcm else "rds"


def test_sharded_gateway_routes_as_one_table(
    cli, controller, envoy_factory, backends, gateway_port, tmp_path
):  # type: ignore[no-untyped-def]
    envoy = _apply(cli, envoy_factory, _policy(gateway_port, backends), tmp_path)

    # 32 routes over the threshold of 20: "/api/users04" and the rest share 11 characters
    # ("/api/users0"), so shards are keyed by 11: /api/users0, 1, 2 and /api/health
    assert _route_specifier(envoy.admin_port) == "scoped_routes"
    assert _scopes(envoy.admin_port) == SCOPES
    for i in range(ROUTES):
        expected = "beta" if i % 2 else "alpha"
        assert backend_of(gateway_port, f"/api/users{i:02d}/x?page=2") == expected, i
    assert backend_of(gateway_port, "/api/health") == "beta"
    assert backend_of(gateway_port, "/api/health?full=1") == "beta"
    assert backend_of(gateway_port, "/api/health/x") == 404  # exact path only
    assert backend_of(gateway_port, "/api/users3") == 404  # in no shard
    assert backend_of(gateway_port, "/api/users0x") == 404  # in a shard, no route
    assert backend_of(gateway_port, "/nothing") == 404
    assert backend_of(gateway_port, "/api//users05/./x") == "beta"  # normalised first

    # the host's own route wins for its host only, as in one table
    status, headers, _ = request(
        gateway_port, "/api/users04/1", headers={"Host": "special.example"}
    )
    assert (status, headers.get("x-backend")) == (200, "beta")
    assert backend_of(gateway_port, "/api/users04/1") == "alpha"

    # the key comes from the path, never from the client, and does not reach the upstream
    status, headers, body = request(
        gateway_port, "/api/users02", headers={"x-gateway-route-scope": "11/api/users1"}
    )
    assert (status, headers.get("x-backend")) == (200, "alpha")
    assert "x-gateway-route-scope" not in body["headers"]

    cli.run("route", "update", "users02", "--cluster", "beta", "--wait")
    assert backend_of(gateway_port, "/api/users02") == "beta"
    [proxy] = cli.json("status")["proxies"]
    assert proxy["in_sync"], proxy


def test_layout_changes_drop_no_request(
    cli, controller, envoy_factory, backends, gateway_port, tmp_path
):  # type: ignore[no-untyped-def]
    envoy = _apply(cli, envoy_factory, _policy(gateway_port, backends), tmp_path)
    assert _route_specifier(envoy.admin_port) == "scoped_routes"

    paths = [f"/api/users{i:02d}/k" for i in (0, 13, 27)]
    with KeepAliveLoad(gateway_port, paths) as load:
        load.more(100)
        # a connection opened before the layout changes stays on the old listener
        old = http.client.HTTPConnection("127.0.0.1", gateway_port, timeout=5)
        assert _backend_on(old, "/api/users02") == "alpha"
        sock = old.sock
        # a regex path has no literal: no shard layout can keep it, one table again
        cli.run(
            "route", "add", "short", "--gateway", "public", "--path-regex", "/a[b]c.*",
            "--cluster", "beta", "--wait",
        )  # fmt: skip
        assert _route_specifier(envoy.admin_port) == "rds"
        assert backend_of(gateway_port, "/abc") == "beta"
        assert backend_of(gateway_port, "/api/users00") == "alpha"  # longer prefix first
        # a change after the layout change reaches the old listener's connections too
        # (within LATE_INTERVAL); such a connection closes after its next response
        cli.run("route", "update", "users02", "--cluster", "beta", "--wait")
        assert backend_of(gateway_port, "/api/users02") == "beta"
        time.sleep(LATE_INTERVAL + 0.5)
        assert old.sock is sock, "Envoy closed the idle connection: the old listener untested"
        old.request("GET", "/api/users02")
        resp = old.getresponse()
        resp.read()
        assert (resp.status, resp.getheader("x-backend")) == (200, "beta")
        assert resp.getheader("connection") == "close"  # the drained listener answered
        old.close()
        load.more(100)
        # gone again: sharded again, by the same layout
        cli.run("route", "delete", "short", "--wait")
        assert _route_specifier(envoy.admin_port) == "scoped_routes"
        assert backend_of(gateway_port, "/abc") == 404
        load.more(100)
        for i in range(ROUTES):
            expected = "beta" if i % 2 or i == 2 else "alpha"
            assert backend_of(gateway_port, f"/api/users{i:02d}") == expected
    assert set(load.outcomes) == {"2xx"}, load.outcomes
    [proxy] = cli.json("status")["proxies"]
    assert proxy["in_sync"], proxy


def _listener_counters(admin_port: int) -> dict[str, int]:
    return stats(
        admin_port,
        r"listener_manager\.(listener_added|listener_modified|listener_in_place_updated"
        r"|listener_removed|total_listeners_draining|total_listeners_warming)$",
    )


def test_a_short_route_leaves_the_shards_and_the_listener_alone(
    cli, controller, envoy_factory, backends, gateway_port, tmp_path
):  # type: ignore[no-untyped-def]
    """Issue 14 item 6: routes shorter than the key (``/new``, a catch-all ``/``) go to the
    fallback shard (and into the shards their literal starts): no new listener, nothing
    draining, old routes and the new ones answer, case variants included."""
    envoy = _apply(cli, envoy_factory, _policy(gateway_port, backends), tmp_path)
    assert _route_specifier(envoy.admin_port) == "scoped_routes"
    before = _listener_counters(envoy.admin_port)
    assert len(before) == 6, before  # every counter exists
    listeners = _admin_json(envoy.admin_port, "/config_dump?resource=dynamic_listeners")

    with KeepAliveLoad(gateway_port, ["/api/users13/k", "/api/health"]) as load:
        load.more(50)
        cli.add_route("new", "public", "/new", "beta", "--wait")
        assert backend_of(gateway_port, "/new") == "beta"
        assert backend_of(gateway_port, "/new/x?y=1") == "beta"
        assert backend_of(gateway_port, "/NEW/x") == "beta"  # re-keyed, then the fallback
        assert backend_of(gateway_port, "/newer") == "beta"  # a prefix, as in one table
        assert backend_of(gateway_port, "/API/USERS13") == "beta"  # re-keyed in lower case
        assert backend_of(gateway_port, "/nothing") == 404
        # a short route whose literal starts shards joins them, after their own routes
        cli.add_route("api-all", "public", "/api", "alpha", "--wait")
        assert backend_of(gateway_port, "/api/users13") == "beta"
        assert backend_of(gateway_port, "/api/users0x") == "alpha"  # in a shard, via api-all
        assert backend_of(gateway_port, "/api/other") == "alpha"  # no shard: the fallback
        assert backend_of(gateway_port, "/Api/Users3") == "alpha"
        cli.run("route", "update", "users13", "--cluster", "alpha", "--wait")
        assert backend_of(gateway_port, "/api/users13") == "alpha"
        cli.run("route", "delete", "api-all", "--wait")
        assert backend_of(gateway_port, "/api/users0x") == 404
        load.more(50)
    assert set(load.outcomes) == {"2xx"}, load.outcomes
    assert _listener_counters(envoy.admin_port) == before
    assert _admin_json(envoy.admin_port, "/config_dump?resource=dynamic_listeners") == listeners
    assert _scopes(envoy.admin_port) == SCOPES
    [proxy] = cli.json("status")["proxies"]
    assert proxy["in_sync"], proxy


def test_controller_restart_keeps_the_layout(
    cli, controller, envoy_factory, backends, gateway_port, tmp_path
):  # type: ignore[no-untyped-def]
    envoy = _apply(cli, envoy_factory, _policy(gateway_port, backends), tmp_path)
    assert _route_specifier(envoy.admin_port) == "scoped_routes"
    listener_changes = r"listener_manager\.listener_(modified|in_place_updated)$"
    before = stats(envoy.admin_port, listener_changes)
    assert len(before) == 2, before  # both counters exist

    with KeepAliveLoad(gateway_port, ["/api/users13/k"]) as load:
        load.more(50)
        controller.kill()
        load.more(50)  # Envoy serves on its own
        cli.run("route", "update", "users02", "--cluster", "beta")  # while no controller
        assert backend_of(gateway_port, "/api/users02") == "alpha"
        controller.start()
        wait_until(lambda: backend_of(gateway_port, "/api/users02") == "beta")
        load.more(50)
    assert set(load.outcomes) == {"2xx"}, load.outcomes
    # the restarted controller chose the same layout: the listener was not touched
    assert stats(envoy.admin_port, listener_changes) == before
    assert _scopes(envoy.admin_port) == SCOPES
    wait_until(lambda: cli.json("status")["proxies"][0]["in_sync"])


def test_sharded_https_gateway(cli, controller, envoy_factory, backends, gateway_port, tmp_path):  # type: ignore[no-untyped-def]
    """Every SNI filter chain (and the default one) routes through the same shards."""
    ca = TestCA()
    for name, host in (("api", "api.example.test"), ("shop", "shop.example.test")):
        cert, key = ca.issue(host, [host]).write(tmp_path, name)
        cli.run("cert", "add", name, "--cert", cert, "--key", key)
    policy = _policy(gateway_port, backends)
    policy["gateways"][0].update(address="127.0.0.1", tls={"certificates": ["api", "shop"]})
    envoy = _apply(cli, envoy_factory, policy, tmp_path)
    assert _scopes(envoy.admin_port) == SCOPES
    for server_name in ("api.example.test", "shop.example.test", None):
        for i in (0, 13, 27):
            resp = https_request(
                gateway_port, server_name, f"/api/users{i:02d}/x", ca.pem, verify_name=False
            )
            expected = "beta" if i % 2 else "alpha"
            assert (resp.status, resp.headers.get("x-backend")) == (200, expected), server_name
        resp = https_request(gateway_port, server_name, "/nothing", ca.pem, verify_name=False)
        assert resp.status == 404

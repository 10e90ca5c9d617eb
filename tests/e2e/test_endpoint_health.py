"""Endpoints of a health-checked cluster through a real Envoy: a removed endpoint gets no new
request once `cluster update --wait` returns, and a recovered endpoint is back in rotation
after the documented number of passing probes (healthy_threshold), also in a cluster that
has never carried traffic."""

from __future__ import annotations

import http.client
import urllib.request
from collections import Counter
from collections.abc import Iterator

import pytest

from controlplane.demo.echo import EchoServer

from .harness import KeepAliveLoad, wait_until

pytestmark = pytest.mark.e2e

PROBE = "/healthz"


@pytest.fixture
def servers() -> Iterator[dict[str, EchoServer]]:
    """Backends that keep every request they saw, so traffic can be told from probes."""
    started = {name: EchoServer(name, keep_requests=100_000).start() for name in ("a", "b")}
    yield started
    for server in started.values():
        server.stop()


def _served(server: EchoServer, prefix: str) -> int:
    """Requests (not health probes) that reached ``server`` under ``prefix``."""
    return sum(1 for r in server.requests if r["path"].startswith(prefix))


def _served_since(server: EchoServer, start: int) -> int:
    return sum(1 for r in server.requests[start:] if r["path"].startswith("/users"))


def _probes(server: EchoServer) -> int:
    return sum(1 for r in server.requests if r["path"] == PROBE)


def _backends_of(port: int, path: str, n: int) -> Counter[str]:
    seen: Counter[str] = Counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for _ in range(n):
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            seen[resp.getheader("x-backend") or str(resp.status)] += 1
    finally:
        conn.close()
    return seen


def _hosts(admin_port: int, cluster: str) -> dict[str, str]:
    """Envoy's view of a cluster: "host:port" -> health flags, from /clusters."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/clusters", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[0] == cluster and parts[2] == "health_flags":
            out[parts[1]] = parts[3]
    return out


def test_removed_endpoint_gets_no_new_request(  # type: ignore[no-untyped-def]
    cli, controller, envoy_factory, servers, gateway_port
):
    a, b = servers["a"], servers["b"]
    a_addr, b_addr = f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"
    cli.add_gateway("public", gateway_port)
    cli.run(
        "cluster", "add", "users", "--endpoint", a_addr, "--endpoint", b_addr,
        "--health-check-path", PROBE, "--health-check-interval", "200ms",
    )  # fmt: skip
    cli.add_route("users", "public", "/users", "users")
    envoy = envoy_factory("public")
    cli.run("cluster", "update", "users", "--connect-timeout", "2s", "--wait")
    # both endpoints healthy and serving
    wait_until(lambda: _hosts(envoy.admin_port, "users") == {a_addr: "healthy", b_addr: "healthy"})
    wait_until(lambda: set(_backends_of(gateway_port, "/users", 10)) == {"a", "b"}, 30)

    # B still passes its health checks: removing it must take it out anyway
    cli.run("cluster", "update", "users", "--endpoint", a_addr, "--wait")
    served_by_b = _served(b, "/users")
    assert b_addr not in _hosts(envoy.admin_port, "users")
    assert _backends_of(gateway_port, "/users", 60) == Counter({"a": 60})
    assert _served(b, "/users") == served_by_b
    assert _probes(a) > 0  # the cluster is still health-checked


def test_recovered_endpoint_is_back_after_healthy_threshold_probes(  # type: ignore[no-untyped-def]
    cli, controller, envoy_factory, servers, gateway_port
):
    a, b = servers["a"], servers["b"]
    b.status = 503
    a_addr, b_addr = f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"
    cli.add_gateway("public", gateway_port)
    cli.run(
        "cluster", "add", "users", "--endpoint", a_addr, "--endpoint", b_addr,
        "--health-check-path", PROBE, "--health-check-interval", "200ms",
    )  # fmt: skip
    cli.add_route("users", "public", "/users", "users")
    envoy = envoy_factory("public")
    cli.run("cluster", "update", "users", "--connect-timeout", "2s", "--wait")
    wait_until(lambda: _hosts(envoy.admin_port, "users").get(b_addr, "").find("failed") >= 0)
    assert _backends_of(gateway_port, "/users", 20) == Counter({"a": 20})

    # B recovers under steady traffic: the first request routed to it follows at most
    # healthy_threshold (default 2) passing probes, +1 answered around the switch. Counted in
    # B's own arrival order, so a slow machine changes the time, not the count.
    with KeepAliveLoad(gateway_port, ["/users", "/users"]) as load:
        load.more(20, 30)
        start = len(b.requests)
        b.status = None
        wait_until(lambda: _served_since(b, start) > 0, 60, 0.05)
    after = b.requests[start:]
    first = next(i for i, r in enumerate(after) if r["path"].startswith("/users"))
    probes = [r["path"] for r in after[:first]]
    assert set(probes) == {PROBE} and len(probes) <= 2 + 1, probes


def test_endpoint_of_idle_cluster_is_probed_every_interval(  # type: ignore[no-untyped-def]
    cli, controller, envoy_factory, servers, gateway_port
):
    """A cluster that never carried traffic is probed at its interval (Envoy's default for
    such clusters is once a minute), so its endpoint's recovery is seen as documented."""
    b = servers["b"]
    b.status = 503
    b_addr = f"127.0.0.1:{b.port}"
    cli.add_gateway("public", gateway_port)
    cli.run(
        "cluster", "add", "idle", "--endpoint", b_addr,
        "--health-check-path", PROBE, "--health-check-interval", "200ms",
    )  # fmt: skip
    cli.add_route("idle", "public", "/idle", "idle")
    envoy = envoy_factory("public")
    cli.run("cluster", "update", "idle", "--connect-timeout", "2s", "--wait")
    wait_until(lambda: "failed" in _hosts(envoy.admin_port, "idle").get(b_addr, ""), 30)
    b.status = None  # recovers before any request was routed to the cluster
    # 150 intervals of slack: without no_traffic_interval the next probe comes after 60 s
    wait_until(lambda: _hosts(envoy.admin_port, "idle").get(b_addr) == "healthy", 30, 0.05)
    assert _served(b, "/idle") == 0  # it was the probes, not traffic, that found it healthy

"""IP allow/deny and the client-address model, through the real CLI, controller and Envoy.

Each trust setting is checked with and without X-Forwarded-For, including a forged XFF from
a client the gateway does not trust (it must not get past an allow list, nor out of a deny
list), over IPv4 and IPv6; the address the rules see is the one rate limits by client_ip
and the access log record.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from controlplane.demo.echo import EchoServer
from controlplane.envoy_launcher import free_port

from .harness import Cli, Envoy, wait_until

pytestmark = pytest.mark.e2e

DOC = "203.0.113.0/24"  # documentation range: "the office"


def _get(
    port: int,
    path: str,
    xff: str | None = None,
    *,
    host: str = "127.0.0.1",
    source: str | None = None,
) -> tuple[int, Any]:
    """One GET from ``source`` (a local address to bind, e.g. 127.0.0.2)."""
    conn = http.client.HTTPConnection(
        host, port, timeout=10, source_address=(source, 0) if source else None
    )
    try:
        conn.request("GET", path, headers={"x-forwarded-for": xff} if xff else {})
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(data)
    except ValueError:
        return resp.status, data.decode(errors="replace")


def _routes(gateway: str, cluster: str) -> list[dict[str, Any]]:
    return [
        {
            "name": f"{gateway}-office",
            "gateway": gateway,
            "match": {"path_prefix": "/office"},
            "cluster": cluster,
            "ip_rules": {"allow": [DOC, "2001:db8:1::/48"]},
        },
        {
            "name": f"{gateway}-public",
            "gateway": gateway,
            "match": {"path_prefix": "/public"},
            "cluster": cluster,
            "ip_rules": {"deny": [DOC, "2001:db8:bad::/48"]},
        },
        {
            "name": f"{gateway}-limited",
            "gateway": gateway,
            "match": {"path_prefix": "/limited"},
            "cluster": cluster,
            "rate_limit": {"key": "client_ip", "limits": [{"requests": 2, "per": "minute"}]},
        },
    ]


@pytest.fixture
def edge(
    cli: Cli, controller: Any, envoy_factory: Callable[..., Envoy], tmp_path: Path
) -> dict[str, Any]:
    backend = EchoServer("alpha").start()
    ports = {name: free_port() for name in ("direct", "hops", "cidrs", "v6")}
    policy = {
        "gateways": [
            {"name": "direct", "port": ports["direct"], "address": "127.0.0.1"},
            {
                "name": "hops",
                "port": ports["hops"],
                "address": "127.0.0.1",
                "client_address": {"trusted_hops": 1},
                "access_log": {"format": "json"},
            },
            {
                "name": "cidrs",
                "port": ports["cidrs"],
                "address": "127.0.0.1",
                "client_address": {"trusted_cidrs": ["127.0.0.2/32"]},
                "ip_rules": {"deny": ["198.51.100.0/24"]},
            },
            {
                "name": "v6",
                "port": ports["v6"],
                "address": "::1",
                "client_address": {"trusted_cidrs": ["::1/128"]},
            },
        ],
        "clusters": [{"name": "app", "endpoints": [f"127.0.0.1:{backend.port}"]}],
        "routes": [r for gw in ports for r in _routes(gw, "app")],
    }
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump(policy))
    envoys = {gw: envoy_factory(gw) for gw in ports}
    # Envoy checks the write first (translated as a write is), as without the tests' "never"
    cli.run("--validate", "always", "apply", "-f", str(path), "--wait=60s")
    for gw, port in ports.items():
        host = "::1" if gw == "v6" else "127.0.0.1"
        wait_until(lambda p=port, h=host: _get(p, "/public/x", host=h)[0] == 200, timeout=30)
    yield {"ports": ports, "envoys": envoys, "backend": backend}
    backend.stop()


def test_default_trusts_only_the_peer(edge: dict[str, Any]) -> None:
    """No trusted proxies: X-Forwarded-For is never believed, whatever it says."""
    port = edge["ports"]["direct"]
    assert _get(port, "/office/a")[0] == 403  # the peer, 127.0.0.1, is not the office
    status, body = _get(port, "/office/a", xff="203.0.113.7")  # forged: still the peer
    assert status == 403
    assert body["message"].startswith("client address not allowed")
    assert body["requirement"] == "rbac_access_denied_matched_policy[ip:not-allowed]"
    # a denied client cannot hide behind a made-up proxy chain either way round
    assert _get(port, "/public/a", xff="203.0.113.7")[0] == 200  # it is 127.0.0.1, not denied
    status, body = _get(port, "/public/a")
    assert status == 200
    # the backend sees Envoy's own entry appended after the forged one (for a loopback
    # peer Envoy appends its host address), so the forged entry is not the last
    status, body = _get(port, "/public/a", xff="203.0.113.7")
    entries = body["headers"]["x-forwarded-for"].split(",")
    assert entries[0] == "203.0.113.7" and len(entries) == 2


def test_trusted_hops(edge: dict[str, Any]) -> None:
    """One trusted proxy in front: the address it appended is the client's; what the client
    wrote before it is not."""
    port, backend = edge["ports"]["hops"], edge["backend"]
    assert _get(port, "/office/a", xff="203.0.113.7")[0] == 200
    assert _get(port, "/office/a")[0] == 403  # no XFF: the peer
    # a client writing "203.0.113.7" itself, the proxy appending its real address
    before = backend.hits
    assert _get(port, "/office/a", xff="203.0.113.7, 192.0.2.44")[0] == 403
    assert backend.hits == before  # refused at the edge
    assert _get(port, "/public/a", xff="192.0.2.1, 203.0.113.9")[0] == 403
    assert _get(port, "/public/a", xff="203.0.113.9, 192.0.2.1")[0] == 200


def test_trusted_cidrs(edge: dict[str, Any]) -> None:
    """XFF read only from a trusted peer (127.0.0.2); from 127.0.0.1 it is a forgery."""
    port = edge["ports"]["cidrs"]
    trusted = "127.0.0.2"
    assert _get(port, "/office/a", xff="203.0.113.7", source=trusted)[0] == 200
    # trusted proxies in the chain are skipped from the right
    assert _get(port, "/office/a", xff="203.0.113.7, 127.0.0.2", source=trusted)[0] == 200
    # an untrusted client forging XFF stays itself: not the office
    assert _get(port, "/office/a", xff="203.0.113.7")[0] == 403
    # ... and cannot escape a deny list by it
    assert _get(port, "/public/a", xff="203.0.113.7", source=trusted)[0] == 403
    assert _get(port, "/public/a", xff="203.0.113.7")[0] == 200
    # the gateway's own rules apply to every route, a route's in addition
    status, body = _get(port, "/public/a", xff="198.51.100.3", source=trusted)
    assert status == 403
    assert body["requirement"] == "rbac_access_denied_matched_policy[ip:denied]"
    assert _get(port, "/office/a", xff="198.51.100.3", source=trusted)[0] == 403


def test_ipv6(edge: dict[str, Any]) -> None:
    port = edge["ports"]["v6"]
    v6 = {"host": "::1"}
    assert _get(port, "/office/a", xff="2001:db8:1::5", **v6)[0] == 200
    assert _get(port, "/office/a", xff="2001:db8:2::5", **v6)[0] == 403
    assert _get(port, "/public/a", xff="2001:db8:bad::1", **v6)[0] == 403
    assert _get(port, "/public/a", xff="2001:db8:bad::1, ::1", **v6)[0] == 403
    assert _get(port, "/public/a", xff="2001:db8:600d::1", **v6)[0] == 200
    assert _get(port, "/office/a", **v6)[0] == 403  # ::1 itself is not the office
    # an IPv4 client of an IPv6 range list is simply outside it
    assert _get(port, "/office/a", xff="203.0.113.7", **v6)[0] == 200


def test_rate_limit_and_access_log_use_the_same_address(edge: dict[str, Any]) -> None:
    """Behind one trusted proxy, two clients sharing the proxy get a bucket each, and the
    access log names the client, not the proxy."""
    port, envoy = edge["ports"]["hops"], edge["envoys"]["hops"]
    a, b = "203.0.113.21", "203.0.113.22"
    assert [_get(port, "/limited/x", xff=a)[0] for _ in range(3)] == [200, 200, 429]
    assert _get(port, "/limited/x", xff=b)[0] == 200
    # a forged entry in front does not give a fresh bucket: the client is still a
    assert _get(port, "/limited/x", xff=f"198.51.100.1, {a}")[0] == 429

    def logged() -> list[str]:
        lines = Path(envoy.log_path).read_text(errors="replace").splitlines()
        entries = [json.loads(x) for x in lines if x.startswith("{")]
        return [e["client_ip"] for e in entries if e.get("path", "").startswith("/limited")]

    wait_until(lambda: len(logged()) >= 5, timeout=20)
    assert logged()[:5] == [a, a, a, b, a]


def test_bad_input_is_refused(cli: Cli, tmp_path: Path) -> None:
    """Invalid or overlapping CIDRs, a negative hop count: one line naming the field,
    exit 2, nothing written."""
    cli.run("gateway", "add", "gw", "--port", str(free_port()), "--address", "127.0.0.1")
    before = cli.run("export").stdout
    cases = {
        "client_address.trusted_hops": {"client_address": {"trusted_hops": -1}},
        "ip_rules.allow": {"ip_rules": {"allow": ["10.0.0.0/8", "10.1.0.0/16"]}},
        "ip_rules.deny": {"ip_rules": {"deny": ["10.0.0.300/32"]}},
        "client_address.trusted_cidrs": {"client_address": {"trusted_cidrs": ["10.0.0.1/8"]}},
    }
    for field, extra in cases.items():
        doc = {"gateways": [{"name": "gw", "port": 8080, **extra}]}
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(doc))
        proc = cli.run("apply", "-f", str(path), check=False)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and field in lines[0], proc.stderr
    assert cli.run("export").stdout == before


def test_clients_cannot_steer_envoy_with_x_envoy_headers(edge: dict[str, Any]) -> None:
    """Under every trust setting, a client's x-envoy-* request headers (timeouts, retries)
    are removed, also when it claims an internal address in X-Forwarded-For."""
    steering = {
        "x-envoy-upstream-rq-timeout-ms": "1",
        "x-envoy-max-retries": "5",
        "x-envoy-retry-on": "5xx",
        "x-echo-delay-ms": "200",
    }
    for gateway, source in (("direct", None), ("hops", None), ("cidrs", "127.0.0.2")):
        port = edge["ports"][gateway]
        for xff in (None, "10.0.0.1", "203.0.113.7, 10.0.0.1"):
            conn = http.client.HTTPConnection(
                "127.0.0.1", port, timeout=10, source_address=(source, 0) if source else None
            )
            try:
                conn.request(
                    "GET",
                    "/public/steer",
                    headers={**steering, **({"x-forwarded-for": xff} if xff else {})},
                )
                resp = conn.getresponse()
                body = json.loads(resp.read())
            finally:
                conn.close()
            assert resp.status == 200, (gateway, xff)
            seen = {k for k in body["headers"] if k.startswith("x-envoy-")}
            assert not seen & set(steering), (gateway, xff, seen)

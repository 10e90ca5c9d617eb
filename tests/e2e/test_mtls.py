"""Client certificates (mutual TLS) on HTTPS gateways, through the real CLI, controller and
Envoy, with certificates made by the test and Python's ssl client."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from controlplane.envoy_launcher import free_port, stats

from .harness import Cli, Envoy, wait_until
from .tlsutil import Issued, TestCA

pytestmark = pytest.mark.e2e

HOST = "gw.test"


def _call(
    port: int,
    path: str,
    server_ca: str,
    client: Issued | None,
    tmp_path: Path,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    ctx = ssl.create_default_context(cadata=server_ca)
    if client is not None:
        cert, key = client.write(tmp_path, f"client-{client.serial}")
        ctx.load_cert_chain(cert, key)
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    tls = ctx.wrap_socket(sock, server_hostname=HOST)
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    conn.sock = tls
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(data)
    except ValueError:
        return resp.status, data.decode(errors="replace")


def _refused(*args: Any) -> bool:
    """The handshake (or the first read after it, TLS 1.3) fails."""
    try:
        _call(*args)
    except (ssl.SSLError, ConnectionError, http.client.HTTPException):
        return True
    return False


@pytest.fixture
def mtls(
    cli: Cli,
    controller: Any,
    envoy_factory: Callable[..., Envoy],
    backends: Any,
    tmp_path: Path,
) -> dict[str, Any]:
    server_ca, client_ca, rogue_ca = TestCA("servers"), TestCA("clients"), TestCA("rogue")
    served = server_ca.issue(HOST, [HOST])
    ports = {"req": free_port(), "opt": free_port()}
    gateways = [
        {
            "name": name,
            "port": port,
            "address": "127.0.0.1",
            "tls": {
                "certificates": ["srv"],
                "client_auth": {
                    "mode": "required" if name == "req" else "optional",
                    "ca": client_ca.pem,
                },
            },
        }
        for name, port in ports.items()
    ]
    policy = {
        "certificates": [{"name": "srv", "cert": served.cert, "key": served.key}],
        "plans": [{"name": "tiny", "limits": [{"requests": 2, "per": "minute"}]}],
        "consumers": [{"name": "acme", "plan": "tiny", "certificates": ["partner-a.example"]}],
        "gateways": gateways,
        "clusters": [{"name": "app", "endpoints": [f"127.0.0.1:{backends['alpha'].port}"]}],
        "routes": [
            r
            for gw in ports
            for r in (
                {
                    "name": f"{gw}-open",
                    "gateway": gw,
                    "match": {"path_prefix": "/open"},
                    "cluster": "app",
                },
                {
                    "name": f"{gw}-metered",
                    "gateway": gw,
                    "match": {"path_prefix": "/metered"},
                    "cluster": "app",
                    "client_cert": {},
                    "rate_limit": {"key": "consumer"},
                },
                {
                    "name": f"{gw}-partners",
                    "gateway": gw,
                    "match": {"path_prefix": "/partners"},
                    "cluster": "app",
                    "client_cert": {"names": ["partner-a.example"]},
                },
            )
        ],
    }
    path = tmp_path / "mtls.yaml"
    path.write_text(yaml.safe_dump(policy))
    envoys = {gw: envoy_factory(gw) for gw in ports}
    # Envoy checks the write first (translated as a write is), as without the tests' "never"
    cli.run("--validate", "always", "apply", "-f", str(path), "--wait=60s")
    clients = {
        "a": client_ca.issue("partner a", ["partner-a.example"], client=True),
        "b": client_ca.issue("partner b", ["partner-b.example"], client=True),
        "rogue": rogue_ca.issue("rogue client", ["partner-a.example"], client=True),
    }
    ctx = {
        "ports": ports,
        "server_ca": server_ca.pem,
        "clients": clients,
        "rogue_ca": rogue_ca,
        "policy": policy,
        "path": path,
        "envoys": envoys,
    }
    wait_until(
        lambda: _call(ports["opt"], "/open", server_ca.pem, None, tmp_path)[0] == 200, timeout=30
    )
    return ctx


def test_required(mtls: dict[str, Any], tmp_path: Path) -> None:
    port, ca, clients = mtls["ports"]["req"], mtls["server_ca"], mtls["clients"]
    assert _refused(port, "/open", ca, None, tmp_path)  # no certificate
    assert _refused(port, "/open", ca, clients["rogue"], tmp_path)  # another CA's
    status, body = _call(
        port,
        "/open",
        ca,
        clients["a"],
        tmp_path,
        {"x-forwarded-client-cert": 'By=spiffe://evil;Subject="CN=admin";DNS=admin.example'},
    )
    assert status == 200
    xfcc = body["headers"]["x-forwarded-client-cert"]
    assert "DNS=partner-a.example" in xfcc and 'Subject="CN=partner a"' in xfcc
    assert "evil" not in xfcc and "admin" not in xfcc  # the client's copy is replaced
    assert _call(port, "/partners", ca, clients["a"], tmp_path)[0] == 200
    status, body = _call(port, "/partners", ca, clients["b"], tmp_path)
    assert status == 403
    assert body["requirement"] == "rbac_access_denied_matched_policy[client-cert:not-allowed]"


def test_optional(mtls: dict[str, Any], tmp_path: Path) -> None:
    port, ca, clients = mtls["ports"]["opt"], mtls["server_ca"], mtls["clients"]
    status, body = _call(
        port, "/open", ca, None, tmp_path, {"x-forwarded-client-cert": 'Subject="CN=admin"'}
    )
    assert status == 200
    assert "x-forwarded-client-cert" not in body["headers"]  # no certificate: no identity
    status, body = _call(port, "/partners", ca, None, tmp_path)
    assert status == 403 and body["message"].startswith("client certificate required")
    assert _call(port, "/partners", ca, clients["a"], tmp_path)[0] == 200
    assert _call(port, "/partners", ca, clients["b"], tmp_path)[0] == 403
    assert _refused(port, "/open", ca, clients["rogue"], tmp_path)  # a bad one is refused


def test_ca_rotation_keeps_the_listener(mtls: dict[str, Any], cli: Cli, tmp_path: Path) -> None:
    """A new CA bundle is one SDS update: the listener is not replaced."""
    port, ca, clients, envoy = (
        mtls["ports"]["req"],
        mtls["server_ca"],
        mtls["clients"],
        mtls["envoys"]["req"],
    )
    lds = stats(envoy.admin_port, r"^listener_manager\.lds\.update_success$")
    policy = mtls["policy"]
    policy["gateways"][0]["tls"]["client_auth"]["ca"] = mtls["rogue_ca"].pem
    mtls["path"].write_text(yaml.safe_dump(policy))
    cli.run("apply", "-f", str(mtls["path"]), "--wait=60s")
    wait_until(lambda: _refused(port, "/open", ca, clients["a"], tmp_path), timeout=20)
    assert _call(port, "/open", ca, clients["rogue"], tmp_path)[0] == 200
    assert stats(envoy.admin_port, r"^listener_manager\.lds\.update_success$") == lds


def test_bad_ca_is_refused(cli: Cli, tmp_path: Path) -> None:
    ca = TestCA("servers")
    served = ca.issue(HOST, [HOST])
    leaf_only = ca.issue("not a ca", ["x.example"], client=True)
    before = cli.run("export").stdout
    for bundle, why in (
        ("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n", "not a PEM"),
        (leaf_only.cert, "is not a CA certificate"),
    ):
        doc = {
            "certificates": [{"name": "srv", "cert": served.cert, "key": served.key}],
            "gateways": [
                {
                    "name": "gw",
                    "port": 8443,
                    "tls": {"certificates": ["srv"], "client_auth": {"ca": bundle}},
                }
            ],
        }
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(doc))
        proc = cli.run("apply", "-f", str(path), check=False)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "tls.client_auth.ca" in lines[0] and why in lines[0], lines
    assert cli.run("export").stdout == before


def test_consumer_by_certificate(mtls: dict[str, Any], tmp_path: Path) -> None:
    """A consumer named by its certificate is identified without a key or token, and its
    plan limits it; a certificate of no consumer is not."""
    port, ca, clients = mtls["ports"]["req"], mtls["server_ca"], mtls["clients"]
    status, body = _call(port, "/metered", ca, clients["a"], tmp_path, {"x-consumer-id": "other"})
    assert status == 200 and body["headers"]["x-consumer-id"] == "acme"
    assert _call(port, "/metered", ca, clients["a"], tmp_path)[0] == 200
    assert _call(port, "/metered", ca, clients["a"], tmp_path)[0] == 429  # plan: 2/minute
    for _ in range(3):
        status, body = _call(port, "/metered", ca, clients["b"], tmp_path)
        assert status == 200 and "x-consumer-id" not in body["headers"]

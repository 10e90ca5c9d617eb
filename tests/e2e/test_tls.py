"""HTTPS gateways through the real CLI, controller and Envoy: SNI, rotation, redirect, refusals.

Certificates are made by a throwaway CA in each test and reach Envoy over SDS on the ADS
stream; the client trusts only that CA and checks the host name it asked for.
"""

from __future__ import annotations

import datetime as dt
import http.client
from pathlib import Path

import pytest
import yaml

from controlplane.envoy_launcher import free_port, stats
from controlplane.policy import Bundle
from controlplane.store import Store

from .harness import Cli, wait_until
from .tlsutil import TestCA, https_request, tls_connect

pytestmark = pytest.mark.e2e

API = "api.example.test"
SHOP = "shop.example.test"


def _counter(envoy, name: str) -> int:  # type: ignore[no-untyped-def]
    return stats(envoy.admin_port, name.replace(".", r"\.") + "$").get(name, 0)


def _setup(cli: Cli, backends, port: int, *certs: str) -> None:  # type: ignore[no-untyped-def]
    tls = [a for name in certs for a in ("--tls-cert", name)]
    cli.run("gateway", "add", "public", "--port", str(port), "--address", "127.0.0.1", *tls)
    cli.run("cluster", "add", "alpha", "--endpoint", f"127.0.0.1:{backends['alpha'].port}")


def test_https_by_sni_with_a_default_certificate(
    cli, controller, envoy_factory, backends, gateway_port, tmp_path
):
    ca = TestCA()
    cli.run("cert", "add", "api", *_files(ca.issue(API, [API]), tmp_path, "api"))
    cli.run("cert", "add", "shop", *_files(ca.issue(SHOP, [SHOP, f"*.{SHOP}"]), tmp_path, "shop"))
    _setup(cli, backends, gateway_port, "api")
    envoy = envoy_factory("public")
    cli.run("route", "add", "all", "--gateway", "public", "--cluster", "alpha", "--wait")

    resp = https_request(gateway_port, API, "/hello", ca.pem)
    assert (resp.status, resp.peer_cn) == (200, API)
    assert resp.body["headers"]["x-forwarded-proto"] == "https"

    # A second certificate: the listener gains a filter chain and a new SDS name.
    cli.run("gateway", "update", "public", "--tls-cert", "api", "--tls-cert", "shop", "--wait")
    assert https_request(gateway_port, SHOP, "/", ca.pem).peer_cn == SHOP
    assert https_request(gateway_port, f"x.{SHOP}", "/", ca.pem).peer_cn == SHOP  # wildcard
    assert https_request(gateway_port, API, "/", ca.pem).peer_cn == API
    # No SNI, or a name no certificate has: the first certificate is the default.
    no_sni = https_request(gateway_port, None, "/", ca.pem, verify_name=False)
    assert (no_sni.status, no_sni.peer_cn) == (200, API)
    other = https_request(gateway_port, "other.example.test", "/", ca.pem, verify_name=False)
    assert other.peer_cn == API

    # Reordering changes the listener (default chain) but no SDS name: Envoy re-uses the
    # secrets it has, so the update applies at once (no 15 s SDS warming): once the LDS
    # update is ACKed no listener is warming, and no SDS fetch ever ran into its timeout.
    lds = _counter(envoy, "listener_manager.lds.update_success")
    cli.run("gateway", "update", "public", "--tls-cert", "shop", "--tls-cert", "api", "--wait")
    assert _counter(envoy, "listener_manager.lds.update_success") > lds
    assert _counter(envoy, "listener_manager.total_listeners_warming") == 0
    timeouts = stats(envoy.admin_port, r"init_fetch_timeout$")
    assert timeouts and not any(timeouts.values()), timeouts
    no_sni = https_request(gateway_port, None, "/", ca.pem, verify_name=False)
    assert (no_sni.status, no_sni.peer_cn) == (200, SHOP)
    assert https_request(gateway_port, API, "/", ca.pem).peer_cn == API

    # Plain HTTP to the HTTPS port is not served.
    conn = http.client.HTTPConnection("127.0.0.1", gateway_port, timeout=5)
    with pytest.raises((OSError, http.client.HTTPException)):
        conn.request("GET", "/")
        conn.getresponse().read()
    conn.close()

    [proxy] = cli.json("status")["proxies"]
    assert proxy["in_sync"] and proxy["last_nack"] is None
    assert envoy.proc.poll() is None


def test_certificate_rotation_without_restart(
    cli, controller, envoy_factory, backends, gateway_port, tmp_path
):
    ca = TestCA()
    first = ca.issue(API, [API])
    cli.run("cert", "add", "api", *_files(first, tmp_path, "first"))
    _setup(cli, backends, gateway_port, "api")
    envoy = envoy_factory("public")
    cli.run("route", "add", "all", "--gateway", "public", "--cluster", "alpha", "--wait")
    pid = envoy.pid
    assert https_request(gateway_port, API, "/", ca.pem).peer.serial_number == first.serial
    kept = tls_connect(gateway_port, API, ca.pem)  # a connection open across the rotation
    assert https_request(gateway_port, API, "/", ca.pem, tls=kept).status == 200
    listeners_before = stats(envoy.admin_port, r"^listener_manager\.(listener_modified|lds\.)")

    second = ca.issue(API, [API])
    proc = cli.run("cert", "update", "api", *_files(second, tmp_path, "second"), "--wait")
    assert "live on every connected proxy" in proc.stderr

    # --wait returned: the very next handshake gets the new certificate.
    assert https_request(gateway_port, API, "/", ca.pem).peer.serial_number == second.serial
    # The open connection keeps working on the certificate it was set up with.
    old = https_request(gateway_port, API, "/", ca.pem, tls=kept)
    assert old.status == 200 and old.peer.serial_number == first.serial
    kept.close()

    assert envoy.pid == pid and envoy.proc.poll() is None
    assert envoy.info()["command_line_options"]["restart_epoch"] == 0
    # Only the secret changed: no listener was modified or re-sent.
    assert stats(envoy.admin_port, r"^listener_manager\.(listener_modified|lds\.)") == (
        listeners_before
    )
    assert stats(envoy.admin_port, r"^sds\.api\.update_success$")["sds.api.update_success"] >= 2


def test_http_redirect_port_sends_clients_to_https(
    cli, controller, envoy_factory, backends, gateway_port, tmp_path
):
    ca = TestCA()
    cli.run("cert", "add", "api", *_files(ca.issue(API, [API]), tmp_path, "api"))
    _setup(cli, backends, gateway_port, "api")
    redirect_port = free_port()
    cli.run("gateway", "update", "public", "--http-redirect-port", str(redirect_port))
    envoy_factory("public")
    cli.run("route", "add", "all", "--gateway", "public", "--cluster", "alpha", "--wait")

    conn = http.client.HTTPConnection("127.0.0.1", redirect_port, timeout=5)
    try:
        conn.request(
            "POST", "/orders/7?x=1", body=b"{}", headers={"Host": f"{API}:{redirect_port}"}
        )
        resp = conn.getresponse()
        resp.read()
    finally:
        conn.close()
    assert resp.status == 308  # permanent, and the method and body are kept
    assert resp.getheader("location") == f"https://{API}:{gateway_port}/orders/7?x=1"
    # and the target answers
    assert https_request(gateway_port, API, "/orders/7?x=1", ca.pem).status == 200


def _state(cli: Cli) -> tuple[int, str]:
    store = Store(cli.db)
    try:
        return store.revision(), store.bundle().to_yaml()
    finally:
        store.close()


def _files(issued, folder: Path, stem: str) -> list[str]:  # type: ignore[no-untyped-def]
    cert, key = issued.write(folder, stem)
    return ["--cert", cert, "--key", key]


def test_bad_certificates_and_references_change_nothing(cli: Cli, tmp_path: Path) -> None:
    ca = TestCA()
    good = ca.issue(API, [API])
    cli.run("cert", "add", "api", *_files(good, tmp_path, "good"))
    cli.run("gateway", "add", "public", "--port", "8443", "--tls-cert", "api")
    now = dt.datetime.now(dt.UTC)
    expired = ca.issue(
        API, [API], not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1)
    )
    other = ca.issue(SHOP, [SHOP])
    mismatched = tmp_path / "mismatched.key"
    mismatched.write_text(other.key)
    good_cert, _ = good.write(tmp_path, "good")
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")

    cases = [
        (["cert", "add", "old", *_files(expired, tmp_path, "expired")], 2, "cert: expired on"),
        (
            ["cert", "add", "x", "--cert", good_cert, "--key", str(mismatched)],
            2,
            "certificate 'x': key: does not match the certificate",
        ),
        (
            ["cert", "update", "api", "--key", str(mismatched)],
            2,
            "certificate 'api': key: does not match the certificate",
        ),
        (
            ["cert", "update", "api", *_files(expired, tmp_path, "expired")],
            2,
            "certificate 'api': cert: expired on",
        ),
        (
            ["cert", "add", "x", "--cert", str(not_pem), "--key", str(mismatched)],
            2,
            "certificate 'x': cert: not a PEM certificate chain",
        ),
        (
            ["cert", "add", "x", "--cert", str(tmp_path / "missing.pem"), "--key", good_cert],
            2,
            "--cert: cannot read",
        ),
        (
            ["gateway", "add", "g2", "--port", "9443", "--tls-cert", "nope"],
            2,
            "gateway 'g2': certificate 'nope' does not exist",
        ),
        (
            ["gateway", "update", "public", "--tls-cert", "api", "--tls-cert", "nope"],
            2,
            "gateway 'public': certificate 'nope' does not exist",
        ),
        (
            ["gateway", "update", "public", "--http-redirect-port", "8443"],
            2,
            "tls.http_redirect_port: must differ from the gateway's port",
        ),
        (["cert", "delete", "api"], 4, "cannot delete certificate 'api': gateway 'public' uses it"),
    ]
    for args, code, expected in cases:
        before = _state(cli)
        proc = cli.run(*args, check=False)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == code, (args, proc.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, proc.stderr)
        assert expected in lines[0], (args, lines[0])
        assert _state(cli) == before, args

    # never the key: not in list, not in get (unless asked), not in diffs
    for args in (["cert", "list"], ["-o", "json", "cert", "list"], ["cert", "get", "api"]):
        assert "PRIVATE KEY" not in cli.run(*args).stdout
    assert "PRIVATE KEY" in cli.run("cert", "get", "api", "--show-key").stdout
    exported = cli.run("export").stdout
    assert "PRIVATE KEY" in exported  # export is the backup: apply -f takes it back whole
    data = Bundle.from_text(exported).to_data()
    rotated = ca.issue(API, [API])
    data["certificates"][0].update(cert=rotated.cert, key=rotated.key)
    path = tmp_path / "rotated.yaml"
    path.write_text(yaml.safe_dump(data))
    diff = cli.run("diff", "-f", str(path), check=False)
    assert diff.returncode == 1 and "key: (secret, changed)" in diff.stdout
    assert "PRIVATE KEY" not in diff.stdout
    assert "PRIVATE KEY" not in cli.run("-o", "json", "diff", "-f", str(path), check=False).stdout


def test_gateway_waits_for_https_until_envoy_has_the_certificate(
    cli, controller, envoy_factory, backends, gateway_port, tmp_path
):
    """Turning TLS on for a running plain-HTTP gateway: --wait covers the certificate too."""
    ca = TestCA()
    _setup(cli, backends, gateway_port)
    envoy_factory("public")
    cli.run("route", "add", "all", "--gateway", "public", "--cluster", "alpha", "--wait")
    cli.run("cert", "add", "api", *_files(ca.issue(API, [API]), tmp_path, "api"))
    cli.run("gateway", "update", "public", "--tls-cert", "api", "--wait")
    assert https_request(gateway_port, API, "/", ca.pem).status == 200
    wait_until(lambda: cli.json("status")["proxies"][0]["in_sync"], timeout=5)

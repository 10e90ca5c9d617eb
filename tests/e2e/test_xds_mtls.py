"""The secured control channel: only Envoys with a client certificate from the CA get config.

The controller runs ``gatewayctl serve --xds-tls-cert --xds-tls-key`` with the client CA
from ``GATEWAY_XDS_CLIENT_CA``; Envoys start from ``envoy/bootstrap-mtls.yaml`` through
``run-envoy.sh`` (XDS_TLS_CERT/KEY/CA), as docker-compose would run them.
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.envoy_launcher import bootstrap_dir, free_port, stats

from .harness import Cli, Controller, Envoy, backend_of, gatewayctl_command, wait_until
from .tlsutil import TestCA

pytestmark = pytest.mark.e2e


class Pki:
    """The control channel's CA, the controller's certificate, Envoy client certificates."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ca = TestCA("control plane CA")
        self.ca_path = self.ca.write(folder, "control-ca")
        self.server_cert, self.server_key = self.ca.issue(
            "controller", ["localhost"], ips=["127.0.0.1"]
        ).write(folder, "controller")

    def client(self, name: str, ca: TestCA | None = None) -> dict[str, str]:
        """EnvoySpec fields for a client certificate (from ``ca``, default: the right CA)."""
        cert, key = (ca or self.ca).issue(name, [name], client=True).write(self.folder, name)
        return {"xds_tls_cert": cert, "xds_tls_key": key, "xds_tls_ca": self.ca_path}


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


@pytest.fixture
def mtls_controller(
    cli: Cli, pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Controller]:
    monkeypatch.setenv("GATEWAY_XDS_CLIENT_CA", pki.ca_path)  # the env var form of the flag
    c = Controller(
        cli, tmp_path, ("--xds-tls-cert", pki.server_cert, "--xds-tls-key", pki.server_key)
    )
    c.start()
    yield c
    c.stop()


@pytest.fixture
def envoys() -> Iterator[list[Envoy]]:
    started: list[Envoy] = []
    yield started
    for envoy in started:
        envoy.stop()


def _listeners(admin_port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/listeners", timeout=2) as resp:
        return resp.read().decode()


def _connected(envoy: Envoy) -> int:
    return stats(envoy.admin_port, r"^control_plane\.connected_state$")[
        "control_plane.connected_state"
    ]


def test_only_envoys_with_a_client_certificate_from_the_ca_get_config(
    cli, mtls_controller, pki, envoys, backends, gateway_port, tmp_path, monkeypatch
):
    cli.run("gateway", "add", "public", "--port", str(gateway_port), "--address", "127.0.0.1")
    cli.run("cluster", "add", "alpha", "--endpoint", f"127.0.0.1:{backends['alpha'].port}")
    xds = mtls_controller.xds_port

    good = Envoy("public", "good", xds, tmp_path, **pki.client("good"))
    envoys.append(good)
    cli.run("route", "add", "all", "--gateway", "public", "--cluster", "alpha", "--wait")
    assert backend_of(gateway_port, "/") == "alpha"
    assert _connected(good) == 1

    # Refused: a plaintext Envoy, one with TLS but no client certificate, and one whose
    # certificate another CA signed. None may get the gateway's listener.
    other_port, none_port, plain_port = free_port(), free_port(), free_port()
    cli.run("gateway", "add", "other", "--port", str(other_port), "--address", "127.0.0.1")
    cli.run("gateway", "add", "none", "--port", str(none_port), "--address", "127.0.0.1")
    cli.run("gateway", "add", "plain", "--port", str(plain_port), "--address", "127.0.0.1")
    for gw in ("other", "none", "plain"):
        cli.run("route", "add", f"all-{gw}", "--gateway", gw, "--cluster", "alpha")
    intruder = Envoy(
        "other", "intruder", xds, tmp_path, wait=False, **pki.client("intruder", TestCA("other"))
    )
    envoys.append(intruder)
    plain = Envoy("plain", "plain", xds, tmp_path, wait=False)
    envoys.append(plain)
    template = tmp_path / "bootstrap-tls-no-client-cert.yaml"
    template.write_text(
        "".join(
            line
            for line in (bootstrap_dir() / "bootstrap-mtls.yaml").read_text().splitlines(True)
            if not any(k in line for k in ("tls_certificates:", "certificate_chain", "private_key"))
        )
    )
    monkeypatch.setenv("ENVOY_BOOTSTRAP", str(template))
    anonymous = Envoy("none", "anonymous", xds, tmp_path, wait=False, **pki.client("anonymous"))
    monkeypatch.delenv("ENVOY_BOOTSTRAP")
    envoys.append(anonymous)

    log_path = mtls_controller.log_dir / f"controller-{mtls_controller.starts}.log"
    reasons = (
        "the client sent no certificate",
        "the client certificate is not signed by the client CA",
        "the client does not speak TLS",
    )
    wait_until(
        lambda: all(
            f"refused an xDS client: TLS handshake failed: {r}" in log_path.read_text()
            for r in reasons
        ),
        timeout=15,
        interval=0.2,
    )
    time.sleep(2)  # several reconnect attempts (0.1-1 s backoff), all refused
    for envoy, gw in ((intruder, "other"), (anonymous, "none"), (plain, "plain")):
        assert envoy.proc.poll() is None, envoy.log_path.read_text()[-2000:]
        assert _connected(envoy) == 0
        assert gw not in _listeners(envoy.admin_port)
    for port in (other_port, none_port, plain_port):
        assert backend_of_or_refused(port) == "refused"
    # The controller never saw them as proxies; the good one is in sync.
    proxies = {p["node"]: p for p in cli.json("status")["proxies"]}
    assert set(proxies) == {"good"} and proxies["good"]["in_sync"]
    log = log_path.read_text()
    assert "authenticated as CN=good" in log
    assert "over mutual TLS" in log

    # The good Envoy still gets changes.
    cli.run("route", "update", "all", "--path-prefix", "/only", "--wait")
    assert backend_of(gateway_port, "/only/x") == "alpha"
    assert backend_of(gateway_port, "/") == 404


def backend_of_or_refused(port: int) -> str:
    try:
        return str(backend_of(port, "/"))
    except OSError:
        return "refused"


def test_serve_refuses_incomplete_or_mismatched_tls_files(cli: Cli, pki: Pki) -> None:
    _, other_key = pki.ca.issue("x", ["x"]).write(pki.folder, "x")
    ca = ["--xds-client-ca", pki.ca_path]
    cases = [
        (["--xds-tls-cert", pki.server_cert], "go together"),
        (
            ["--xds-tls-cert", pki.server_cert, "--xds-tls-key", other_key, *ca],
            f"--xds-tls-key: {other_key} does not match the certificate",
        ),
        (
            ["--xds-tls-cert", pki.server_cert, "--xds-tls-key", "/nonexistent.key", *ca],
            "--xds-tls-key: cannot read /nonexistent.key",
        ),
    ]
    env = {**os.environ, "GATEWAY_DB": cli.db}
    env.pop("GATEWAY_XDS_CLIENT_CA", None)
    for args, expected in cases:
        proc = subprocess.run(
            [
                *gatewayctl_command(),
                "serve",
                "--xds-address",
                f"127.0.0.1:{free_port()}",
                "--health-address",
                "",
                *args,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1, proc.stderr
        assert lines[0].startswith("error: ") and expected in lines[0], lines[0]

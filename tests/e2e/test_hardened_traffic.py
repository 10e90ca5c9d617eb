"""All the hardening at once, under traffic: valid clients notice none of it.

One gateway with every protection on - the control channel over mutual TLS with a
certificate that names the gateway and node, secrets encrypted at rest, strict edge
hygiene (underscore headers refused, normalised paths, preflights authenticated), API keys
with an expiry checked at the edge, JWTs that must carry ``exp``, analytics from the
authenticated Envoy only - serves 20 keep-alive clients (open, API-key and JWT routes)
while the operator changes routes, clusters, keys and CORS, rotates the secret key, takes
a backup and restores it, and the controller is killed and restarted. Every request of
every client must succeed; afterwards the protections are shown to be in force.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from controlplane.demo.echo import EchoServer

from .harness import Cli, Controller, Envoy, KeepAliveLoad, request, wait_until
from .test_auth import ISSUER, Signer
from .test_xds_mtls import Pki

pytestmark = pytest.mark.e2e

OPEN, KEYED, JWT = 7, 7, 6  # 20 clients


def test_valid_traffic_sees_no_change_from_the_hardening(
    cli: Cli, backends: dict[str, EchoServer], gateway_port: int, tmp_path: Path
) -> None:
    pki = Pki(tmp_path)
    controller = Controller(
        cli,
        tmp_path,
        (
            "--xds-tls-cert",
            pki.server_cert,
            "--xds-tls-key",
            pki.server_key,
            "--xds-client-ca",
            pki.ca_path,
        ),
    )
    controller.start()
    envoy: Envoy | None = None
    try:
        signer = Signer("k1")
        jwks = tmp_path / "jwks.json"
        jwks.write_text(json.dumps({"keys": [signer.jwk()]}))
        alpha, beta = (f"127.0.0.1:{backends[n].port}" for n in ("alpha", "beta"))
        cli.add_gateway("public", gateway_port, "--analytics")
        cli.run("cluster", "add", "alpha", "--endpoint", alpha)
        cli.run("cluster", "add", "beta", "--endpoint", beta)
        cli.run(
            "jwt-provider",
            "add",
            "corp",
            "--issuer",
            ISSUER,
            "--audience",
            "api",
            "--jwks-file",
            str(jwks),
        )
        cli.run("consumer", "add", "acme")
        cli.add_route("open", "public", "/open", "alpha", "--auth-public")
        cli.add_route("keyed", "public", "/keyed", "alpha", "--auth-api-key")
        cli.add_route("jwt", "public", "/jwt", "beta", "--auth-jwt", "corp")
        key = cli.run("consumer", "key", "add", "acme", "--expires", "30d").stdout.strip()

        envoy = Envoy("public", "edge-1", controller.xds_port, tmp_path, **pki.client("edge-1"))
        cli.run("route", "update", "open", "--timeout", "5s", "--wait")
        token = signer.token(exp=int(time.time()) + 7200)
        wait_until(lambda: request(gateway_port, "/keyed/0", headers={"x-api-key": key})[0] == 200)

        paths = (
            [f"/open/{i}" for i in range(OPEN)]
            + [f"/keyed/{i}" for i in range(KEYED)]
            + [f"/jwt/{i}" for i in range(JWT)]
        )
        credentials = {p: {"x-api-key": key} for p in paths if p.startswith("/keyed/")}
        credentials |= {
            p: {"authorization": f"Bearer {token}"} for p in paths if p.startswith("/jwt/")
        }
        backup = tmp_path / "backup.db"
        with KeepAliveLoad(gateway_port, paths, credentials) as load:
            load.more(200, timeout=60)
            cli.run("route", "update", "open", "--timeout", "3s", "--wait")
            load.more(100, timeout=60)
            cli.add_route("extra", "public", "/extra", "beta", "--auth-public", "--wait")
            load.more(100, timeout=60)
            cli.run("cluster", "update", "alpha", "--endpoint", alpha, "--endpoint", beta, "--wait")
            load.more(100, timeout=60)
            second = cli.run("consumer", "key", "add", "acme", "--wait").stdout.strip()
            load.more(100, timeout=60)
            cli.run("secrets", "rotate")
            load.more(100, timeout=60)
            cli.run(
                "gateway", "update", "public", "--cors-origin", "https://app.example.com", "--wait"
            )
            load.more(100, timeout=60)
            cli.run("backup", str(backup))
            cli.run("route", "delete", "extra", "--wait")
            cli.run("restore", str(backup), "--wait")  # brings "extra" back, a new revision
            load.more(100, timeout=60)
            controller.kill()  # Envoy serves on from what it has
            load.more(100, timeout=60)
            controller.start()
            cli.run("route", "update", "open", "--timeout", "4s", "--wait")
            load.more(200, timeout=60)

        assert set(load.outcomes) == {"2xx"}, (load.outcomes, load.by_path)
        assert all(c["2xx"] > 0 for c in load.by_path.values()), load.by_path
        assert load.outcomes["2xx"] >= 1400

        # the protections were on all along, not switched off by any of the changes
        assert request(gateway_port, "/extra/x")[0] == 200  # restored
        assert request(gateway_port, "/keyed/x")[0] == 401  # no key
        assert request(gateway_port, "/keyed/x", headers={"x-api-key": second})[0] == 200
        assert request(gateway_port, "/jwt/x", headers={"x-api-key": key})[0] == 401
        no_exp = signer.token(exp=None)
        assert (
            request(gateway_port, "/jwt/x", headers={"authorization": f"Bearer {no_exp}"})[0] == 401
        )
        forged = {"x-api-key": key, "x_consumer_id": "root"}
        assert request(gateway_port, "/keyed/x", headers=forged)[0] == 400
        # an encoded traversal never reaches the open route's backend as the keyed path
        status, _, body = request(gateway_port, "/open/..%2Fkeyed/x")
        assert status != 200 or body["path"] != "/keyed/x", (status, body)
        raw = (Path(cli.db)).read_bytes()
        assert key.encode() not in raw and second.encode() not in raw
    finally:
        if envoy is not None:
            envoy.stop()
        controller.stop()

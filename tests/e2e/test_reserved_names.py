"""A policy object cannot take the place of a generated resource, through a real Envoy.

The attack: a cluster named like a provider's JWKS fetch cluster (and a route using it, so
it is sent) replaced that cluster, Envoy fetched the provider's keys from the attacker's
server and accepted tokens the attacker signed. Generated names now live outside the names
users can give (policy/reserved.py): the same cluster is just a cluster.
"""

from __future__ import annotations

import json
import time

import pytest

from .harness import request
from .test_auth import ISSUER, Signer, _bearer, _JwksServer

pytestmark = pytest.mark.e2e


def test_cluster_named_like_the_jwks_fetch_cluster_cannot_serve_keys(  # type: ignore[no-untyped-def]
    cli, controller, envoy_factory, backends, gateway_port
):
    provider, attacker = Signer("real"), Signer("forged")
    real_keys, forged_keys = _JwksServer(), _JwksServer()
    real_keys.body = json.dumps({"keys": [provider.jwk()]}).encode()
    forged_keys.body = json.dumps({"keys": [attacker.jwk()]}).encode()
    try:
        cli.run("jwt-provider", "add", "partner", "--issuer", ISSUER, "--jwks-uri", real_keys.url,
                "--jwks-cache-duration", "1s")  # fmt: skip
        cli.run("gateway", "add", "public", "--port", str(gateway_port),
                "--address", "127.0.0.1")  # fmt: skip
        cli.run("cluster", "add", "alpha", "--endpoint", f"127.0.0.1:{backends['alpha'].port}")
        cli.run("route", "add", "api", "--gateway", "public", "--path-prefix", "/api",
                "--cluster", "alpha", "--auth-jwt", "partner")  # fmt: skip
        # what used to be the fetch cluster's name, pointing at the attacker's key server,
        # and a route that makes the controller send it
        forged_port = forged_keys.server.server_address[1]
        cli.run("cluster", "add", "jwks.partner", "--endpoint", f"127.0.0.1:{forged_port}")
        cli.run("route", "add", "decoy", "--gateway", "public", "--path-prefix", "/.well-known",
                "--cluster", "jwks.partner")  # fmt: skip
        envoy_factory("public")
        cli.run("route", "update", "api", "--timeout", "5s", "--wait")

        # keys are fetched again every second: over several fetches, only the provider's count
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            assert request(gateway_port, "/api/x", headers=_bearer(attacker.token()))[0] == 401
            assert request(gateway_port, "/api/x", headers=_bearer(provider.token()))[0] == 200
            time.sleep(0.5)
        # the user's cluster is an ordinary cluster: its own route reaches it
        status, _, body = request(gateway_port, "/.well-known/jwks.json")
        assert status == 200 and body["keys"][0]["kid"] == "forged"
    finally:
        real_keys.server.shutdown()
        forged_keys.server.shutdown()

"""Transformations through a real Envoy: header values from the consumer, a JWT claim and
the request; path, host and query rewrites; JSON bodies reshaped on the way in and out."""

from __future__ import annotations

import json
from urllib.parse import parse_qsl, urlsplit

import pytest

from .harness import request
from .test_auth import ISSUER, Signer

pytestmark = pytest.mark.e2e

POLICY = """
gateways:
  - {{name: public, port: {port}, address: 127.0.0.1}}
clusters:
  - {{name: alpha, endpoints: ["127.0.0.1:{backend}"]}}
jwt_providers:
  - {{name: corp, issuer: "{issuer}", audiences: [api], jwks: '{jwks}'}}
consumers:
  - {{name: acme}}
routes:
  - name: tenants
    gateway: public
    match: {{path_prefix: /tenants}}
    cluster: alpha
    auth: {{jwt: [corp]}}
    prefix_rewrite: /v2/tenants
    host_rewrite: tenants.internal
    request_headers:
      set:
        x-tenant: "%claim.tenant%"
        x-org: "%claim.org.id%"
        x-caller: "%consumer%"
        x-discount: "50%% off"
        x-trace: "from %header.x-client-ref%"
      remove: [x-debug]
    response_headers:
      set: {{x-served-for: "%consumer% of %claim.tenant%"}}
    request_query:
      set: {{version: "2"}}
      add: {{source: gateway}}
      remove: [debug, token]
  - name: keyed
    gateway: public
    match: {{path_prefix: /keyed}}
    cluster: alpha
    auth: {{api_key: true}}
    request_headers: {{set: {{x-caller: "consumer=%consumer%"}}}}
  - name: reshape
    gateway: public
    match: {{path_prefix: /reshape}}
    cluster: alpha
    request_body: {{rename: {{user_name: username}}, remove: [password]}}
    response_body: {{rename: {{backend: server}}, remove: [headers, header_lines, pad], wrap: data}}
"""


def test_header_query_path_and_body_transformations(  # type: ignore[no-untyped-def]
    cli, controller, envoy_factory, backends, gateway_port
):
    signer = Signer("k1")
    policy = POLICY.format(
        port=gateway_port,
        backend=backends["alpha"].port,
        issuer=ISSUER,
        jwks=json.dumps({"keys": [signer.jwk()]}),
    )
    cli.run("apply", "-f", "-", input=policy)
    key = cli.run("consumer", "key", "add", "acme").stdout.strip()
    envoy_factory("public")
    cli.run("route", "update", "reshape", "--timeout", "5s", "--wait")

    token = signer.token(sub="acme", tenant="t-42", org={"id": "o-9"})
    status, headers, body = request(
        gateway_port,
        "/tenants/list?keep=1&debug=true&token=secret&version=1",
        headers={
            "authorization": f"Bearer {token}",
            "x-client-ref": "req-7",
            "x-debug": "1",
            "x-tenant": "forged",
        },
    )
    assert status == 200, body
    seen = body["headers"]
    assert seen["x-tenant"] == "t-42"  # the claim, not the client's copy
    assert seen["x-org"] == "o-9"  # a nested claim
    assert seen["x-caller"] == "acme"
    assert seen["x-discount"] == "50% off"  # a literal %
    assert seen["x-trace"] == "from req-7"
    assert "x-debug" not in seen
    assert seen["host"] == "tenants.internal"
    url = urlsplit(body["path"])
    assert url.path == "/v2/tenants/list"
    assert sorted(parse_qsl(url.query)) == [("keep", "1"), ("source", "gateway"), ("version", "2")]
    assert headers["x-served-for"] == "acme of t-42"

    # the consumer behind an API key
    status, _, body = request(gateway_port, "/keyed", headers={"x-api-key": key})
    assert status == 200 and body["headers"]["x-caller"] == "consumer=acme"

    # JSON bodies: the backend gets the request reshaped, the client the response
    payload = json.dumps({"user_name": "bob", "password": "hunter2", "age": 3, "tags": ["a,}"]})
    status, headers, body = request(
        gateway_port,
        "/reshape",
        method="POST",
        headers={"content-type": "application/json", "x-echo-pad": "10"},
        body=payload,
    )
    assert status == 200
    assert list(body) == ["data"]
    data = body["data"]
    assert data["server"] == "alpha" and "backend" not in data
    assert "headers" not in data and "pad" not in data
    assert json.loads(data["body"]) == {"username": "bob", "age": 3, "tags": ["a,}"]}
    assert int(headers["content-length"]) == len(json.dumps(body, separators=(",", ":")))

    # bodies that are not JSON pass unchanged
    status, _, body = request(
        gateway_port,
        "/reshape",
        method="POST",
        headers={"content-type": "text/plain"},
        body="user_name=bob",
    )
    assert status == 200 and body["data"]["body"] == "user_name=bob"


def test_bad_transformation_input(cli) -> None:  # type: ignore[no-untyped-def]
    cli.run("gateway", "add", "public", "--port", "8080")
    cli.run("cluster", "add", "alpha", "--endpoint", "127.0.0.1:9001")
    cli.add_route("api", "public", "/api", "alpha")
    before = cli.run("export").stdout
    cases = [
        (
            ("--set-request-header", "x-tenant=%claims.tenant%"),
            "unknown placeholder %claims.tenant%",
        ),
        (("--set-request-header", "x-off=50% off"), "write %% for a literal %"),
        (("--remove-query", "a b"), "request_query.remove"),
        (("--response-body-rename", 'id=user"id'), "response_body.rename"),
    ]
    for args, message in cases:
        proc = cli.run("route", "update", "api", *args, check=False)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr and "route 'api'" in proc.stderr, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert cli.run("export").stdout == before

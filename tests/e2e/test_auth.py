"""Authentication and authorisation enforced by a real Envoy, with tokens signed in the test."""

from __future__ import annotations

import base64
import http.client
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from controlplane.envoy_launcher import free_port

from .harness import request

pytestmark = pytest.mark.e2e

ISSUER = "https://issuer.example.com"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Signer:
    """An RSA key pair, its JWKS, and RS256 tokens."""

    def __init__(self, kid: str) -> None:
        self.kid = kid
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwk(self) -> dict[str, str]:
        numbers = self.key.public_key().public_numbers()
        return {
            "kty": "RSA",
            "alg": "RS256",
            "use": "sig",
            "kid": self.kid,
            "n": _b64(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
            "e": _b64(numbers.e.to_bytes(3, "big")),
        }

    def token(self, **claims: Any) -> str:
        now = int(time.time())
        payload = {
            "iss": ISSUER,
            "aud": "api",
            "sub": "acme",
            "iat": now,
            "exp": now + 600,
            **claims,
        }
        payload = {k: v for k, v in payload.items() if v is not None}  # exp=None: no exp
        head = _b64(json.dumps({"alg": "RS256", "typ": "JWT", "kid": self.kid}).encode())
        body = _b64(json.dumps(payload).encode())
        signature = self.key.sign(f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{head}.{body}.{_b64(signature)}"


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.fixture
def signer() -> Signer:
    return Signer("k1")


@pytest.fixture
def secured(cli, controller, envoy_factory, backends, gateway_port, signer, tmp_path: Path):  # type: ignore[no-untyped-def]
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [signer.jwk()]}))
    cli.run("gateway", "add", "public", "--port", str(gateway_port), "--address", "127.0.0.1")
    cli.run("cluster", "add", "alpha", "--endpoint", f"127.0.0.1:{backends['alpha'].port}")
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
        "--claim-header",
        "tenant=x-tenant",
    )
    cli.run("consumer", "add", "acme", "--group", "customers")
    cli.run("consumer", "add", "globex")
    routes = {
        "open": ["--auth-public"],
        "jwt": ["--auth-jwt", "corp"],
        "scoped": ["--auth-jwt", "corp", "--auth-scope", "read:users"],
        "keyed": ["--auth-api-key"],
        "either": ["--auth-jwt", "corp", "--auth-api-key"],
        "customers": ["--auth-api-key", "--auth-group", "customers"],
    }
    for name, options in routes.items():
        cli.run(
            "route",
            "add",
            name,
            "--gateway",
            "public",
            "--path-prefix",
            f"/{name}",
            "--cluster",
            "alpha",
            *options,
        )
    envoy = envoy_factory("public")
    cli.run("route", "update", "open", "--timeout", "5s", "--wait")
    return envoy


def _seen(port: int, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
    return request(port, path, headers=headers)


def test_jwt(secured, gateway_port, signer) -> None:  # type: ignore[no-untyped-def]
    port = gateway_port
    status, headers, _ = _seen(port, "/jwt", {})
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")

    status, _, body = _seen(
        port,
        "/jwt",
        {**_bearer(signer.token(tenant="t1")), "x-consumer-id": "spoofed", "x-tenant": "spoofed"},
    )
    assert status == 200
    assert body["headers"]["x-consumer-id"] == "acme"  # from sub, client copy replaced
    assert body["headers"]["x-tenant"] == "t1"

    other = Signer("k1")  # same kid, different key: bad signature
    assert _seen(port, "/jwt", _bearer(other.token()))[0] == 401
    assert _seen(port, "/jwt", _bearer(signer.token(exp=int(time.time()) - 3600)))[0] == 401
    assert _seen(port, "/jwt", _bearer(signer.token(iss="https://evil.example.com")))[0] == 401
    assert _seen(port, "/jwt", _bearer(signer.token(aud="other")))[0] == 403
    head = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    unsigned = (
        head
        + "."
        + _b64(
            json.dumps(
                {"iss": ISSUER, "aud": "api", "sub": "acme", "exp": int(time.time()) + 60}
            ).encode()
        )
        + "."
    )
    assert _seen(port, "/jwt", _bearer(unsigned))[0] == 401

    # scopes: space-separated "scope" or a "scp" list
    assert _seen(port, "/scoped", _bearer(signer.token(scope="write:users")))[0] == 403
    assert _seen(port, "/scoped", _bearer(signer.token(scope="a read:users b")))[0] == 200
    assert _seen(port, "/scoped", _bearer(signer.token(scp=["read:users"])))[0] == 200

    # a public route next to protected ones; client identity headers never pass through
    status, _, body = _seen(port, "/open", {"x-consumer-id": "spoofed"})
    assert status == 200 and "x-consumer-id" not in body["headers"]


def test_tokens_need_exp_and_claims_cannot_pose_as_consumers(
    secured, cli, gateway_port, signer
) -> None:  # type: ignore[no-untyped-def]
    """A token without exp is refused unless the provider allows it; a claim can never be
    written into x-consumer-id, so consumer rules see only the authenticated identity."""
    port = gateway_port
    no_exp = signer.token(exp=None)
    assert _seen(port, "/jwt", _bearer(no_exp))[0] == 401
    cli.run("jwt-provider", "update", "corp", "--allow-missing-exp", "--wait")
    status, _, body = _seen(port, "/jwt", _bearer(no_exp))
    assert status == 200 and body["headers"]["x-consumer-id"] == "acme"
    cli.run("jwt-provider", "update", "corp", "--require-exp", "--wait")
    assert _seen(port, "/jwt", _bearer(no_exp))[0] == 401

    before = cli.run("export").stdout
    for header in ("x-consumer-id", "X-Api-Key", "x-envoy-original-path", "x-forwarded-for"):
        proc = cli.run(
            "jwt-provider", "update", "corp", "--claim-header", f"who={header}", check=False
        )
        assert proc.returncode == 2 and "is reserved" in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    assert cli.run("export").stdout == before
    token = signer.token(who="globex", tenant="t1")
    status, _, body = _seen(port, "/jwt", _bearer(token))
    assert status == 200 and body["headers"]["x-consumer-id"] == "acme"


def test_api_keys(secured, cli, controller, gateway_port, signer) -> None:  # type: ignore[no-untyped-def]
    port = gateway_port
    acme_key = cli.run("consumer", "key", "add", "acme").stdout.strip()
    globex_key = cli.run("consumer", "key", "add", "globex", "--wait").stdout.strip()
    assert len(acme_key) >= 22 and acme_key != globex_key

    listing = cli.json("consumer", "key", "list")
    assert {k["consumer"] for k in listing} == {"acme", "globex"}
    assert all(acme_key not in json.dumps(k) for k in listing)  # only prefixes are listed

    status, headers, _ = _seen(port, "/keyed", {})
    assert status == 401 and "www-authenticate" in headers
    assert _seen(port, "/keyed", {"x-api-key": "wrong"})[0] == 401
    status, _, body = _seen(port, "/keyed", {"x-api-key": acme_key, "x-consumer-id": "x"})
    assert status == 200 and body["headers"]["x-consumer-id"] == "acme"
    assert "x-api-key" not in body["headers"]  # the key is not forwarded

    # either credential
    assert _seen(port, "/either", {"x-api-key": globex_key})[0] == 200
    assert _seen(port, "/either", _bearer(signer.token()))[0] == 200
    assert _seen(port, "/either", {})[0] == 401

    # groups: acme is a customer, globex is not
    assert _seen(port, "/customers", {"x-api-key": acme_key})[0] == 200
    assert _seen(port, "/customers", {"x-api-key": globex_key})[0] == 403

    # keys never reach a log: the controller's, Envoy's
    logs = [*controller.log_dir.glob("controller-*.log"), secured.log_path]
    assert logs and all(acme_key not in p.read_text(errors="replace") for p in logs)

    # revocation takes effect with --wait, on a connection opened before it
    [acme_id] = [k["id"] for k in listing if k["consumer"] == "acme"]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)

    def on_open_connection(key: str) -> int:
        conn.request("GET", "/keyed", headers={"x-api-key": key})
        response = conn.getresponse()
        response.read()
        return response.status

    assert on_open_connection(acme_key) == 200
    cli.run("consumer", "key", "revoke", acme_id, "--wait")
    assert on_open_connection(acme_key) == 401  # same connection, next request
    assert on_open_connection(globex_key) == 200
    conn.close()
    assert _seen(port, "/keyed", {"x-api-key": acme_key})[0] == 401


def test_expired_key(secured, cli, gateway_port) -> None:  # type: ignore[no-untyped-def]
    from controlplane.policy import new_api_key
    from controlplane.store import Store

    store = Store(cli.db)
    key = new_api_key("acme", None)
    soon = key.model_copy(
        update={
            "expires_at": __import__("datetime").datetime.now(__import__("datetime").UTC)
            + __import__("datetime").timedelta(seconds=2)
        }
    )
    store.create(soon)
    deadline = time.monotonic() + 5
    while _seen(gateway_port, "/keyed", {"x-api-key": key.key})[0] != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(2.5)
    deadline = time.monotonic() + 5
    while _seen(gateway_port, "/keyed", {"x-api-key": key.key})[0] != 401:
        assert time.monotonic() < deadline, "expired key still accepted"
        time.sleep(0.05)


class _JwksServer:
    def __init__(self) -> None:
        self.body = b"{}"
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"


def test_remote_jwks_rotation(cli, controller, envoy_factory, backends, gateway_port) -> None:  # type: ignore[no-untyped-def]
    old, new = Signer("old"), Signer("new")
    jwks = _JwksServer()
    jwks.body = json.dumps({"keys": [old.jwk()]}).encode()
    try:
        cli.run(
            "jwt-provider",
            "add",
            "idp",
            "--issuer",
            ISSUER,
            "--jwks-uri",
            jwks.url,
            "--jwks-cache-duration",
            "1s",
        )
        cli.run(
            "gateway",
            "add",
            "public",
            "--port",
            str(gateway_port),
            "--address",
            "127.0.0.1",
            "--auth-jwt",
            "idp",
        )  # gateway-wide default
        cli.run("cluster", "add", "alpha", "--endpoint", f"127.0.0.1:{backends['alpha'].port}")
        cli.run("route", "add", "api", "--gateway", "public", "--cluster", "alpha")
        envoy = envoy_factory("public")
        pid = envoy.pid
        cli.run("route", "update", "api", "--timeout", "5s", "--wait")
        assert _seen(gateway_port, "/x", _bearer(old.token()))[0] == 200
        assert _seen(gateway_port, "/x", _bearer(new.token()))[0] == 401

        jwks.body = json.dumps({"keys": [new.jwk()]}).encode()  # rotate
        deadline = time.monotonic() + 15
        while _seen(gateway_port, "/x", _bearer(new.token()))[0] != 200:
            assert time.monotonic() < deadline, "new key not picked up after the cache expired"
            time.sleep(0.2)
        assert envoy.pid == pid
    finally:
        jwks.server.shutdown()


_REMOTE_PROVIDER = [
    "jwt-provider",
    "add",
    "p",
    "--issuer",
    ISSUER,
    "--jwks-uri",
    "https://j.test/k",
]
BAD = {
    "unknown provider": (
        ["route", "add", "r", "--gateway", "public", "--cluster", "alpha", "--auth-jwt", "nobody"],
        "jwt_provider 'nobody' does not exist",
    ),
    "malformed jwks": (
        ["jwt-provider", "add", "p", "--issuer", ISSUER, "--jwks-file", "{bad}"],
        "jwks: is not JSON",
    ),
    "claim into the consumer header": (
        [*_REMOTE_PROVIDER, "--claim-header", "name=X-Consumer-ID"],
        "claims_to_headers: 'x-consumer-id' is reserved",
    ),
    "claim into the api key header": (
        [*_REMOTE_PROVIDER, "--claim-header", "k=x-api-key"],
        "claims_to_headers: 'x-api-key' is reserved",
    ),
    "invalid rsa modulus": (
        ["jwt-provider", "add", "p", "--issuer", ISSUER, "--jwks-file", "{badkey}"],
        "jwks: keys[0]: n is not an RSA modulus",
    ),
    "invalid issuer": (
        [
            "jwt-provider",
            "add",
            "p",
            "--issuer",
            "not a url",
            "--jwks-uri",
            "https://x.example.com/jwks",
        ],
        "issuer: 'not a url' is not a valid",
    ),
    "scopes without jwt": (
        [
            "route",
            "add",
            "r",
            "--gateway",
            "public",
            "--cluster",
            "alpha",
            "--auth-api-key",
            "--auth-scope",
            "x",
        ],
        "scopes",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_auth_input_changes_nothing(cli, tmp_path: Path, case: str) -> None:  # type: ignore[no-untyped-def]
    cli.run("gateway", "add", "public", "--port", "8080")
    cli.run("cluster", "add", "alpha", "--endpoint", "127.0.0.1:9")
    args, expected = BAD[case]
    files = {"{bad}": tmp_path / "bad.json", "{badkey}": tmp_path / "badkey.json"}
    args = [str(files[a]) if a in files else a for a in args]
    files["{bad}"].write_text("{not json")
    even = Signer("k").jwk() | {"n": _b64(b"\xc0" + b"\x00" * 255)}  # an even modulus
    files["{badkey}"].write_text(json.dumps({"keys": [even]}))
    before = cli.run("export").stdout
    proc = cli.run(*args, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], proc.stderr
    assert cli.run("export").stdout == before

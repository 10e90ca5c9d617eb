"""What the backend reads is what the gateway checked (ADR 0022), through a real Envoy:

* identity headers cannot be forged by another spelling (underscores, case, duplicates);
* only a real CORS preflight on a route with a CORS policy goes unauthenticated, answered
  by the gateway; every other OPTIONS is authenticated like any request;
* no variant of a protected path reaches a public route's backend as the protected path,
  on one route table and on a sharded gateway;
* an expired API key is refused at the edge with the controller gone.
"""

from __future__ import annotations

import http.client
import json
import posixpath
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from controlplane.demo.echo import EchoServer
from controlplane.envoy_launcher import stats

from .harness import Controller, request, wait_until
from .test_auth import ISSUER, Signer
from .test_route_shards import _scopes

pytestmark = pytest.mark.e2e


def _send(
    port: int, path: str, headers: list[tuple[str, str]], method: str = "GET"
) -> tuple[int, dict[str, str], Any]:
    """One request with header lines exactly as given (duplicates, any spelling)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders()
        resp = conn.getresponse()
        data = resp.read()
        hdrs = {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()
    try:
        body: Any = json.loads(data)
    except ValueError:
        body = data.decode(errors="replace")
    return resp.status, hdrs, body


def _as_cgi(name: str) -> str:
    """How CGI/WSGI/Rack backends name a header: case and '-' vs '_' do not count."""
    return name.upper().replace("-", "_")


def _values(body: dict[str, Any], header: str) -> list[str]:
    """Every value the backend would read for ``header``, whatever the spelling."""
    return [v for n, v in body["header_lines"] if _as_cgi(n) == _as_cgi(header)]


# -- identity headers --------------------------------------------------------------------

#: spellings of the identity headers a backend framework may merge with the real one
FORGED = [
    ("x_consumer_id", "forged"),
    ("X_Consumer_Id", "forged"),
    ("x-consumer_id", "forged"),
    ("X-Consumer-Id", "forged"),
    ("X-CONSUMER-ID", "forged"),
    ("x-cOnSuMeR-iD", "forged"),
    ("x-consumer-id", "forged"),
    ("x-consumer-id", "forged-again"),
    ("x_tenant", "forged"),
    ("X-Tenant", "forged"),
    ("x-tenant", "forged"),
    ("x-gateway-key-client", "forged 9999999999"),
    ("x_gateway_key_client", "forged"),
    ("X-Gateway-Key-Client", "forged"),
]


@pytest.fixture
def identity_gateway(cli, controller, envoy_factory, backends, gateway_port, tmp_path: Path):  # type: ignore[no-untyped-def]
    signer = Signer("k1")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [signer.jwk()]}))
    cli.add_gateway("public", gateway_port)
    cli.run("cluster", "add", "alpha", "--endpoint", f"127.0.0.1:{backends['alpha'].port}")
    cli.run(
        "jwt-provider", "add", "corp", "--issuer", ISSUER, "--audience", "api",
        "--jwks-file", str(jwks), "--claim-header", "tenant=x-tenant",
    )  # fmt: skip
    cli.run("consumer", "add", "acme", "--group", "customers")
    for name, options in {
        "open": ["--auth-public"],
        "jwt": ["--auth-jwt", "corp"],
        "keyed": ["--auth-api-key"],
        "either": ["--auth-jwt", "corp", "--auth-api-key"],
        "customers": ["--auth-api-key", "--auth-group", "customers"],
    }.items():
        cli.add_route(name, "public", f"/{name}", "alpha", *options)
    key = cli.run("consumer", "key", "add", "acme").stdout.strip()
    envoy = envoy_factory("public")
    cli.run("route", "update", "open", "--timeout", "5s", "--wait")
    return envoy, signer, key


def test_identity_headers_cannot_be_forged_by_any_spelling(  # type: ignore[no-untyped-def]
    identity_gateway, cli, gateway_port, backends
) -> None:
    envoy, signer, key = identity_gateway
    token = signer.token(tenant="t1")
    cases = {
        # route, credentials, the identity the backend must read (None: none at all)
        "open": ([], None, None),
        "jwt": ([("authorization", f"Bearer {token}")], "acme", "t1"),
        "keyed": ([("x-api-key", key)], "acme", None),
        "either-key": ([("x-api-key", key)], "acme", None),
        "either-jwt": ([("authorization", f"Bearer {token}")], "acme", "t1"),
        "customers": ([("x-api-key", key)], "acme", None),
    }
    alpha = backends["alpha"]

    def check(forged: list[tuple[str, str]]) -> None:
        for case, (credentials, consumer, tenant) in cases.items():
            path = "/" + case.split("-")[0]
            status, _, body = _send(gateway_port, path, [*forged, *credentials])
            assert status == 200, (case, status, body)
            assert _values(body, "x-consumer-id") == ([consumer] if consumer else []), case
            assert _values(body, "x-tenant") == ([tenant] if tenant else []), case
            assert _values(body, "x-gateway-key-client") == [], case
            assert _values(body, "x-api-key") == [], case  # the key is never forwarded
            assert not any("forged" in v for _, v in body["header_lines"]), case
        # forged spellings alone pass no consumer rule
        assert _send(gateway_port, "/customers", forged)[0] == 401

    # by default a header name with '_' refuses the request: no backend sees it
    underscored = [(n, v) for n, v in FORGED if "_" in n]
    for case, (credentials, _, _) in cases.items():
        hits = alpha.hits
        for forged in underscored:
            path = "/" + case.split("-")[0]
            assert _send(gateway_port, path, [forged, *credentials])[0] == 400, (case, forged)
        assert alpha.hits == hits
    rejected = stats(envoy.admin_port, "requests_rejected_with_underscores_in_headers")
    assert rejected["http1.requests_rejected_with_underscores_in_headers"] >= len(cases)
    # other case, duplicates, the internal key-client header: replaced or removed
    check([(n, v) for n, v in FORGED if "_" not in n])

    # or, per gateway, such headers dropped and the request served
    cli.run("gateway", "update", "public", "--underscore-headers", "drop", "--wait")
    check(FORGED)
    dropped = stats(envoy.admin_port, "dropped_headers_with_underscores")
    assert dropped["http1.dropped_headers_with_underscores"] >= 5 * len(cases)


# -- preflight-shaped requests -----------------------------------------------------------

PREFLIGHT = {
    "origin": "https://app.example.com",
    "access-control-request-method": "POST",
    "access-control-request-headers": "authorization,x-api-key",
}


def test_only_real_preflights_skip_authentication(  # type: ignore[no-untyped-def]
    identity_gateway, cli, gateway_port, backends
) -> None:
    _, signer, key = identity_gateway
    for name, auth in {"jwt": "--auth-jwt", "keyed": "--auth-api-key"}.items():
        args = [auth, "corp"] if auth == "--auth-jwt" else [auth]
        cli.add_route(
            f"{name}-cors", "public", f"/{name}-cors", "alpha", *args,
            "--cors-origin", "https://app.example.com", "--cors-header", "authorization",
            "--cors-header", "x-api-key",
        )  # fmt: skip
    cli.run("route", "update", "jwt-cors", "--timeout", "5s", "--wait")
    alpha = backends["alpha"]
    alpha.reset()
    evil = {**PREFLIGHT, "origin": "https://evil.example.com"}
    for path in ("/jwt", "/keyed", "/either", "/customers", "/jwt-cors", "/keyed-cors"):
        cors = path.endswith("-cors")
        # preflight-shaped, on a route without CORS policy: authenticated like any request
        status, headers, _ = request(gateway_port, path, method="OPTIONS", headers=PREFLIGHT)
        if cors:  # a real preflight: answered by the gateway, without credentials
            assert status == 200, path
            assert headers["access-control-allow-origin"] == "https://app.example.com"
            assert "x-backend" not in headers, path
        else:
            assert status == 401, (path, status)
        # an origin the policy does not allow is no preflight: authenticated
        status, headers, _ = request(gateway_port, path, method="OPTIONS", headers=evil)
        assert status == 401 and "access-control-allow-origin" not in headers, (path, status)
        # no Origin, or no requested method: an ordinary OPTIONS, authenticated
        for partial in ({"origin": PREFLIGHT["origin"]}, {}):
            assert request(gateway_port, path, method="OPTIONS", headers=partial)[0] == 401
    assert alpha.hits == 0  # the backend never saw an unauthenticated OPTIONS

    # with credentials, OPTIONS is forwarded like any request
    bearer = {"authorization": f"Bearer {signer.token()}"}
    for path, creds in (("/jwt", bearer), ("/keyed", {"x-api-key": key})):
        status, _, body = request(
            gateway_port, path, method="OPTIONS", headers={**PREFLIGHT, **creds}
        )
        assert status == 200 and body["headers"]["x-consumer-id"] == "acme", path
    assert all(r["headers"].get("x-consumer-id") == "acme" for r in alpha.requests)
    # a public route's backend answers its own OPTIONS
    status, _, body = request(gateway_port, "/open", method="OPTIONS", headers=PREFLIGHT)
    assert status == 200 and body["method"] == "OPTIONS"


# -- path variants -----------------------------------------------------------------------


#: what a lenient backend makes of a path: decoded once, backslashes as slashes, ';params'
#: and NULs cut, dot segments resolved, case and a trailing slash ignored
def _lenient(path: str) -> str:
    bare = unquote(path.split("?", 1)[0]).replace("\\", "/").split("\x00", 1)[0]
    segments = [s.split(";", 1)[0] for s in bare.split("/")]
    normal = posixpath.normpath("/" + "/".join(s for s in segments if s))
    return normal.lower().rstrip("/") or "/"


def _protected(path: str) -> bool:
    """Read leniently, is this the protected prefix /private or the exact path /admin?"""
    read = _lenient(path)
    return read == "/admin" or read == "/private" or read.startswith("/private/")


VARIANTS = [
    "/private/x",
    "/public/..%2Fprivate/x",
    "/public/..%2fprivate/x",
    "/public/%2e%2e/private/x",
    "/public/%2E%2E%2Fprivate/x",
    "/public/.%2e/private/x",
    "/public/..%5Cprivate/x",
    "/public/..%5cprivate",
    "/public\\..\\private\\x",
    "/public/./../private",
    "//private/x",
    "///private",
    "/public//../private/x",
    "/PRIVATE/x",
    "/Private",
    "/pRiVaTe/",
    "/%70rivate/x",
    "/%50RIVATE/x",
    "/private%2F",
    "/private%2fx",
    "/private;x=1",
    "/private;/x",
    "/public/..;/private/x",
    "/public;/../private",
    "/public/%3B/../private",
    "/private%3Bx",
    "/private%00",
    "/public/x%00/../../private",
    "/admin",
    "/admin/",
    "/ADMIN",
    "/Admin/",
    "/admin;x",
    "/admin%3b",
    "/admin/.",
    "/admin%2F",
    "/public/..%2Fadmin",
    "/public/%2e%2e/ADMIN/",
    "/admin?x=1",
]


def _walk(port: int, path: str, hops: int = 3) -> tuple[int, dict[str, str], Any]:
    """A request, following the gateway's redirects (as a client would)."""
    for _ in range(hops):
        status, headers, body = _send(port, path, [("host", "gw.example")])
        if status not in (301, 302, 307, 308):
            return status, headers, body
        path = headers["location"]
        assert path.startswith("/"), path  # to the same gateway
    raise AssertionError(f"redirect loop for {path!r}")


def _check_variants(port: int, public: EchoServer, private: EchoServer) -> dict[str, int]:
    """Every variant is refused (no credentials) or answered without reaching a public
    backend as a protected path; returns the outcome per variant."""
    outcomes = {}
    for variant in VARIANTS:
        public.reset()
        status, headers, body = _walk(port, variant)
        outcomes[variant] = status
        read = [r["path"] for r in public.requests]
        assert not any(_protected(p) for p in read), (variant, status, read)
        if status == 200:
            assert headers["x-backend"] == "public" and not _protected(body["path"]), variant
        assert status in (200, 400, 401, 404), (variant, status)
    # the protected paths themselves (and what only looks like them) are refused
    assert outcomes["/private/x"] == outcomes["/admin"] == 401
    assert outcomes["/PRIVATE/x"] in (401, 404) and outcomes["/admin/"] == 401
    assert private.hits == 0
    return outcomes


@pytest.fixture
def paths_setup(cli, backends, gateway_port, tmp_path: Path):  # type: ignore[no-untyped-def]
    servers = {"public": EchoServer("public").start(), "private": EchoServer("private").start()}
    cli.add_gateway("public", gateway_port)
    for name, server in servers.items():
        cli.run("cluster", "add", name, "--endpoint", f"127.0.0.1:{server.port}")
    cli.run("consumer", "add", "acme")
    cli.add_route("private", "public", "/private", "private", "--auth-api-key")
    cli.run(
        "route", "add", "admin", "--gateway", "public", "--path", "/admin",
        "--cluster", "private", "--auth-api-key",
    )  # fmt: skip
    yield servers
    for server in servers.values():
        server.stop()


def test_no_variant_of_a_protected_path_reaches_the_catch_all_as_it(  # type: ignore[no-untyped-def]
    paths_setup, cli, controller, envoy_factory, gateway_port
) -> None:
    servers = paths_setup
    cli.add_route("everything", "public", "/", "public")
    envoy_factory("public")
    cli.run("route", "update", "everything", "--timeout", "5s", "--wait")
    outcomes = _check_variants(gateway_port, servers["public"], servers["private"])
    assert outcomes["/public/..%2Fprivate/x"] == 401  # redirected to /private/x, refused
    assert outcomes["/PRIVATE/x"] == outcomes["/ADMIN"] == outcomes["/Admin/"] == 401
    assert outcomes["/private;x=1"] == 400  # path parameters refused
    assert outcomes["/public/..;/private/x"] == 401  # normalised to /private/x first
    assert outcomes["/admin;x"] == 400 and outcomes["/private%00"] == 400
    # the public route still serves its own paths, with their case
    status, _, body = _walk(gateway_port, "/public/Docs/")
    assert status == 200 and body["path"] == "/public/Docs/"
    status, _, body = _walk(gateway_port, "/public/a?x=;")  # ';' in the query is fine
    assert status == 200 and body["path"] == "/public/a?x=;"

    # per gateway: refuse encoded slashes instead of redirecting
    cli.run("gateway", "update", "public", "--escaped-slashes", "reject", "--wait")
    outcomes = _check_variants(gateway_port, servers["public"], servers["private"])
    assert outcomes["/public/..%2Fprivate/x"] == outcomes["/admin%2F"] == 400

    # path parameters allowed: a prefix still covers them, an exact path does not (so a
    # backend that strips them would read /admin;x as /admin: the documented trade-off)
    cli.run("gateway", "update", "public", "--path-semicolons", "allow", "--wait")
    assert _walk(gateway_port, "/private;x=1")[0] == 401
    status, _, body = _walk(gateway_port, "/admin;x")
    assert status == 200 and body["path"] == "/admin;x"


@pytest.fixture
def sharding_controller(cli, tmp_path: Path) -> Iterator[Controller]:  # type: ignore[no-untyped-def]
    c = Controller(cli, tmp_path, ("--route-shards-from", "10"))
    c.start()
    yield c
    c.stop()


def test_no_variant_reaches_a_public_route_on_a_sharded_gateway(  # type: ignore[no-untyped-def]
    paths_setup, cli, sharding_controller, gateway_port, tmp_path: Path
) -> None:
    from .harness import Envoy

    servers = paths_setup
    for letter in "bcdefghijk":  # public routes, enough to shard
        cli.add_route(f"{letter}-docs", "public", f"/{letter}-docs", "public")
    cli.add_route("public", "public", "/public", "public")
    # a public catch-all, shorter than the key: in the fallback shard and in every shard
    # (ADR 0045); a case variant of a protected path must still meet the protected route
    cli.add_route("everything", "public", "/", "public")
    envoy = Envoy("public", "public-1", sharding_controller.xds_port, tmp_path)
    try:
        cli.run("route", "update", "public", "--timeout", "5s", "--wait=90s")  # a busy machine
        scopes = _scopes(envoy.admin_port)  # sharded by "/" and one character
        assert {"2/a", "2/p", "2/b", "2*"} <= scopes and len(scopes) == 13, scopes
        outcomes = _check_variants(gateway_port, servers["public"], servers["private"])
        # re-keyed in lower case to the protected route's shard (not the fallback's
        # catch-all), where a re-keyed request is refused: its chain would lack the key check
        assert outcomes["/PRIVATE/x"] == outcomes["/ADMIN"] == outcomes["/Admin/"] == 404
        status, _, body = _walk(gateway_port, "/zzz/x")  # no shard: the fallback
        assert status == 200 and body["path"] == "/zzz/x"
        # the key is taken from the normalised path: dot segments and merged slashes
        # reach the protected route's shard
        assert outcomes["/public/%2e%2e/private/x"] == outcomes["//private/x"] == 401
        assert outcomes["/public/..%2Fprivate/x"] == 401
        status, _, body = _walk(gateway_port, "/b-docs/x")
        assert status == 200 and body["path"] == "/b-docs/x"
    finally:
        envoy.stop()


# -- API-key expiry at the edge ----------------------------------------------------------


def test_expired_key_refused_by_envoy_with_the_controller_down(  # type: ignore[no-untyped-def]
    cli, controller, envoy_factory, backends, gateway_port
) -> None:
    from controlplane.policy import new_api_key
    from controlplane.store import Store

    cli.add_gateway("public", gateway_port)
    cli.run("cluster", "add", "alpha", "--endpoint", f"127.0.0.1:{backends['alpha'].port}")
    cli.run("consumer", "add", "acme")
    cli.add_route("keyed", "public", "/keyed", "alpha", "--auth-api-key")
    lasting = cli.run("consumer", "key", "add", "acme").stdout.strip()
    envoy_factory("public")
    cli.run("route", "update", "keyed", "--timeout", "5s", "--wait")
    expires = datetime.now(UTC) + timedelta(seconds=6)
    key = new_api_key("acme", expires)
    Store(cli.db).create(key)
    wait_until(lambda: request(gateway_port, "/keyed", headers={"x-api-key": key.key})[0] == 200)
    status, _, body = request(gateway_port, "/keyed", headers={"x-api-key": key.key})
    assert body["headers"]["x-consumer-id"] == "acme"
    assert "x-gateway-key-client" not in body["headers"]

    controller.kill()  # SIGKILL: nothing will push the expiry
    conn = http.client.HTTPConnection("127.0.0.1", gateway_port, timeout=5)

    def on_open_connection(api_key: str) -> int:
        conn.request("GET", "/keyed", headers={"x-api-key": api_key})
        response = conn.getresponse()
        response.read()
        return response.status

    assert on_open_connection(key.key) == 200
    time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.2)
    assert on_open_connection(key.key) == 401  # refused by Envoy alone, same connection
    status, headers, body = request(gateway_port, "/keyed", headers={"x-api-key": key.key})
    assert status == 401 and "expired" in headers["www-authenticate"]
    assert on_open_connection(lasting) == 200  # a key without expiry is unaffected
    conn.close()

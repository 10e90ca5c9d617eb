"""The test OpenID provider (tests/oidc_provider.py) speaks the protocol Envoy will meet.

The provider runs as its own process, as in the end-to-end tests, and is driven here with
plain HTTP and no Envoy: if one of these fails, an end-to-end failure would be the
provider's and not the gateway's.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from controlplane.envoy_launcher import free_port

REPO = Path(__file__).resolve().parents[2]
CLIENT_ID = "gateway"
CLIENT_SECRET = "s3cret-value"
REDIRECT_URI = "http://127.0.0.1:18080/oauth2/callback"
POST_LOGOUT_URI = "http://127.0.0.1:18080/signed-out"


@dataclass
class Provider:
    issuer: str
    process: subprocess.Popen[str]

    def client(self) -> httpx.Client:
        """A browser stand-in: keeps cookies, never follows redirects on its own."""
        return httpx.Client(base_url=self.issuer, follow_redirects=False, timeout=10)

    def events(self) -> list[dict[str, Any]]:
        return httpx.get(f"{self.issuer}/_events", timeout=10).json()


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[Provider]:
    port = free_port()
    log = tmp_path / "oidc_provider.log"
    with log.open("w") as stderr:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.oidc_provider",
                "--port",
                str(port),
                "--client-id",
                CLIENT_ID,
                "--client-secret",
                CLIENT_SECRET,
                "--redirect-uri",
                REDIRECT_URI,
                "--redirect-uri",
                "http://127.0.0.1:18080/other-callback",
                "--post-logout-redirect-uri",
                POST_LOGOUT_URI,
                "--access-token-ttl",
                "120",
                "--user",
                "alice:password",
                "--user",
                "bob:hunter2",
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line == f"ready http://127.0.0.1:{port}", line
        yield Provider(line.removeprefix("ready "), process)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
        finally:
            if process.stdout is not None:
                process.stdout.close()
    tail = log.read_text()[-3000:]
    assert code == 0, f"provider exited with {code} on SIGTERM; its log ends:\n{tail}"
    assert "Traceback" not in tail, tail


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def authorize_params(challenge: str, **extra: str) -> dict[str, str]:
    params = {
        "response_type": "code",
        "client_id": CLIENT_ID,
        "redirect_uri": REDIRECT_URI,
        "scope": "openid profile email",
        "state": secrets.token_urlsafe(12),
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    params.update(extra)
    return params


def hidden_fields(page: str) -> dict[str, str]:
    return dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page))


def login(browser: httpx.Client, params: dict[str, str], password: str = "password") -> str:
    """Authorize without a session, sign in on the form, return the code."""
    form_page = browser.get("/authorize", params=params)
    assert form_page.status_code == 200
    assert 'action="/authorize"' in form_page.text
    fields = hidden_fields(form_page.text)
    assert fields == params
    done = browser.post("/authorize", data={**fields, "username": "alice", "password": password})
    assert done.status_code == 302, done.text
    return code_from(done, params["state"])


def code_from(response: httpx.Response, state: str) -> str:
    location = urlsplit(response.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT_URI
    query = parse_qs(location.query)
    assert query["state"] == [state]
    return query["code"][0]


def exchange(
    issuer: str, code: str, verifier: str, *, basic: bool = False, redirect_uri: str = REDIRECT_URI
) -> httpx.Response:
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "code_verifier": verifier,
    }
    if basic:
        return httpx.post(f"{issuer}/token", data=data, auth=(CLIENT_ID, CLIENT_SECRET))
    data |= {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    return httpx.post(f"{issuer}/token", data=data)


def refresh(issuer: str, refresh_token: str) -> httpx.Response:
    return httpx.post(
        f"{issuer}/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
        },
    )


def verify(issuer: str, token: str) -> dict[str, Any]:
    """Check the signature against the published JWKS and return the claims."""
    keys = KeySet.import_key_set(httpx.get(f"{issuer}/jwks").json())
    decoded = jwt.decode(token, keys, algorithms=["RS256"])
    assert decoded.header["alg"] == "RS256"
    return dict(decoded.claims)


def test_discovery_names_the_endpoints(provider: Provider) -> None:
    issuer = provider.issuer
    doc = httpx.get(f"{issuer}/.well-known/openid-configuration").json()
    assert doc["issuer"] == issuer
    assert doc["authorization_endpoint"] == f"{issuer}/authorize"
    assert doc["token_endpoint"] == f"{issuer}/token"
    assert doc["jwks_uri"] == f"{issuer}/jwks"
    assert doc["userinfo_endpoint"] == f"{issuer}/userinfo"
    assert doc["end_session_endpoint"] == f"{issuer}/end_session"
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert set(doc["grant_types_supported"]) == {"authorization_code", "refresh_token"}
    assert set(doc["token_endpoint_auth_methods_supported"]) == {
        "client_secret_post",
        "client_secret_basic",
    }
    assert doc["id_token_signing_alg_values_supported"] == ["RS256"]
    jwks = httpx.get(f"{issuer}/jwks").json()
    assert [k["kty"] for k in jwks["keys"]] == ["RSA"]
    assert "d" not in jwks["keys"][0]


def test_full_flow(provider: Provider) -> None:
    issuer = provider.issuer
    verifier, challenge = pkce_pair()
    nonce = secrets.token_urlsafe(12)
    params = authorize_params(challenge, nonce=nonce)
    with provider.client() as browser:
        # A wrong password shows the form again with 401 and sets no session.
        form = browser.get("/authorize", params=params)
        wrong = browser.post(
            "/authorize", data={**hidden_fields(form.text), "username": "alice", "password": "x"}
        )
        assert wrong.status_code == 401
        assert 'name="password"' in wrong.text
        assert "oidc_op_session" not in browser.cookies

        code = login(browser, params)
        assert "oidc_op_session" in browser.cookies

        tokens = exchange(issuer, code, verifier)
        assert tokens.status_code == 200, tokens.text
        body = tokens.json()
        assert body["token_type"] == "Bearer"
        assert body["expires_in"] == 120
        assert set(body["scope"].split()) == {"openid", "profile", "email"}

        id_claims = verify(issuer, body["id_token"])
        assert id_claims["iss"] == issuer
        assert id_claims["aud"] == CLIENT_ID
        assert id_claims["sub"] == "alice"
        assert id_claims["nonce"] == nonce
        assert id_claims["exp"] > time.time()
        access = verify(issuer, body["access_token"])
        assert (access["iss"], access["sub"], access["aud"]) == (issuer, "alice", CLIENT_ID)
        assert {"exp", "iat", "jti"} <= access.keys()

        # The code is single use, and presenting it again revokes what it bought
        # (RFC 6749 4.1.2: the server SHOULD revoke tokens issued from a reused code).
        again = exchange(issuer, code, verifier)
        assert again.status_code == 400
        assert again.json()["error"] == "invalid_grant"
        revoked = httpx.get(
            f"{issuer}/userinfo", headers={"Authorization": f"Bearer {body['access_token']}"}
        )
        assert revoked.status_code == 401
        assert refresh(issuer, body["refresh_token"]).json()["error"] == "invalid_grant"

        # A session at the OP: the next authorize redirects at once; basic auth works too;
        # no nonce is fine.
        verifier2, challenge2 = pkce_pair()
        params2 = authorize_params(challenge2)
        quick = browser.get("/authorize", params=params2)
        assert quick.status_code == 302
        second = exchange(issuer, code_from(quick, params2["state"]), verifier2, basic=True)
        assert second.status_code == 200, second.text
        assert "nonce" not in verify(issuer, second.json()["id_token"])
        assert second.json()["access_token"] != body["access_token"]
        body = second.json()

        # A wrong verifier is refused.
        _, challenge3 = pkce_pair()
        params3 = authorize_params(challenge3)
        code3 = code_from(browser.get("/authorize", params=params3), params3["state"])
        bad = exchange(issuer, code3, pkce_pair()[0])
        assert bad.status_code == 400
        assert bad.json()["error"] == "invalid_grant"

        # Refresh rotates: new access, refresh and ID tokens; the old refresh token is dead.
        renewed = refresh(issuer, body["refresh_token"])
        assert renewed.status_code == 200, renewed.text
        fresh = renewed.json()
        assert fresh["access_token"] != body["access_token"]
        assert fresh["refresh_token"] != body["refresh_token"]
        assert fresh["expires_in"] == 120
        fresh_id = verify(issuer, fresh["id_token"])
        assert (fresh_id["sub"], fresh_id["aud"]) == ("alice", CLIENT_ID)
        assert fresh_id["auth_time"] == id_claims["auth_time"]
        stale = refresh(issuer, body["refresh_token"])
        assert stale.status_code == 400
        assert stale.json()["error"] == "invalid_grant"
        assert refresh(issuer, fresh["refresh_token"]).status_code == 200

        info = httpx.get(
            f"{issuer}/userinfo", headers={"Authorization": f"Bearer {fresh['access_token']}"}
        )
        assert info.status_code == 200, info.text
        assert info.json() == {"sub": "alice", "name": "Alice", "email": "alice@example.test"}
        assert httpx.get(f"{issuer}/userinfo").status_code == 401
        assert (
            httpx.get(
                f"{issuer}/userinfo", headers={"Authorization": "Bearer not-a-token"}
            ).status_code
            == 401
        )

        # RP-initiated logout ends the OP session and returns to the registered URI.
        out = browser.get(
            "/end_session",
            params={
                "id_token_hint": body["id_token"],
                "client_id": CLIENT_ID,
                "post_logout_redirect_uri": POST_LOGOUT_URI,
                "state": "bye",
            },
        )
        assert out.status_code == 302
        assert out.headers["location"] == f"{POST_LOGOUT_URI}?{urlencode({'state': 'bye'})}"
        assert "oidc_op_session" not in browser.cookies
        after = browser.get("/authorize", params=authorize_params(pkce_pair()[1]))
        assert after.status_code == 200
        assert 'name="username"' in after.text

    events = provider.events()
    tokens_ev = [e for e in events if e["endpoint"] == "token"]
    assert [(e["grant_type"], e["ok"], e["error"]) for e in tokens_ev] == [
        ("authorization_code", True, None),
        ("authorization_code", False, "invalid_grant"),
        ("refresh_token", False, "invalid_grant"),
        ("authorization_code", True, None),
        ("authorization_code", False, "invalid_grant"),
        ("refresh_token", True, None),
        ("refresh_token", False, "invalid_grant"),
        ("refresh_token", True, None),
    ]
    assert [e["client_auth"] for e in tokens_ev] == [
        "client_secret_post",
        "client_secret_post",
        "client_secret_post",
        "client_secret_basic",
        "client_secret_post",
        "client_secret_post",
        "client_secret_post",
        "client_secret_post",
    ]
    assert [e["code_verifier_present"] for e in tokens_ev] == [True] * 2 + [False, True, True] + [
        False
    ] * 3
    authz = [e for e in events if e["endpoint"] == "authorize"]
    assert [e["had_session"] for e in authz] == [False, False, False, False, True, True, False]
    assert {e["code_challenge_method"] for e in authz} == {"S256"}
    assert authz[0]["scope"] == "openid profile email"
    (logout,) = [e for e in events if e["endpoint"] == "end_session"]
    assert logout["id_token_hint_valid"] is True
    assert logout["post_logout_redirect_uri"] == POST_LOGOUT_URI


def test_refused_requests_are_not_redirected(provider: Provider) -> None:
    issuer = provider.issuer
    _, challenge = pkce_pair()
    with provider.client() as browser:
        for bad in (
            {"redirect_uri": "http://127.0.0.1:18080/evil"},
            {"redirect_uri": REDIRECT_URI + "/"},
            {"client_id": "someone-else"},
        ):
            page = browser.get("/authorize", params=authorize_params(challenge, **bad))
            assert page.status_code == 400, bad
            assert "location" not in page.headers

        # No PKCE: the client is known, so the error goes back to it (RFC 6749 4.1.2.1).
        params = authorize_params(challenge)
        del params["code_challenge"], params["code_challenge_method"]
        missing = browser.get("/authorize", params=params)
        assert missing.status_code == 302
        assert parse_qs(urlsplit(missing.headers["location"]).query)["error"] == ["invalid_request"]

        # The other registered redirect URI works, and must be repeated at the token endpoint.
        verifier, challenge = pkce_pair()
        params = authorize_params(challenge, redirect_uri="http://127.0.0.1:18080/other-callback")
        form = browser.get("/authorize", params=params)
        done = browser.post(
            "/authorize",
            data={**hidden_fields(form.text), "username": "bob", "password": "hunter2"},
        )
        assert done.status_code == 302
        code = parse_qs(urlsplit(done.headers["location"]).query)["code"][0]
        mismatch = exchange(issuer, code, verifier)
        assert mismatch.json()["error"] == "invalid_grant"

        # A wrong client secret is invalid_client, and no tokens.
        wrong = httpx.post(
            f"{issuer}/token",
            data={"grant_type": "authorization_code", "code": "x", "code_verifier": verifier},
            auth=(CLIENT_ID, "nope"),
        )
        assert wrong.status_code == 401
        assert wrong.json()["error"] == "invalid_client"

        # Logout: an unregistered post_logout_redirect_uri is refused, not followed.
        out = browser.get(
            "/end_session", params={"post_logout_redirect_uri": "http://127.0.0.1:18080/evil"}
        )
        assert out.status_code == 400
        assert "location" not in out.headers
        # Without a target it is a plain "signed out" page, and a forged hint is refused.
        plain = browser.get("/end_session")
        assert plain.status_code == 200
        assert "signed out" in plain.text
        forged = browser.get("/end_session", params={"id_token_hint": "a.b.c"})
        assert forged.status_code == 400

    logouts = [e for e in provider.events() if e["endpoint"] == "end_session"]
    assert [(e["id_token_hint_valid"], e["ok"]) for e in logouts] == [
        (False, False),
        (False, True),
        (False, False),
    ]

"""OpenID Connect browser login (issue 17 item 5): real CLI, real controller, real Envoy
(its oauth2 filter), a real OpenID provider process (tests/oidc_provider.py, built from
Authlib's server components), requests driven by an HTTP client following the redirects as a
browser would."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from controlplane.demo.echo import EchoServer
from controlplane.envoy_launcher import free_port

from .harness import Cli, Controller, wait_until
from .test_console import chromium

pytestmark = pytest.mark.e2e

CLIENT_ID = "gateway"
CLIENT_SECRET = "s3cret-for-the-gateway"
ROOT = Path(__file__).resolve().parents[2]
TOKEN_TTL = 6  # seconds: short, so the refresh is seen within the test


@dataclass
class Provider:
    port: int
    proc: subprocess.Popen[str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def events(self, endpoint: str | None = None) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = httpx.get(f"{self.url}/_events").json()
        return [e for e in found if endpoint is None or e["endpoint"] == endpoint]


@pytest.fixture
def provider(tmp_path: Path, gateway_port: int) -> Iterator[Provider]:
    port = free_port()
    base = f"http://127.0.0.1:{gateway_port}"
    log = open(tmp_path / "provider.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "tests.oidc_provider", "--port", str(port),
            "--client-id", CLIENT_ID, "--client-secret", CLIENT_SECRET,
            "--redirect-uri", f"{base}/oauth2/callback",
            "--post-logout-redirect-uri", f"{base}/",
            "--access-token-ttl", str(TOKEN_TTL),
        ],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True,
    )  # fmt: skip
    log.close()
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("ready"), line
    yield Provider(port, proc)
    proc.terminate()
    proc.wait(timeout=10)


def _setup(cli: Cli, tmp_path: Path, provider: Provider, gateway_port: int, echo: int) -> None:
    secret = tmp_path / "client-secret"
    secret.write_text(CLIENT_SECRET)
    cli.run(
        "oidc-provider", "add", "corp",
        "--issuer", provider.url,
        "--authorization-endpoint", f"{provider.url}/authorize",
        "--token-endpoint", f"{provider.url}/token",
        "--end-session-endpoint", f"{provider.url}/end_session",
        "--client-id", CLIENT_ID, "--client-secret-file", str(secret),
        "--redirect-origin", f"http://127.0.0.1:{gateway_port}",
    )  # fmt: skip
    cli.add_gateway("public", gateway_port)
    cli.run("cluster", "add", "app", "--endpoint", f"127.0.0.1:{echo}")
    cli.add_route("app", "public", "/app/", "app", "--auth-oidc", "corp")
    cli.add_route("open", "public", "/", "app")  # also where a logout lands


@pytest.fixture
def site(
    cli: Cli, controller: Controller, envoy_factory: Any, tmp_path: Path,
    provider: Provider, gateway_port: int,
) -> Iterator[tuple[str, EchoServer]]:  # fmt: skip
    """A gateway whose /app/ routes log in with the provider, /: open; its URL and backend."""
    echo = EchoServer("app").start()
    try:
        _setup(cli, tmp_path, provider, gateway_port, echo.port)
        envoy_factory("public")
        base = f"http://127.0.0.1:{gateway_port}"
        wait_until(lambda: httpx.get(f"{base}/open/x").status_code == 200, 30, 0.1)
        yield base, echo
    finally:
        echo.stop()


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return data


class Browser:
    """Follows redirects hop by hop and keeps cookies as a browser on this machine does:
    every server here is 127.0.0.1 (cookies do not depend on the port), a loopback origin
    counts as secure, so ``Secure`` cookies (Envoy sets only those) are sent over plain
    http, as Chromium sends them to http://127.0.0.1 (Python's cookie jar would not), and a
    cookie is dropped when its Max-Age runs out."""

    def __init__(self) -> None:
        self.client = httpx.Client(follow_redirects=False, timeout=20)
        self.cookies: dict[str, tuple[str, float]] = {}

    def _keep(self, response: httpx.Response) -> None:
        for line in response.headers.get_list("set-cookie"):
            pair, _, attributes = line.partition(";")
            name, _, value = pair.strip().partition("=")
            flags = [a.strip().lower() for a in attributes.split(";")]
            ages = [int(f[len("max-age=") :]) for f in flags if f.startswith("max-age=")]
            until = time.monotonic() + ages[0] if ages else float("inf")
            deleted = any(f.startswith("expires=") and "1970" in f for f in flags)
            if deleted or (ages and ages[0] <= 0):
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = (value, until)

    def jar(self) -> dict[str, str]:
        now = time.monotonic()
        return {k: v for k, (v, until) in self.cookies.items() if until > now}

    def _headers(self) -> dict[str, str]:
        jar = self.jar()
        return {"cookie": "; ".join(f"{k}={v}" for k, v in jar.items())} if jar else {}

    def get(self, url: str) -> httpx.Response:
        response = self.client.get(url, headers=self._headers())
        self._keep(response)
        return response

    def post(self, url: str, data: dict[str, str]) -> httpx.Response:
        response = self.client.post(url, data=data, headers=self._headers())
        self._keep(response)
        return response

    def to_provider(self, url: str, provider: Provider) -> str:
        first = self.get(url)
        assert first.status_code == 302, (first.status_code, first.text)
        location = first.headers["location"]
        assert location.startswith(f"{provider.url}/authorize?"), location
        return str(location)

    def log_in_at_provider(self, to_provider: str, provider: Provider) -> str:
        """The provider's login form, filled in; the callback URL it redirects to."""
        form = self.get(to_provider)
        assert form.status_code == 200 and 'name="password"' in form.text, form.status_code
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(to_provider).query))
        back = self.post(
            f"{provider.url}/authorize",
            data={**query, "username": "alice", "password": "password"},
        )
        assert back.status_code == 302, (back.status_code, back.text)
        return str(back.headers["location"])


def _echoed(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, (response.status_code, response.text[:300])
    data: dict[str, Any] = response.json()
    return data


def _bearer(echoed: dict[str, Any]) -> str:
    value = echoed["headers"]["authorization"]
    assert value.startswith("Bearer ")
    return str(value[len("Bearer ") :])


def test_login_forwards_the_token_refreshes_and_logs_out(
    site: tuple[str, EchoServer], provider: Provider
) -> None:
    base, echo = site
    opened = echo.hits

    # an unauthenticated browser is sent to the provider: code flow with PKCE (S256)
    browser = Browser()
    to_provider = browser.to_provider(f"{base}/app/page?q=1", provider)
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(to_provider).query))
    assert query["response_type"] == "code" and query["client_id"] == CLIENT_ID
    assert query["code_challenge_method"] == "S256" and query["code_challenge"]
    assert "openid" in query["scope"].split()
    assert query["redirect_uri"] == f"{base}/oauth2/callback"
    assert echo.hits == opened  # the backend saw nothing

    # completing the flow: Envoy exchanges the code (with the verifier), sets the
    # session and sends the browser back where it was going
    callback = browser.log_in_at_provider(to_provider, provider)
    before_callback = dict(browser.jar())  # nonce and verifier: for the replay below
    done = browser.get(callback)
    assert done.status_code == 302 and done.headers["location"] == f"{base}/app/page?q=1"
    [exchange] = provider.events("token")
    assert exchange["grant_type"] == "authorization_code" and exchange["ok"]
    assert exchange["code_verifier_present"]
    echoed = _echoed(browser.get(done.headers["location"]))
    access = _bearer(echoed)
    claims = _claims(access)
    assert claims["sub"] == "alice" and claims["aud"] == CLIENT_ID
    assert claims["iss"] == provider.url
    assert echoed["path"] == "/app/page?q=1"
    # and the ID token, decrypted, in the request's cookies
    sent = dict(part.strip().partition("=")[::2] for part in echoed["headers"]["cookie"].split(";"))
    identity = _claims(sent["IdToken"])
    assert identity["sub"] == "alice" and identity["aud"] == CLIENT_ID
    assert identity["iss"] == provider.url

    # the session cookies are bounded and hold the tokens encrypted, not in clear
    jar = browser.jar()
    assert {"BearerToken", "OauthHMAC", "OauthExpires", "RefreshToken"} <= set(jar)
    assert all(len(f"{k}={v}") < 4096 for k, v in jar.items())
    assert sum(len(f"{k}={v}") for k, v in jar.items()) < 8192
    assert access not in jar["BearerToken"] and access.split(".")[1] not in str(jar)

    # a tampered cookie is refused: back to the provider, the backend sees nothing
    hits = echo.hits
    for name in ("BearerToken", "OauthHMAC", "OauthExpires"):
        forged = Browser()
        forged.cookies = {k: (v, float("inf")) for k, v in jar.items() if k != "RefreshToken"}
        value = jar[name]
        flipped = value[:-2] + ("A" if value[-2] != "A" else "B") + value[-1]
        forged.cookies[name] = (flipped, float("inf"))
        answer = forged.get(f"{base}/app/page")
        assert answer.status_code == 302, (name, answer.status_code)
        assert answer.headers["location"].startswith(f"{provider.url}/authorize?")
    assert echo.hits == hits

    # the session as copied now (without its refresh token), replayed once expired
    copied = {k: v for k, v in jar.items() if k != "RefreshToken"}

    # after expiry the refresh token renews the session: a new access token reaches
    # the backend without another login
    time.sleep(TOKEN_TTL + 1)
    renewed = browser.get(f"{base}/app/page?again=1")
    if renewed.status_code == 302 and renewed.headers["location"].startswith(base):
        renewed = browser.get(renewed.headers["location"])  # a filter's own hop
    fresh = _bearer(_echoed(renewed))
    assert fresh != access and _claims(fresh)["sub"] == "alice"
    assert _claims(fresh)["jti"] != claims["jti"]
    grants = [e["grant_type"] for e in provider.events("token") if e["ok"]]
    assert grants == ["authorization_code", "refresh_token"]
    assert not [e for e in provider.events("authorize") if e.get("outcome") == "redirect"][1:]

    stale = Browser()
    stale.cookies = {k: (v, float("inf")) for k, v in copied.items()}
    refused = stale.get(f"{base}/app/page")
    assert refused.status_code == 302 and "/authorize?" in refused.headers["location"]

    # a replayed callback (same code and state, the flow's own cookies) is refused:
    # the provider takes a code once
    hits = echo.hits
    replay = Browser()
    replay.cookies = {k: (v, float("inf")) for k, v in before_callback.items()}
    replayed = replay.get(callback)
    assert replayed.status_code == 401, replayed.status_code
    assert not any(k == "BearerToken" for k in replay.jar())
    assert [e["ok"] for e in provider.events("token")] == [True, True, False]
    assert echo.hits == hits

    # logout: the session is cleared and the provider's session ended too
    out = browser.get(f"{base}/oauth2/logout")
    assert out.status_code == 302, out.status_code
    assert not {"BearerToken", "OauthHMAC", "RefreshToken"} & set(browser.jar())
    end = out.headers["location"]
    assert end.startswith(f"{provider.url}/end_session"), end
    ended = browser.get(end)
    [logout] = provider.events("end_session")
    assert logout["id_token_hint_valid"], logout
    assert ended.status_code in (200, 302)
    again = browser.to_provider(f"{base}/app/page", provider)
    form = browser.get(again)
    assert form.status_code == 200 and 'name="password"' in form.text  # log in again
    assert echo.hits == hits  # nothing reached the backend since the refresh


def test_a_real_browser_logs_in_and_out(site: tuple[str, EchoServer], provider: Provider) -> None:
    """The same login in Chromium: the redirects, the provider's form, the cookies as a
    browser keeps them (Secure cookies on a loopback origin), the logout."""
    path = chromium()
    from playwright.sync_api import sync_playwright

    base, _ = site
    with sync_playwright() as p:
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        browser = p.chromium.launch(executable_path=path, headless=True, args=args)
        try:
            page = browser.new_context().new_page()
            page.goto(f"{base}/app/welcome")
            assert page.url.startswith(f"{provider.url}/authorize?")  # the login form
            page.fill("#username", "alice")
            page.fill("#password", "password")
            with page.expect_navigation(url=f"{base}/app/welcome"):
                page.click("#submit")
            echoed = json.loads(page.inner_text("body"))
            assert echoed["path"] == "/app/welcome"
            token = echoed["headers"]["authorization"].removeprefix("Bearer ")
            assert _claims(token)["sub"] == "alice"
            names = {c["name"] for c in page.context.cookies(base)}
            assert {"BearerToken", "OauthHMAC", "RefreshToken"} <= names
            page.goto(f"{base}/oauth2/logout")
            assert provider.events("end_session")
            names = {c["name"] for c in page.context.cookies(base)}
            assert not {"BearerToken", "OauthHMAC", "RefreshToken"} & names
            page.goto(f"{base}/app/welcome")
            assert page.url.startswith(f"{provider.url}/authorize?")
            assert page.locator("#password").count() == 1  # the provider asks again
        finally:
            browser.close()

"""The console's session rules, in-process: cookie flags, CSRF, origin, revocation."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from controlplane.api.app import create_app
from controlplane.store import Store
from controlplane.store.tokens import add_token, revoke_token


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(str(tmp_path / "g.db"), create=True)


def _login(client: TestClient, token: str) -> dict:
    r = client.post("/ui/session", json={"token": token})
    assert r.status_code == 200, r.text
    return r.json()


def test_cookie_is_secure_over_tls_and_never_holds_the_token(store: Store) -> None:
    token = add_token(store, "ops", "admin", ())
    client = TestClient(create_app(store), base_url="https://testserver")
    r = client.post("/ui/session", json={"token": token})
    assert r.status_code == 200, r.text
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("gw_console=")
    for flag in ("HttpOnly", "Secure", "SameSite=strict", "Path=/"):
        assert flag.lower() in cookie.lower(), cookie
    assert token not in cookie and token not in r.text
    plain = TestClient(create_app(store))
    r = plain.post("/ui/session", json={"token": token})
    assert "secure" not in r.headers["set-cookie"].lower()


def test_writes_need_the_csrf_token_and_the_same_origin(store: Store) -> None:
    token = add_token(store, "ops", "admin", ())
    client = TestClient(create_app(store))
    me = _login(client, token)
    body = {"name": "c1", "endpoints": ["127.0.0.1:9"]}
    assert client.get("/v1/clusters").status_code == 200  # reads need no CSRF token
    r = client.post("/v1/clusters", json=body)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", r.text
    r = client.post("/v1/clusters", json=body, headers={"X-CSRF-Token": "x" + me["csrf"]})
    assert r.status_code == 403
    r = client.post(
        "/v1/clusters",
        json=body,
        headers={"X-CSRF-Token": me["csrf"], "Origin": "http://evil.example"},
    )
    assert r.status_code == 403
    assert store.revision() == 0
    r = client.post("/v1/clusters", json=body, headers={"X-CSRF-Token": me["csrf"]})
    assert r.status_code == 201, r.text
    # logging in from another origin, or as a form, is refused
    other = TestClient(create_app(store))
    r = other.post("/ui/session", json={"token": token}, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and "set-cookie" not in r.headers
    r = other.post("/ui/session", data={"token": token})
    assert r.status_code == 401 and "set-cookie" not in r.headers


def test_revoked_token_ends_the_session_and_logout_needs_csrf(store: Store) -> None:
    add_token(store, "ops", "admin", ())
    token = add_token(store, "temp", "editor", ())
    client = TestClient(create_app(store))
    me = _login(client, token)
    assert me["role"] == "editor" and me["name"] == "temp"
    assert client.get("/v1/revision").status_code == 200
    assert client.delete("/ui/session").status_code == 403  # no CSRF token: not logged out
    assert client.get("/ui/session").status_code == 200
    revoke_token(store, "temp")
    r = client.get("/v1/revision")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert client.get("/ui/session").status_code == 401


def test_pages_carry_a_strict_content_security_policy(store: Store) -> None:
    client = TestClient(create_app(store))
    for path in ("/ui/", "/ui/login", "/ui/static/console.js"):
        r = client.get(path)
        assert r.status_code == 200, path
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert r.headers["x-content-type-options"] == "nosniff"
    assert client.get("/ui/static/../web.py").status_code == 404
    assert client.get("/ui/static/session.py").status_code == 404
    assert "/ui" not in str(client.get("/openapi.json").json()["paths"])


def test_expired_token_and_idle_session_end_the_session(store: Store) -> None:
    import time

    from sqlalchemy import update

    from controlplane.console import Sessions
    from controlplane.store.tables import ApiToken

    token = add_token(store, "soon", "viewer", ())
    app = create_app(store)
    client = TestClient(app)
    _login(client, token)
    assert client.get("/v1/revision").status_code == 200
    with store._writer.begin() as conn:
        conn.execute(
            update(ApiToken).where(ApiToken.name == "soon").values(expires_at=time.time() - 1)
        )
    assert client.get("/v1/revision").status_code == 401
    assert client.get("/ui/session").status_code == 401  # the session is gone too

    fresh = add_token(store, "fresh", "viewer", ())
    app.state.sessions = Sessions(idle=0.05)
    _login(client, fresh)
    assert client.get("/v1/revision").status_code == 200
    time.sleep(0.1)
    r = client.get("/v1/revision")
    assert r.status_code == 401 and "log in again" in r.json()["error"]["message"]


def test_a_console_session_never_reads_secrets(store: Store) -> None:
    token = add_token(store, "ops", "admin", ())
    client = TestClient(create_app(store))
    _login(client, token)
    client.post(
        "/v1/gateways",
        json={"name": "public", "port": 18080, "address": "127.0.0.1"},
        headers={"X-CSRF-Token": client.get("/ui/session").json()["csrf"]},
    )
    assert client.get("/v1/export").status_code == 200
    for path in ("/v1/export?secrets=true", "/v1/gateways/public/render?show_secrets=1"):
        r = client.get(path)
        assert r.status_code == 403 and "does not read secrets" in r.text, path
    bearer = TestClient(create_app(store), headers={"Authorization": f"Bearer {token}"})
    assert bearer.get("/v1/export?secrets=true").status_code == 200  # the CLI's way


def test_cookie_is_secure_on_a_real_tls_admin_port(store: Store, tmp_path: Path) -> None:
    """uvicorn with the admin TLS certificate: the login answer's cookie is Secure."""
    import asyncio
    import ssl

    import httpx

    from controlplane import pki
    from controlplane.api.server import HttpService

    pki.init_ca(tmp_path / "pki", ["127.0.0.1"])
    folder = tmp_path / "pki"
    token = add_token(store, "ops", "admin")

    async def main() -> None:
        service = HttpService(
            create_app(store),
            "127.0.0.1:0",
            tls_cert=str(folder / pki.SERVER_CERT),
            tls_key=str(folder / pki.SERVER_KEY),
        )
        await service.start()
        try:
            trust = ssl.create_default_context(cafile=str(folder / pki.CA_CERT))
            url = f"https://127.0.0.1:{service.port}"
            async with httpx.AsyncClient(verify=trust, base_url=url) as client:
                r = await client.post("/ui/session", json={"token": token})
                assert r.status_code == 200, r.text
                cookie = r.headers["set-cookie"].lower()
                assert "secure" in cookie and "httponly" in cookie and "samesite=strict" in cookie
                assert (await client.get("/v1/revision")).status_code == 200
        finally:
            await service.close()

    asyncio.run(main())


def _rollups(db: str, minute: int) -> None:
    """One minute of acme's requests on route metered, one cell per rollup class."""
    from controlplane.analytics.rollup import Rollups, RollupWriter

    cells = Rollups()
    for klass, count, latency_ms in (
        ("2xx", 10, 120.0),  # admitted
        ("4xx", 1, 80.0),  # a backend's own 4xx: admitted
        ("4xx:t", 5, 0.05),  # the gateway's 429: throttled
        ("4xx:u", 2, 0.05),  # the gateway's 401: unauthenticated
        ("4xx:r", 1, 0.05),  # the gateway's 404: refused
        ("5xx", 3, 200.0),  # upstream errors
    ):
        for _ in range(count):
            cells.add((minute, "public", "metered", "acme", klass), 100, 200, latency_ms)
    writer = RollupWriter(db, "sink-1")
    try:
        writer.write(cells.take())
    finally:
        writer.close()


def test_usage_keeps_the_gateways_429_and_401_apart_with_usage_classes(
    store: Store, tmp_path: Path
) -> None:
    import csv
    import io
    import time
    from datetime import UTC, datetime

    from controlplane.console.usage import series_of

    assert series_of("4xx:t") == ("429", "throttled")
    assert series_of("4xx:u") == ("401/403", "unauthenticated")
    assert series_of("4xx:r") == ("4xx", "refused")
    assert series_of("4xx") == ("4xx", "admitted")  # rows written before usage classes
    assert series_of("5xx") == ("5xx", "upstream_errors")
    assert series_of("none") == ("none", "refused")

    minute = int(time.time() // 60)
    _rollups(str(tmp_path / "g.db"), minute)
    token = add_token(store, "ops", "admin", ())
    client = TestClient(create_app(store), headers={"Authorization": f"Bearer {token}"})
    r = client.get("/ui/usage.json", params={"range": "15m", "consumer": "acme"})
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["classes"] == ["2xx", "4xx", "429", "401/403", "5xx"]
    at = datetime.fromtimestamp(minute * 60, UTC).isoformat()
    (point,) = [p for p in data["points"] if p["requests"]]
    assert point["time"] == at
    assert point["requests"] == 22
    assert point["status"] == {"2xx": 10, "4xx": 2, "429": 5, "401/403": 2, "5xx": 3}
    assert point["usage"] == {
        "admitted": 11,
        "throttled": 5,
        "unauthenticated": 2,
        "upstream_errors": 3,
        "refused": 1,
    }
    # latency of the requests that reached the backend: the 0.05 ms refusals do not count
    assert point["p50_ms"] is not None and point["p50_ms"] >= 100, point

    r = client.get("/ui/usage.csv", params={"range": "15m", "consumer": "acme"})
    assert r.status_code == 200, r.text
    reader = csv.DictReader(io.StringIO(r.text))
    assert reader.fieldnames == [
        "time_utc",
        "requests",
        "admitted",
        "throttled",
        "unauthenticated",
        "upstream_errors",
        "refused",
        "2xx",
        "3xx",
        "4xx",
        "429",
        "401/403",
        "5xx",
        "1xx",
        "none",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "bytes_in",
        "bytes_out",
    ]
    (row,) = [x for x in reader if x["time_utc"] == at]
    assert (row["admitted"], row["throttled"], row["429"], row["4xx"], row["3xx"]) == (
        "11",
        "5",
        "5",
        "2",
        "0",
    )
    for chart, names in (("requests", ("2xx", "429", "401/403")), ("usage", ("throttled",))):
        r = client.get("/ui/usage.svg", params={"range": "15m", "chart": chart})
        assert r.status_code == 200, r.text
        for name in names:
            assert f">{name}</text>" in r.text, (chart, name)
    assert ">refused</text>" in client.get("/ui/usage.svg?chart=usage&range=1h").text

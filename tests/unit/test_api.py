"""The admin API in-process (FastAPI's TestClient) over a real SQLite store."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from controlplane.api.app import DEFAULT_MAX_BODY, create_app
from controlplane.store import Store
from controlplane.store.tokens import add_token, revoke_token


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(str(tmp_path / "gw.db"), create=True)


@pytest.fixture
def api(store: Store) -> TestClient:
    return TestClient(create_app(store), raise_server_exceptions=False)


def _auth(
    store: Store, role: str = "admin", gateways: tuple[str, ...] = (), name: str = ""
) -> dict:
    token = add_token(store, name or f"{role}-{'-'.join(gateways) or 'all'}", role, gateways)
    return {"Authorization": f"Bearer {token}"}


def _seed(api: TestClient, h: dict) -> None:
    for path, body in (
        ("/v1/gateways", {"name": "a", "port": 18080}),
        ("/v1/gateways", {"name": "b", "port": 18090}),
        ("/v1/clusters", {"name": "app", "endpoints": ["127.0.0.1:9000"]}),
        ("/v1/routes", {"name": "ra", "gateways": ["a"], "cluster": "app"}),
        ("/v1/routes", {"name": "rb", "gateways": ["b"], "cluster": "app"}),
    ):
        r = api.post(path, json=body, headers=h)
        assert r.status_code == 201, r.text


def _error(r: Any, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert "Traceback" not in r.text
    return body["error"]


def test_crud_round_trip_with_etags(api: TestClient, store: Store) -> None:
    h = _auth(store)
    _seed(api, h)
    r = api.get("/v1/routes/ra", headers=h)
    assert r.status_code == 200
    assert r.json()["spec"]["cluster"] == "app"
    assert r.headers["ETag"] == f'"{store.revision()}"'
    listed = api.get("/v1/routes", headers=h).json()
    assert [i["name"] for i in listed["items"]] == ["ra", "rb"]
    # PATCH is a JSON merge patch: null removes, other keys merge
    rev = store.revision()
    r = api.patch("/v1/clusters/app", json={"connect_timeout": "2s"}, headers=h)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "revision": rev + 1,
        "changes": [{"op": "update", "kind": "cluster", "name": "app"}],
        "dry_run": False,
    }
    assert store.get("cluster", "app").spec()["connect_timeout"] == "2s"
    r = api.patch("/v1/clusters/app", json={"connect_timeout": None}, headers=h)
    assert "connect_timeout" not in store.get("cluster", "app").spec()
    r = api.put(
        "/v1/routes/ra",
        json={"name": "ra", "gateways": ["a"], "cluster": "app", "timeout": "3s"},
        headers=h,
    )
    assert r.status_code == 200, r.text
    assert store.get("route", "ra").spec()["timeout"] == "3s"
    assert api.delete("/v1/routes/rb", headers=h).status_code == 200
    _error(api.get("/v1/routes/rb", headers=h), 404, "not_found")
    # still referenced: conflict, nothing written
    rev = store.revision()
    _error(api.delete("/v1/clusters/app", headers=h), 409, "conflict")
    assert store.revision() == rev


def test_auth_roles_and_scopes(api: TestClient, store: Store) -> None:
    admin = _auth(store)
    _seed(api, admin)
    _error(api.get("/v1/routes"), 401, "unauthorized")
    _error(api.get("/v1/routes", headers={"Authorization": "Bearer gw_nope"}), 401, "unauthorized")
    viewer = _auth(store, "viewer")
    assert api.get("/v1/routes", headers=viewer).status_code == 200
    rev = store.revision()
    _error(api.patch("/v1/routes/ra", json={"timeout": "1s"}, headers=viewer), 403, "forbidden")
    scoped = _auth(store, "editor", ("a",))
    # its own gateway's route: allowed; the other gateway's: 403 naming the object
    r = api.patch("/v1/routes/ra", json={"timeout": "1s"}, headers=scoped)
    assert r.status_code == 200, r.text
    rev = store.revision()
    err = _error(
        api.patch("/v1/routes/rb", json={"timeout": "1s"}, headers=scoped), 403, "forbidden"
    )
    assert "route 'rb'" in err["message"]
    # moving its route into gateway b (new value outside): 403
    _error(api.patch("/v1/routes/ra", json={"gateways": ["b"]}, headers=scoped), 403, "forbidden")
    _error(api.delete("/v1/routes/rb", headers=scoped), 403, "forbidden")
    _error(
        api.patch("/v1/clusters/app", json={"connect_timeout": "2s"}, headers=scoped),
        403,
        "forbidden",
    )
    doc = {"routes": [{"name": "rb", "gateways": ["b"], "cluster": "app", "timeout": "9s"}]}
    err = _error(api.post("/v1/apply", json=doc, headers=scoped), 403, "forbidden")
    assert "route 'rb'" in err["message"]
    assert store.revision() == rev
    # reads: only its gateways and their routes
    names = [i["name"] for i in api.get("/v1/routes", headers=scoped).json()["items"]]
    assert names == ["ra"]
    _error(api.get("/v1/routes/rb", headers=scoped), 404, "not_found")
    # tokens: admin only; revoked token: 401 on its next call
    _error(api.get("/v1/tokens", headers=viewer), 403, "forbidden")
    revoke_token(store, "viewer-all")
    _error(api.get("/v1/routes", headers=viewer), 401, "unauthorized")


def test_if_match(api: TestClient, store: Store) -> None:
    h = _auth(store)
    _seed(api, h)
    rev = store.revision()
    stale = {**h, "If-Match": f'"{rev - 1}"'}
    _error(api.patch("/v1/routes/ra", json={"timeout": "1s"}, headers=stale), 409, "conflict")
    assert store.revision() == rev
    ok = api.patch("/v1/routes/ra", json={"timeout": "1s"}, headers={**h, "If-Match": f'"{rev}"'})
    assert ok.status_code == 200 and ok.headers["ETag"] == f'"{rev + 1}"'
    again = api.patch(
        "/v1/routes/ra", json={"timeout": "2s"}, headers={**h, "If-Match": f'"{rev}"'}
    )
    _error(again, 409, "conflict")
    assert store.get("route", "ra").spec()["timeout"] == "1s"


BAD = [
    ("malformed JSON", "post", "/v1/routes", b'{"name": "x",', None),
    ("JSON nested too deep", "post", "/v1/apply", b"[" * 100_000, None),
    ("huge number", "post", "/v1/gateways", b'{"name": "g", "port": ' + b"9" * 5000 + b"}", None),
    ("not an object", "post", "/v1/clusters", b'"text"', None),
    (
        "unknown field",
        "post",
        "/v1/clusters",
        {"name": "c", "endpoints": ["h:1"], "bogus": 1},
        "bogus",
    ),
    ("wrong type", "post", "/v1/gateways", {"name": "g", "port": "eighty"}, "port"),
    (
        "bad nested",
        "post",
        "/v1/routes",
        {"name": "r", "gateways": ["a"], "cluster": "app", "retry": {"attempts": "x"}},
        "retry",
    ),
    ("unknown kind", "get", "/v1/widgets", None, None),
    ("unknown kind write", "post", "/v1/widgets", {"name": "x"}, None),
    ("traversal", "get", "/v1/routes/..%2F..%2Fetc", None, None),
    ("control char", "patch", "/v1/routes/a%00b", {"timeout": "1s"}, "name"),
    ("unicode name", "post", "/v1/clusters", {"name": "caf\u00e9", "endpoints": ["h:1"]}, "name"),
    ("unicode path", "delete", "/v1/routes/caf%C3%A9", None, "name"),
    (
        "bad name in body",
        "post",
        "/v1/routes",
        {"name": "../x", "gateways": ["a"], "cluster": "app"},
        "name",
    ),
    ("array body", "post", "/v1/apply", [1, 2], None),
    ("bad If-Match", "patch", "/v1/routes/ra", {"timeout": "1s"}, "If-Match"),
    ("bad wait", "patch", "/v1/routes/ra?wait=forever", {"timeout": "1s"}, "wait"),
    (
        "name changed by PUT",
        "put",
        "/v1/routes/ra",
        {"name": "rz", "gateways": ["a"], "cluster": "app"},
        "name",
    ),
    ("name changed by PATCH", "patch", "/v1/routes/ra", {"name": "rz"}, "name"),
    ("unknown top-level key", "post", "/v1/apply", {"widgets": []}, "widgets"),
    (
        "reference missing",
        "post",
        "/v1/routes",
        {"name": "r2", "gateways": ["a"], "cluster": "nope"},
        None,
    ),
]


@pytest.mark.parametrize(("case", "method", "path", "body", "field"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_4xx_json_and_writes_nothing(
    api: TestClient, store: Store, case: str, method: str, path: str, body: Any, field: str | None
) -> None:
    h = _auth(store)
    _seed(api, h)
    if case == "bad If-Match":
        h = {**h, "If-Match": "yesterday"}
    before = (store.revision(), json.dumps(store.bundle().to_data(), sort_keys=True))
    kwargs: dict[str, Any] = {"headers": h}
    if isinstance(body, bytes):
        kwargs["content"] = body
        kwargs["headers"] = {**h, "Content-Type": "application/json"}
    elif body is not None:
        kwargs["json"] = body
    r = api.request(method.upper(), path, **kwargs)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    err = r.json()["error"]
    assert err["message"] and "\n" not in err["message"]
    if field is not None:
        assert err["field"] is not None and err["field"].startswith(field), err
    assert (store.revision(), json.dumps(store.bundle().to_data(), sort_keys=True)) == before


def test_oversize_body_is_413(store: Store) -> None:
    api = TestClient(create_app(store, max_body=1000), raise_server_exceptions=False)
    h = _auth(store)
    rev = store.revision()
    doc = {"clusters": [{"name": f"c{i}", "endpoints": ["h:1"]} for i in range(100)]}
    _error(api.post("/v1/apply", json=doc, headers=h), 413, "too_large")
    assert store.revision() == rev


def test_10000_route_apply_fits_the_default_limit(store: Store) -> None:
    """The default body limit is sized from a 10,000-route document (with room to spare)."""
    doc = {
        "gateways": [{"name": "g", "port": 18080}],
        "clusters": [{"name": "c", "endpoints": ["10.0.0.1:8080"]}],
        "routes": [
            {
                "name": f"route-{i:05d}",
                "gateways": ["g"],
                "match": {"path": f"/service-{i:05d}/v1/items", "methods": ["GET", "POST"]},
                "cluster": "c",
                "timeout": "5s",
            }
            for i in range(10_000)
        ],
    }
    size = len(json.dumps(doc))
    assert 1_000_000 < size < DEFAULT_MAX_BODY / 4, size


def test_apply_plan_diff_export_keys_tokens(api: TestClient, store: Store) -> None:
    h = _auth(store)
    _seed(api, h)
    doc = {"clusters": [{"name": "other", "endpoints": ["127.0.0.1:9001"]}]}
    rev = store.revision()
    plan = api.post("/v1/plan", json=doc, headers=h).json()
    assert plan == {
        "revision": rev,
        "changes": [{"op": "create", "kind": "cluster", "name": "other"}],
        "dry_run": True,
    }
    assert store.revision() == rev
    diff = api.post("/v1/diff", json=doc, headers=h).json()
    assert diff["changes"][0]["after"]["endpoints"] == ["127.0.0.1:9001"]
    applied = api.post("/v1/apply", json=doc, headers=h).json()
    assert applied["revision"] == rev + 1 and not applied["dry_run"]
    exported = api.get("/v1/export", headers=h).json()
    assert {c["name"] for c in exported["clusters"]} == {"app", "other"}
    # keys: shown once, listed by prefix
    api.post("/v1/consumers", json={"name": "acme"}, headers=h)
    added = api.post("/v1/consumers/acme/keys", json={"expires": "30d"}, headers=h)
    assert added.status_code == 201, added.text
    key = added.json()["key"]
    listed = api.get("/v1/consumers/acme/keys", headers=h).json()["items"]
    assert listed[0]["id"] == added.json()["id"] and key not in json.dumps(listed)
    assert api.get("/v1/api-keys", headers=h).json()["items"] == listed  # every consumer's
    # a key's owner by its id alone (the CLI's revoke), never the key itself
    owner = api.get(f"/v1/api-keys/{listed[0]['id']}", headers=h)
    assert owner.json() == {"id": listed[0]["id"], "consumer": "acme"} and key not in owner.text
    _error(api.get("/v1/api-keys/ak_000000000000", headers=h), 404, "not_found")
    _error(api.get("/v1/api-keys/not-a-key", headers=h), 400, "invalid")
    assert api.delete(f"/v1/consumers/acme/keys/{listed[0]['id']}", headers=h).status_code == 200
    [revoked] = api.get("/v1/consumers/acme/keys", headers=h).json()["items"]
    assert revoked["revoked"] is True and revoked["revoked_at"], revoked
    # tokens
    made = api.post("/v1/tokens", json={"name": "ci", "role": "viewer"}, headers=h)
    assert made.status_code == 201 and made.json()["token"].startswith("gw_")
    ci = {"Authorization": f"Bearer {made.json()['token']}"}
    assert api.get("/v1/revision", headers=ci).json()["revision"] == store.revision()
    assert "token" not in json.dumps(api.get("/v1/tokens", headers=h).json()["items"][0])
    assert api.delete("/v1/tokens/ci", headers=h).status_code == 200
    _error(api.get("/v1/revision", headers=ci), 401, "unauthorized")
    # status and events answer without a controller
    assert api.get("/v1/status", headers=h).json()["proxies"] == []
    assert any(e["kind"] == "change" for e in api.get("/v1/events", headers=h).json()["items"])
    # probes: no auth
    assert api.get("/healthz").status_code == 200
    assert api.get("/metrics").status_code == 200


def test_http_service_serves_in_the_callers_loop_and_stops(store: Store) -> None:
    """Bound before serving (port 0 -> the port it got), TCP_NODELAY-capable socket (asyncio
    sets it only for proto=TCP sockets; without it a two-part answer waits ~40 ms for the
    client's delayed ACK), and stopped within its grace."""
    import asyncio
    import socket

    import httpx

    from controlplane.api.server import HttpService

    async def main() -> None:
        service = HttpService(create_app(store), "127.0.0.1:0", grace=1)
        await service.start()
        assert service.port > 0
        listening = service._server.servers[0].sockets[0]
        assert listening.proto == socket.IPPROTO_TCP
        async with httpx.AsyncClient() as client:
            r = await client.get(f"http://127.0.0.1:{service.port}/healthz")
            assert r.json() == {"ok": True}
        await asyncio.wait_for(service.close(), 10)
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient() as client:
                await client.get(f"http://127.0.0.1:{service.port}/healthz")

    asyncio.run(main())


def test_certificates_never_return_private_keys(api: TestClient, store: Store) -> None:
    from tests.unit.test_tls import _cert

    h = _auth(store)
    cert = _cert("site", ["api.example.com"])
    r = api.post("/v1/certificates", json=cert, headers=h)
    assert r.status_code == 201, r.text
    private = cert["key"].strip().splitlines()[1]  # a line of the key's base64
    for path in ("/v1/certificates", "/v1/certificates/site", "/v1/export"):
        got = api.get(path, headers=h)
        assert got.status_code == 200 and private not in got.text, path
    assert "key" not in api.get("/v1/certificates/site", headers=h).json()["spec"]
    # only an admin asks for secrets, explicitly
    viewer = _auth(store, "viewer")
    _error(api.get("/v1/export?secrets=true", headers=viewer), 403, "forbidden")
    assert private in api.get("/v1/export?secrets=true", headers=h).text


def test_admin_address_beyond_loopback_needs_tls_or_insecure(tmp_path: Path) -> None:
    from controlplane.controller import Controller
    from controlplane.settings import Settings
    from controlplane.xds.mtls import UnsafeBind

    db = str(tmp_path / "c.db")
    Store(db, create=True).close()
    with pytest.raises(UnsafeBind, match="--admin-address"):
        Controller(Settings(db=db, admin_address="0.0.0.0:0", health_address=None))
    with pytest.raises(Exception, match="go together"):
        Controller(Settings(db=db, admin_address="127.0.0.1:0", admin_tls_cert="x.pem"))


def test_admin_api_over_tls_with_a_pki_certificate(store: Store, tmp_path: Path) -> None:
    import asyncio
    import ssl

    import httpx

    from controlplane import pki
    from controlplane.api.server import HttpService
    from controlplane.cli.client import Client
    from controlplane.errors import StoreError

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
            async with httpx.AsyncClient(verify=trust) as client:
                r = await client.get(
                    f"https://127.0.0.1:{service.port}/v1/revision",
                    headers={"Authorization": f"Bearer {token}"},
                )
                assert r.status_code == 200 and r.json()["revision"] == store.revision()
            async with httpx.AsyncClient() as plain:  # plaintext to a TLS port: no answer
                with pytest.raises(httpx.HTTPError):
                    await plain.get(f"http://127.0.0.1:{service.port}/healthz")
            # the CLI's own client: verified by the CA, kept alive across calls
            url = f"https://127.0.0.1:{service.port}"
            cli = Client(url, token, ca_file=str(folder / pki.CA_CERT))
            answers = await asyncio.to_thread(lambda: [cli.get("/v1/revision") for _ in "ab"])
            assert [a["revision"] for a in answers] == [store.revision()] * 2
            cli.close()
            stranger = Client(url, token)  # the system's CAs do not know this one
            with pytest.raises(StoreError, match="cannot verify the admin API's certificate"):
                await asyncio.to_thread(stranger.get, "/v1/revision")
        finally:
            await service.close()

    asyncio.run(main())


def test_analytics_over_the_api(api: TestClient, store: Store) -> None:
    h = _auth(store)
    _seed(api, h)
    r = api.get("/v1/analytics/summary?since=1h", headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["requests"] == 0
    assert api.get("/v1/analytics/top/routes?limit=5", headers=h).json() == []
    _error(api.get("/v1/analytics/summary?since=yesterday-ish", headers=h), 400, "invalid")
    _error(api.get("/v1/analytics/top/widgets", headers=h), 400, "invalid")
    scoped = _auth(store, "viewer", ("a",))
    _error(api.get("/v1/analytics/summary", headers=scoped), 403, "forbidden")
    assert api.get("/v1/analytics/summary?gateway=a", headers=scoped).status_code == 200


def test_secrets_in_documents_are_admin_only_and_exports_are_recorded(
    api: TestClient, store: Store
) -> None:
    admin = _auth(store)
    editor = _auth(store, "editor", name="deployer")
    _seed(api, admin)
    assert api.post("/v1/consumers", json={"name": "acme"}, headers=admin).status_code == 201
    created = api.post("/v1/consumers/acme/keys", json={}, headers=admin).json()
    _error(api.get("/v1/export?secrets=true", headers=editor), 403, "forbidden")
    assert not [e for e in store.events(None, 500) if e["kind"] == "export"]
    doc = api.get("/v1/export?secrets=true", headers=admin).json()
    assert [k["key"] for k in doc["api_keys"]] == [created["key"]]
    exports = [e for e in store.events(None, 500) if e["kind"] == "export"]
    assert [e["node"] for e in exports] == ["admin-all"]
    assert "api_keys" not in api.get("/v1/export", headers=admin).json()

    rev = store.revision()
    # a document with API keys: only with secrets=true, only by an admin; nothing written
    err = _error(api.post("/v1/apply", json=doc, headers=admin), 400, "invalid")
    assert err["field"] == "api_keys"
    _error(api.post("/v1/apply?secrets=true", json=doc, headers=editor), 403, "forbidden")
    assert store.revision() == rev
    r = api.post("/v1/apply?secrets=true", json=doc, headers=admin)
    assert r.status_code == 200 and r.json()["changes"] == [], r.text
    # the same document restores a key that is gone (a database without it)
    doc["api_keys"][0]["name"] = "ak_0123456789ab"
    r = api.post("/v1/apply?secrets=true", json=doc, headers=admin)
    assert r.json()["changes"] == [{"op": "create", "kind": "api_key", "name": "ak_0123456789ab"}]
    # diff compares the section, showing no secret
    doc["api_keys"][0]["expires_at"] = "2099-01-01T00:00:00Z"
    changes = api.post("/v1/diff", json=doc, headers=editor).json()["changes"]
    assert [(c["op"], c["name"]) for c in changes] == [("update", "ak_0123456789ab")]
    assert created["key"] not in json.dumps(changes)


def test_analytics_usage_and_chart(api: TestClient, store: Store) -> None:
    admin = _auth(store)
    _seed(api, admin)
    api.post("/v1/consumers", json={"name": "acme", "limits": [{"requests": 5, "per": "hour"}]},
             headers=admin)  # fmt: skip

    def this_hour() -> str:
        return datetime.fromtimestamp(time.time() // 3600 * 3600, UTC).isoformat()

    hour = ""
    while hour != this_hour():  # asked again if the hour turned during the call
        hour = this_hour()
        usage = api.get("/v1/analytics/usage?consumer=acme", headers=admin).json()
    assert usage["items"] == [
        {"consumer": "acme", "plan": None, "per": "hour", "limit": 5, "period_start": hour,
         "used": 0, "admitted": 0, "upstream_errors": 0, "throttled": 0,
         "gateway": None, "route": None, "resets_at": None,
         "text": "acme: 0 of 5 this hour"}
    ]  # fmt: skip
    # the seeded gateways have analytics off: nothing is counted, and the answer says so
    assert usage["warnings"] == [
        "analytics is off on every gateway: no request is counted "
        "(set analytics: {enabled: true} on the gateway)"
    ]
    # an export needs both ends of its range, in order
    err = _error(api.get("/v1/analytics/export?since=1h", headers=admin), 400, "invalid")
    assert err["field"] == "until" and err["message"].startswith("until: required")
    err = _error(api.get("/v1/analytics/export?since=1h&until=2h", headers=admin), 400, "invalid")
    assert err["message"].startswith("until: must be after since")
    export = api.get("/v1/analytics/export?since=2h&until=now", headers=admin).json()
    assert export["items"] == [] and export["columns"][:5] == [
        "hour", "gateway", "route", "consumer", "requests"
    ]  # fmt: skip
    _error(api.get("/v1/analytics/usage?consumer=nobody", headers=admin), 404, "not_found")
    scoped = _auth(store, "viewer", ("a",))
    _error(api.get("/v1/analytics/usage", headers=scoped), 403, "forbidden")
    chart = api.get("/v1/analytics/chart?since=10m&step=5m", headers=admin).json()
    assert set(chart) == {"points", "summary", "consumers", "routes"}
    assert 2 <= len(chart["points"]) <= 3 and chart["summary"]["requests"] == 0
    err = _error(api.get("/v1/analytics/chart?since=100d", headers=admin), 400, "invalid")
    assert err["field"] == "step"
    err = _error(api.get("/v1/analytics/chart?step=10s", headers=admin), 400, "invalid")
    assert err["field"] == "step"


def test_lists_come_from_the_controllers_memory_at_the_same_revision(store: Store) -> None:
    """With a ``listing`` (the controller's state), a list at its revision is served from
    memory; at any other revision (memory behind a commit) from the store."""
    seed_api = TestClient(create_app(store), raise_server_exceptions=False)
    h = _auth(store)
    _seed(seed_api, h)
    in_memory = store.list_objects("route")[:1]  # only "ra": tells the two sources apart
    asked: list[tuple[str, int]] = []
    memory_at = store.revision()

    def listing(kind: str, revision: int) -> list[Any] | None:
        asked.append((kind, revision))
        return in_memory if revision == memory_at else None

    api = TestClient(create_app(store, listing=listing), raise_server_exceptions=False)
    r = api.get("/v1/routes", headers=h)
    assert r.status_code == 200 and r.headers["ETag"] == f'"{store.revision()}"'
    assert [i["name"] for i in r.json()["items"]] == ["ra"]
    assert asked == [("route", store.revision())]
    scoped = _auth(store, "viewer", ("b",))  # scoped tokens filter the memory's list too
    assert api.get("/v1/routes", headers=scoped).json()["items"] == []
    behind = store.revision()
    store.create(store.get("route", "rb").model_copy(update={"name": "rc"}))
    assert store.revision() > behind
    r = api.get("/v1/routes", headers=h)  # memory is behind: the store answers
    assert [i["name"] for i in r.json()["items"]] == ["ra", "rb", "rc"]


def test_a_spec_listing_is_what_the_cli_prints_and_is_reused_per_revision(store: Store) -> None:
    """``?view=specs&pretty=true`` is byte for byte the local ``route list -o json``
    output, so the remote CLI passes it through; an unscoped caller's encoded listing is
    kept per revision, never given to a scoped caller, and replaced by a write."""
    from controlplane.cli.output import _json

    built: list[int] = []

    def listing(kind: str, revision: int) -> list[Any] | None:
        built.append(revision)
        return list(store.list_objects(kind)) if revision == store.revision() else None

    api = TestClient(create_app(store, listing=listing), raise_server_exceptions=False)
    h = _auth(store)
    _seed(api, h)
    local = (_json([o.spec() for o in store.list_objects("route")]) + "\n").encode()
    first = api.get("/v1/routes?view=specs&pretty=true", headers=h)
    assert first.status_code == 200 and first.content == local
    assert first.headers["ETag"] == f'"{store.revision()}"'
    again = api.get("/v1/routes?view=specs&pretty=true", headers=h)
    assert again.content == local and built == [store.revision()]  # the kept encoding
    envelope = api.get("/v1/routes", headers=h).json()  # another shape: its own encoding
    assert [i["spec"] for i in envelope["items"]] == json.loads(local)
    scoped = _auth(store, "viewer", ("b",))
    assert api.get("/v1/routes?view=specs", headers=scoped).json() == [
        s for s in json.loads(local) if "b" in s["gateways"]
    ]
    store.create(store.get("route", "rb").model_copy(update={"name": "rc"}))
    after = api.get("/v1/routes?view=specs&pretty=true", headers=h)
    assert [s["name"] for s in json.loads(after.content)] == ["ra", "rb", "rc"]
    assert after.headers["ETag"] == f'"{store.revision()}"'
    _error(api.get("/v1/routes?view=everything", headers=h), 400, "invalid")


def test_the_runner_publishes_a_listing_per_revision(tmp_path: Path) -> None:
    import asyncio

    from controlplane.runner import Runner
    from controlplane.xds.cache import SnapshotCache

    store = Store(str(tmp_path / "l.db"), create=True)
    api = TestClient(create_app(store), raise_server_exceptions=False)
    h = _auth(store)
    _seed(api, h)
    runner = Runner(store, SnapshotCache(), controller="t", xds_address="127.0.0.1:1")
    asyncio.run(runner.load())
    rev = store.revision()
    assert [o.name for o in runner.listed("route", rev) or []] == ["ra", "rb"]
    assert runner.listed("route", rev - 1) is None
    before = runner.listing
    assert before is not None
    store.create(store.get("route", "rb").model_copy(update={"name": "rc"}))
    asyncio.run(runner.poll())
    after = runner.listing
    assert after is not None and after[0] == store.revision()
    assert [o.name for o in runner.listed("route", store.revision()) or []] == ["ra", "rb", "rc"]
    assert after[1]["cluster"] is before[1]["cluster"]  # unchanged kinds are shared
    assert after[1]["route"] is not before[1]["route"]  # a changed kind is a new mapping
    assert len(before[1]["route"] or {}) == 2  # and the old one was never changed
    store.close()


def test_warm_up_builds_the_route_tables_before_the_first_request(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The controller sends its admin app one request for a path no route has before it
    serves (``warm_routes``): FastAPI's lazily built route tables are then built, so the
    first user's request builds none (it paid ~140 ms for it before), and nothing is
    written."""
    import asyncio

    import fastapi.routing

    from controlplane.api.server import warm_routes

    context = getattr(fastapi.routing, "_EffectiveRouteContext", None)
    if context is None:
        pytest.skip("this FastAPI builds its route tables up front")
    built: list[str] = []
    original = context.from_api_route.__func__

    def counting(cls: Any, *args: Any, **kwargs: Any) -> Any:
        built.append("route")
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(context, "from_api_route", classmethod(counting))
    app = create_app(store)
    revision = store.revision()
    assert asyncio.run(warm_routes(app)) == 404
    assert len(built) > 20  # every route of every router, once
    built.clear()
    h = _auth(store)
    client = TestClient(app)
    assert client.get("/v1/routes", headers=h).status_code == 200
    assert (
        client.post(
            "/v1/clusters", json={"name": "c", "endpoints": ["127.0.0.1:1"]}, headers=h
        ).status_code
        == 201
    )
    assert built == []
    assert store.revision() == revision + 1  # the warm-up wrote nothing; the POST did

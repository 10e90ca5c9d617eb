"""The history router (GET /v1/history, /v1/history/diff, /v1/audit; POST /v1/rollback)
served by the real admin API app, with real tokens of each role."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from controlplane.api.app import create_app
from controlplane.policy import Bundle, Cluster
from controlplane.store import Store
from controlplane.store.secrets import ENV_KEY, ENV_KEY_FILE
from controlplane.store.tokens import add_token

POLICY = """\
gateways:
  - {name: web, port: 8080}
  - {name: admin, port: 8081}
clusters:
  - {name: users, endpoints: ["10.0.0.1:80"]}
routes:
  - {name: users, gateway: web, match: {path_prefix: /users}, cluster: users}
  - {name: ops, gateway: admin, match: {path_prefix: /ops}, cluster: users}
"""


@pytest.fixture(autouse=True)
def _no_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_KEY, raising=False)
    monkeypatch.delenv(ENV_KEY_FILE, raising=False)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(str(tmp_path / "gateway.db"), create=True)
    yield s
    s.close()


class Api:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.app = create_app(store)
        self.client = TestClient(self.app)
        self.tokens: dict[tuple[str, str, tuple[str, ...]], str] = {}
        self.as_("admin", "admin")

    def as_(self, name: str, role: str, gateways: tuple[str, ...] = ()) -> Api:
        """Every following call carries a real token of this name, role and scope."""
        key = (name, role, tuple(gateways))
        if key not in self.tokens:  # token names are unique: a second role gets a suffix
            taken = any(k[0] == name for k in self.tokens)
            unique = f"{name}-{len(self.tokens)}" if taken else name
            self.tokens[key] = add_token(self.store, unique, role, gateways)
        self.client.headers["Authorization"] = f"Bearer {self.tokens[key]}"
        return self


@pytest.fixture
def api(store: Store) -> Api:
    return Api(store)


def _cluster(endpoint: str) -> Cluster:
    return Cluster.model_validate({"name": "users", "endpoints": [endpoint]})


def test_no_caller_is_401(store: Store) -> None:
    r = TestClient(create_app(store)).get("/v1/history")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"


def test_history_diff_audit(api: Api, store: Store) -> None:
    r1 = store.apply(Bundle.from_text(POLICY)).revision
    r2 = store.replace(_cluster("10.0.0.9:80"))
    r = api.client.get("/v1/history")
    assert r.status_code == 200 and r.headers["etag"] == f'"{r2}"'
    items = r.json()["items"]
    assert [i["revision"] for i in items] == [r2, r1]
    assert items[0]["changes"] == [{"op": "update", "kind": "cluster", "name": "users"}]
    r = api.client.get("/v1/history", params={"kind": "route", "limit": 1})
    assert [i["revision"] for i in r.json()["items"]] == [r1]
    d = api.client.get("/v1/history/diff", params={"from": r1, "to": r2}).json()
    assert d["changes"] == [
        {
            "op": "update",
            "kind": "cluster",
            "name": "users",
            "before": {"name": "users", "endpoints": ["10.0.0.1:80"]},
            "after": {"name": "users", "endpoints": ["10.0.0.9:80"]},
        }
    ]
    a = api.client.get("/v1/audit", params={"kind": "cluster"}).json()["items"]
    assert [(x["revision"], x["op"]) for x in a] == [(r2, "update"), (r1, "create")]
    assert a[0]["before"]["endpoints"] == ["10.0.0.1:80"] and a[0]["actor"]


def test_bad_input_is_400_and_unknown_revision_404(api: Api, store: Store) -> None:
    store.apply(Bundle.from_text(POLICY))
    for path, params in (
        ("/v1/history", {"limit": "x"}),
        ("/v1/history", {"kind": "nope"}),
        ("/v1/history/diff", {"from": "-1"}),
    ):
        r = api.client.get(path, params=params)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid", (path, r.text)
    r = api.client.get("/v1/history/diff", params={"from": 99})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    rev = store.revision()
    for body in ({"revision": "x"}, {"revision": 1, "extra": 1}, {}):
        r = api.client.post("/v1/rollback", json=body)
        assert r.status_code == 400, body
    assert store.revision() == rev


def test_rollback_over_the_api(api: Api, store: Store) -> None:
    r1 = store.apply(Bundle.from_text(POLICY)).revision
    r2 = store.replace(_cluster("10.0.0.9:80"))
    api.as_("ops-token", "editor")
    dry = api.client.post("/v1/rollback", json={"revision": r1}, params={"dry_run": "true"})
    assert dry.status_code == 200 and dry.json()["dry_run"] and store.revision() == r2
    stale = api.client.post("/v1/rollback", json={"revision": r1}, headers={"If-Match": '"1"'})
    assert stale.status_code == 409 and store.revision() == r2
    r = api.client.post("/v1/rollback", json={"revision": r1}, headers={"If-Match": f'"{r2}"'})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["revision"] == r2 + 1 and r.headers["etag"] == f'"{r2 + 1}"'
    assert body["changes"] == [{"op": "update", "kind": "cluster", "name": "users"}]
    assert body["skipped"] == [] and body["dry_run"] is False
    assert store.get("cluster", "users").endpoints == ["10.0.0.1:80"]  # type: ignore[attr-defined]
    top = store.audit(limit=1)[0]
    assert top.actor == "ops-token"


def test_rollback_needs_editor_and_scope_for_every_object(api: Api, store: Store) -> None:
    r1 = store.apply(Bundle.from_text(POLICY)).revision
    store.delete("route", "ops")
    rev = store.revision()
    api.as_("reader", "viewer")
    r = api.client.post("/v1/rollback", json={"revision": r1})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    api.as_("web-team", "editor", ("web",))
    r = api.client.post("/v1/rollback", json={"revision": r1})
    assert r.status_code == 403 and "route 'ops'" in r.json()["error"]["message"]
    assert store.revision() == rev
    api.as_("admin-team", "editor", ("admin",))
    r = api.client.post("/v1/rollback", json={"revision": r1})
    assert r.status_code == 200 and store.revision() == rev + 1


def test_scoped_reads_and_admin_only_audit(api: Api, store: Store) -> None:
    store.apply(Bundle.from_text(POLICY))
    api.as_("web-team", "viewer", ("web",))
    names = {
        (c["kind"], c["name"])
        for i in api.client.get("/v1/history").json()["items"]
        for c in i["changes"]
    }
    assert ("route", "users") in names and ("gateway", "web") in names
    assert ("route", "ops") not in names and ("gateway", "admin") not in names
    assert ("cluster", "users") in names  # shared kinds are visible
    r = api.client.get("/v1/audit")
    assert r.status_code == 403
    api.as_("editor", "editor")
    assert api.client.get("/v1/audit").status_code == 403

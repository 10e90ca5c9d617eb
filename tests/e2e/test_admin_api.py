"""The admin API of a real ``gatewayctl serve``, over HTTP, with a real Envoy behind it.

Writes go through the controller's API (not the database), and the answer is checked
where it matters: requests through Envoy, the policy revision, and the stored objects.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from controlplane.demo.echo import EchoServer
from controlplane.envoy_launcher import free_port
from controlplane.store import Store
from controlplane.store.tokens import add_token, revoke_token

from .harness import Cli, Controller, Envoy, backend_of

pytestmark = pytest.mark.e2e


@pytest.fixture
def admin_url(controller: Controller) -> str:
    return f"http://127.0.0.1:{controller.admin_port}"


@pytest.fixture
def tokens(cli: Cli) -> Iterator[Callable[..., str]]:
    store = Store(cli.db)

    def make(name: str, role: str, gateways: tuple[str, ...] = ()) -> str:
        return add_token(store, name, role, gateways)

    yield make
    store.close()


def _client(url: str, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url, headers=headers, timeout=60)


def _state(api: httpx.Client) -> tuple[int, str]:
    """The revision and the whole exported policy: "nothing written" compares these."""
    revision = api.get("/v1/revision").json()["revision"]
    return revision, json.dumps(api.get("/v1/export").json(), sort_keys=True)


def _error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert error["code"] == code and error["message"], error
    assert "Traceback" not in r.text and "\n" not in error["message"]
    return error  # type: ignore[no-any-return]


def test_route_added_over_http_with_wait_answers_through_envoy(
    cli: Cli,
    controller: Controller,
    envoy_factory: Callable[..., Envoy],
    backends: dict[str, EchoServer],
    gateway_port: int,
    admin_url: str,
    tokens: Callable[..., str],
) -> None:
    api = _client(admin_url, tokens("ops", "admin"))
    r = api.post(
        "/v1/gateways", json={"name": "public", "port": gateway_port, "address": "127.0.0.1"}
    )
    assert r.status_code == 201, r.text
    envoy_factory("public")
    r = api.post(
        "/v1/clusters", json={"name": "alpha", "endpoints": [f"127.0.0.1:{backends['alpha'].port}"]}
    )
    assert r.status_code == 201, r.text
    r = api.post(
        "/v1/routes",
        params={"wait": "30s"},
        json={
            "name": "hello",
            "gateways": ["public"],
            "match": {"path_prefix": "/"},
            "cluster": "alpha",
        },
    )
    assert r.status_code == 201, r.text
    assert r.headers["etag"] == f'"{r.json()["revision"]}"'
    # the wait answered only once the proxy ACKed: the route answers right away
    assert backend_of(gateway_port, "/hello") == "alpha"
    # a PATCH with wait moves it, live on return
    beta = f"127.0.0.1:{backends['beta'].port}"
    assert api.post("/v1/clusters", json={"name": "beta", "endpoints": [beta]}).status_code == 201
    r = api.patch("/v1/routes/hello", params={"wait": "30s"}, json={"cluster": "beta"})
    assert r.status_code == 200, r.text
    assert backend_of(gateway_port, "/hello") == "beta"
    # status over the API names the proxy, in sync
    status = api.get("/v1/status").json()
    assert [p["in_sync"] for p in status["proxies"]] == [True] and status["problem"] is None
    # the health port still serves probes and metrics
    health = httpx.get(f"http://127.0.0.1:{controller.health_port}/metrics", timeout=10)
    assert health.status_code == 200 and "gateway_policy_revision" in health.text
    assert httpx.get(f"{admin_url}/readyz", timeout=10).json() == {"ok": True}


def test_a_validating_controller_counts_each_writes_check(
    cli: Cli, tmp_path: Path, tokens: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``gatewayctl --validate always serve``: each API write is checked by Envoy before commit, and
    /metrics counts the checks and the time they took, Envoy's run only where the write
    changes what a proxy would run (a cluster no route uses renders nothing)."""
    monkeypatch.setenv("GATEWAY_VALIDATE", "always")  # the suite's default is never
    controller = Controller(cli, tmp_path)
    controller.start()
    try:
        api = _client(f"http://127.0.0.1:{controller.admin_port}", tokens("ops", "admin"))
        for path, body in (
            ("/v1/gateways", {"name": "public", "port": free_port(), "address": "127.0.0.1"}),
            ("/v1/clusters", {"name": "alpha", "endpoints": ["127.0.0.1:9"]}),
            ("/v1/routes", {"name": "hello", "gateways": ["public"], "cluster": "alpha"}),
        ):
            r = api.post(path, json=body)
            assert r.status_code == 201, r.text
        url = f"http://127.0.0.1:{controller.health_port}/metrics"
        metrics = dict(
            line.rsplit(" ", 1)
            for line in httpx.get(url, timeout=10).text.splitlines()
            if line.startswith("gateway_policy_check")
        )
        assert float(metrics['gateway_policy_checks_total{result="accepted"}']) == 3
        assert float(metrics['gateway_policy_check_seconds_count{stage="render"}']) == 3
        assert float(metrics['gateway_policy_check_seconds_count{stage="envoy"}']) == 2
        assert float(metrics['gateway_policy_check_seconds_sum{stage="envoy"}']) > 0
    finally:
        controller.stop()


def test_tokens_roles_scopes_and_revocation(
    cli: Cli, controller: Controller, admin_url: str, tokens: Callable[..., str]
) -> None:
    admin = _client(admin_url, tokens("ops", "admin"))
    for path, body in (
        ("/v1/gateways", {"name": "a", "port": 18080}),
        ("/v1/gateways", {"name": "b", "port": 18090}),
        ("/v1/clusters", {"name": "app", "endpoints": ["127.0.0.1:9000"]}),
        ("/v1/routes", {"name": "ra", "gateways": ["a"], "cluster": "app"}),
        ("/v1/routes", {"name": "rb", "gateways": ["b"], "cluster": "app"}),
    ):
        assert admin.post(path, json=body).status_code == 201
    before = _state(admin)
    _error(_client(admin_url, None).get("/v1/routes"), 401, "unauthorized")
    _error(_client(admin_url, "gw_" + "x" * 43).get("/v1/routes"), 401, "unauthorized")
    viewer = _client(admin_url, tokens("reader", "viewer"))
    assert viewer.get("/v1/routes").status_code == 200
    _error(viewer.patch("/v1/routes/ra", json={"timeout": "1s"}), 403, "forbidden")
    _error(viewer.post("/v1/apply", json={}), 403, "forbidden")
    scoped = _client(admin_url, tokens("team-a", "editor", ("a",)))
    err = _error(scoped.patch("/v1/routes/rb", json={"timeout": "1s"}), 403, "forbidden")
    assert "route 'rb'" in err["message"]
    _error(scoped.delete("/v1/routes/rb"), 403, "forbidden")
    _error(scoped.patch("/v1/routes/ra", json={"gateways": ["b"]}), 403, "forbidden")
    _error(scoped.post("/v1/clusters", json={"name": "c2", "endpoints": ["h:1"]}), 403, "forbidden")
    doc = {"routes": [{"name": "rb", "gateways": ["b"], "cluster": "app", "timeout": "9s"}]}
    assert "route 'rb'" in _error(scoped.post("/v1/apply", json=doc), 403, "forbidden")["message"]
    assert _state(admin) == before  # nothing written by any refused call
    # inside its scope it may write; it sees only its gateway's routes
    assert scoped.patch("/v1/routes/ra", json={"timeout": "1s"}).status_code == 200
    assert [i["name"] for i in scoped.get("/v1/routes").json()["items"]] == ["ra"]
    # a revoked token is refused on its very next call
    revoke_token(Store(cli.db), "team-a")
    _error(scoped.get("/v1/routes"), 401, "unauthorized")
    # tokens over the API: admin only
    _error(viewer.get("/v1/tokens"), 403, "forbidden")
    made = admin.post("/v1/tokens", json={"name": "ci", "role": "viewer"})
    assert made.status_code == 201
    ci = _client(admin_url, made.json()["token"])
    assert ci.get("/v1/revision").status_code == 200
    assert admin.delete("/v1/tokens/ci").status_code == 200
    _error(ci.get("/v1/revision"), 401, "unauthorized")


def test_two_writers_with_the_same_if_match_one_wins_nothing_lost(
    cli: Cli, controller: Controller, admin_url: str, tokens: Callable[..., str]
) -> None:
    token = tokens("ops", "admin")
    api = _client(admin_url, token)
    api.post("/v1/gateways", json={"name": "a", "port": 18080})
    api.post("/v1/clusters", json={"name": "app", "endpoints": ["127.0.0.1:9000"]})
    api.post("/v1/routes", json={"name": "r", "gateways": ["a"], "cluster": "app"})
    etag = api.get("/v1/routes/r").headers["etag"]
    barrier = threading.Barrier(2)
    answers: dict[str, httpx.Response] = {}

    def write(timeout: str) -> None:
        client = _client(admin_url, token)
        barrier.wait()
        answers[timeout] = client.patch(
            "/v1/routes/r", json={"timeout": timeout}, headers={"If-Match": etag}
        )

    threads = [threading.Thread(target=write, args=(t,)) for t in ("11s", "22s")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    statuses = sorted(r.status_code for r in answers.values())
    assert statuses == [200, 409], {k: v.text for k, v in answers.items()}
    winner = next(k for k, v in answers.items() if v.status_code == 200)
    loser = next(v for v in answers.values() if v.status_code == 409)
    assert loser.json()["error"]["code"] == "conflict"
    # the winner's value is stored, exactly one revision later: nothing lost, nothing merged
    got = api.get("/v1/routes/r")
    assert got.json()["spec"]["timeout"] == winner
    assert int(got.headers["etag"].strip('"')) == int(etag.strip('"')) + 1


BAD: list[tuple[str, str, str, Any, str | None]] = [
    ("malformed JSON", "POST", "/v1/routes", b'{"name": "x", ', None),
    (
        "unknown field",
        "POST",
        "/v1/clusters",
        {"name": "c", "endpoints": ["h:1"], "bogus": 1},
        "bogus",
    ),
    ("wrong type", "POST", "/v1/gateways", {"name": "g", "port": "eighty"}, "port"),
    ("wrong nested type", "PATCH", "/v1/routes/r", {"retry": {"attempts": "many"}}, "retry"),
    ("unknown kind", "GET", "/v1/widgets", None, None),
    ("unknown kind write", "POST", "/v1/widgets", {"name": "x"}, None),
    ("path traversal", "GET", "/v1/routes/..%2F..%2Fetc%2Fpasswd", None, None),
    (
        "traversal in body",
        "POST",
        "/v1/routes",
        {"name": "../../x", "gateways": ["a"], "cluster": "app"},
        "name",
    ),
    ("control character", "DELETE", "/v1/routes/r%0Aevil", None, "name"),
    ("NUL in body name", "POST", "/v1/clusters", {"name": "c\u0000", "endpoints": ["h:1"]}, "name"),
    ("unicode name", "POST", "/v1/clusters", {"name": "caf\u00e9", "endpoints": ["h:1"]}, "name"),
    (
        "unicode in path",
        "PUT",
        "/v1/routes/%E2%80%AEr",
        {"name": "r", "gateways": ["a"], "cluster": "app"},
        "name",
    ),
    ("unknown top-level key", "POST", "/v1/apply", {"widgets": []}, "widgets"),
    (
        "missing reference",
        "POST",
        "/v1/routes",
        {"name": "r2", "gateways": ["a"], "cluster": "nope"},
        None,
    ),
]


@pytest.fixture
def seeded(controller: Controller, admin_url: str, tokens: Callable[..., str]) -> httpx.Client:
    api = _client(admin_url, tokens("ops", "admin"))
    api.post("/v1/gateways", json={"name": "a", "port": 18080})
    api.post("/v1/clusters", json={"name": "app", "endpoints": ["127.0.0.1:9000"]})
    assert (
        api.post("/v1/routes", json={"name": "r", "gateways": ["a"], "cluster": "app"}).status_code
        == 201
    )
    return api


def test_bad_input_is_a_4xx_json_error_naming_the_field_and_writes_nothing(
    seeded: httpx.Client,
) -> None:
    api = seeded
    before = _state(api)
    for case, method, path, body, field in BAD:
        if isinstance(body, bytes):
            r = api.request(
                method, path, content=body, headers={"Content-Type": "application/json"}
            )
        else:
            r = api.request(method, path, json=body)
        assert 400 <= r.status_code < 500, (case, r.status_code, r.text)
        error = r.json()["error"]
        assert error["message"] and "\n" not in error["message"], (case, error)
        if field is not None:
            assert (error["field"] or "").startswith(field), (case, error)
    # an oversize body: 413 before it is parsed (the default limit is 16 MiB)
    huge = b'{"clusters": [' + b" " * (17 * 1024 * 1024) + b"]}"
    r = api.post("/v1/apply", content=huge, headers={"Content-Type": "application/json"})
    _error(r, 413, "too_large")
    assert _state(api) == before

"""The web console in a real Chromium, against a real ``gatewayctl serve`` and a real Envoy.

One controller, one Envoy and one browser serve the whole module; each test opens its own
browser context (its own cookies), so logins do not leak from one test to the next.
"""

from __future__ import annotations

import csv
import http.server
import io
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from controlplane.demo.echo import EchoServer
from controlplane.envoy_launcher import free_port
from controlplane.store import Store
from controlplane.store.tokens import add_token, revoke_token

from .harness import Cli, Controller, Envoy, KeepAliveLoad, backend_of, request, wait_until

pytestmark = pytest.mark.e2e

#: what a hostile user may put in a free-text field: markup, quotes, non-ASCII
HOSTILE = '<script>window.__xss=1</script>"\'ü漢<img src=x onerror="window.__xss=2">'
#: where the screenshots go when CONSOLE_SCREENSHOTS names a folder (docs/console)
SHOTS = os.environ.get("CONSOLE_SCREENSHOTS")
WIDTHS = {"desktop": (1280, 800), "phone": (390, 844)}


def chromium() -> str:
    """Debian's chromium (scripts/test.sh installs it as root). Missing: a failure in CI,
    where the console must be tested, a skip on a developer's machine."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    message = "no chromium: apt-get install chromium (scripts/test.sh does as root)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class Env:
    cli: Cli
    controller: Controller
    envoy: Envoy
    url: str
    gateway_port: int
    backends: dict[str, EchoServer]
    store: Store

    def token(self, name: str, role: str) -> str:
        return add_token(self.store, name, role, ())

    def api(self, token: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=60
        )


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("console")
    cli = Cli(db=str(tmp / "gateway.db"))
    backends = {name: EchoServer(name).start() for name in ("alpha", "beta")}
    gateway_port = free_port()
    cli.add_gateway("public", gateway_port)
    cli.run("cluster", "add", "beta", "--endpoint", f"127.0.0.1:{backends['beta'].port}")
    cli.add_route("home", "public", "/home", "beta")
    controller = Controller(cli, tmp)
    controller.start()
    envoy = Envoy("public", "pub-1", controller.xds_port, tmp)
    store = Store(cli.db)
    try:
        yield Env(
            cli=cli,
            controller=controller,
            envoy=envoy,
            url=f"http://127.0.0.1:{controller.admin_port}",
            gateway_port=gateway_port,
            backends=backends,
            store=store,
        )
    finally:
        envoy.stop()
        controller.stop()
        store.close()
        for server in backends.values():
            server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    path = chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # root (CI) cannot use chromium's sandbox
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        b = p.chromium.launch(executable_path=path, headless=True, args=args)
        yield b
        b.close()


@pytest.fixture
def new_page(browser: Any) -> Iterator[Callable[..., Any]]:
    """A page in a fresh browser context; script errors and dialogs are recorded on it."""
    contexts: list[Any] = []

    def make(width: int = 1280, height: int = 800) -> Any:
        context = browser.new_context(viewport={"width": width, "height": height})
        contexts.append(context)
        page = context.new_page()
        page.errors = []
        page.dialogs = []
        page.on("pageerror", lambda exc: page.errors.append(str(exc)))

        def on_dialog(dialog: Any) -> None:
            page.dialogs.append(dialog.message)
            if dialog.type == "confirm":
                dialog.accept()
            else:
                dialog.dismiss()

        page.on("dialog", on_dialog)
        page.set_default_timeout(45_000)
        return page

    yield make
    for context in contexts:
        context.close()


def login(page: Any, env: Env, token: str) -> None:
    page.goto(f"{env.url}/ui/")
    page.wait_for_url("**/ui/login")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/ui/#/overview")
    page.wait_for_selector("[data-testid=revision]")


def goto(page: Any, env: Env, section: str) -> None:
    """Show ``section`` rendered afresh from the API (reloaded when it is already shown)."""
    url = f"{env.url}/ui/#/{section}"
    if page.url == url:
        page.reload()
    else:
        page.goto(url)
    page.wait_for_selector(f"main[data-page={section}]")


def revision(env: Env, token: str) -> int:
    with env.api(token) as api:
        return int(api.get("/v1/revision").json()["revision"])


def test_login_sets_a_strict_httponly_cookie_and_logout_ends_the_session(
    env: Env, new_page: Callable[..., Any]
) -> None:
    token = env.token("ops-login", "admin")
    page = new_page()
    page.goto(f"{env.url}/ui/login")
    page.get_by_label("API token").fill("gw_" + "A" * 43)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_selector("#error:has-text('invalid token')")
    assert page.context.cookies() == []

    login(page, env, token)
    (cookie,) = page.context.cookies()
    assert cookie["name"] == "gw_console"
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert cookie["secure"] is False  # plain HTTP here; tests/unit/test_console.py: TLS
    assert token not in cookie["value"]
    # the token is nowhere the page's scripts can reach
    assert page.evaluate("document.cookie") == ""
    assert token not in page.content()
    assert page.evaluate("JSON.stringify(localStorage) + JSON.stringify(sessionStorage)") == "{}{}"
    assert page.get_by_test_id("who").inner_text() == "ops-login (admin)"

    page.get_by_role("button", name="Log out").click()
    page.wait_for_url("**/ui/login")
    # the old cookie value is dead on the server, not only deleted in the browser
    r = httpx.get(f"{env.url}/v1/revision", cookies={"gw_console": cookie["value"]})
    assert r.status_code == 401, r.text
    assert page.errors == []


def test_revoked_token_logs_the_session_out(env: Env, new_page: Callable[..., Any]) -> None:
    token = env.token("short-lived", "editor")
    page = new_page()
    login(page, env, token)
    goto(page, env, "routes")
    revoke_token(env.store, "short-lived")
    page.get_by_role("link", name="Clusters").click()
    page.wait_for_url("**/ui/login?expired=1")
    assert "session ended" in page.locator("#notice").inner_text()
    page.goto(f"{env.url}/ui/")
    page.wait_for_url("**/ui/login")


def test_viewer_sees_no_write_controls_and_its_crafted_write_is_refused(
    env: Env, new_page: Callable[..., Any]
) -> None:
    admin = env.token("ops-viewer-check", "admin")
    viewer = env.token("watcher", "viewer")
    page = new_page()
    login(page, env, viewer)
    for section in ("overview", "routes", "clusters", "consumers", "activity"):
        goto(page, env, section)
        assert page.locator("main button").count() == 0, section
        assert page.locator("main form").count() == 0, section
    goto(page, env, "routes")
    assert page.locator("[data-name=home]").count() == 1  # it does read
    before = revision(env, admin)
    answer = page.evaluate(
        """async () => {
            const me = await (await fetch('/ui/session')).json();
            const r = await fetch('/v1/clusters', {method: 'POST',
                headers: {'Content-Type': 'application/json', 'X-CSRF-Token': me.csrf},
                body: JSON.stringify({name: 'sneaky', endpoints: ['127.0.0.1:9']})});
            return [r.status, await r.json()];
        }"""
    )
    assert answer[0] == 403, answer
    assert answer[1]["error"]["code"] == "forbidden"
    assert revision(env, admin) == before
    assert page.errors == []


class _Hostile(http.server.BaseHTTPRequestHandler):
    """Another origin (another port of the same host): a page that forges writes."""

    target = ""

    def do_GET(self) -> None:
        body = f"""<!doctype html><html><body>
<form id=f method=POST action="{self.target}/v1/clusters" enctype="text/plain">
<input name='{{"name":"forged","endpoints":["127.0.0.1:9"],"x":"' value='"}}'>
</form>
<script>
fetch("{self.target}/v1/clusters", {{method: "POST", mode: "no-cors", credentials: "include",
  headers: {{"Content-Type": "text/plain"}},
  body: JSON.stringify({{name: "forged2", endpoints: ["127.0.0.1:9"]}})}})
  .finally(() => {{ document.title = "sent"; document.getElementById("f").submit(); }});
</script></body></html>""".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_cross_site_post_changes_nothing(env: Env, new_page: Callable[..., Any]) -> None:
    admin = env.token("ops-csrf", "admin")
    page = new_page()
    login(page, env, admin)
    before = revision(env, admin)
    _Hostile.target = env.url
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with page.expect_response(lambda r: r.url.endswith("/v1/clusters")) as forged:
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
        assert forged.value.status == 403
        page.wait_for_load_state()
    finally:
        server.shutdown()
        server.server_close()
    with env.api(admin) as api:
        names = [c["name"] for c in api.get("/v1/clusters").json()["items"]]
    assert "forged" not in names and "forged2" not in names
    assert revision(env, admin) == before
    # the same cookie without the CSRF token, sent by hand: refused too
    goto(page, env, "overview")
    (cookie,) = page.context.cookies()
    r = httpx.post(
        f"{env.url}/v1/clusters",
        json={"name": "forged3", "endpoints": ["127.0.0.1:9"]},
        cookies={"gw_console": cookie["value"]},
    )
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", r.text
    assert revision(env, admin) == before


def _connected(env: Env, token: str) -> dict[str, bool]:
    """Each proxy the controller lists: connected or not."""
    with env.api(token) as api:
        return {p["node"]: p["connected"] for p in api.get("/v1/status").json()["proxies"]}


def test_add_cluster_and_route_through_the_forms(
    env: Env, new_page: Callable[..., Any], tmp_path: Path
) -> None:
    """With two Envoys on the gateway (one port, SO_REUSEPORT): both ACK each change, and
    the overview shows both in sync at the new revision."""
    admin = env.token("ops-forms", "admin")
    second = Envoy("public", "pub-2", env.controller.xds_port, tmp_path)
    try:
        wait_until(lambda: _connected(env, admin).get("pub-2"), 30, 0.5)
        page = _add_cluster_and_route_through_the_forms(env, new_page, admin)
    finally:
        second.stop()
        # gone before the next test: the gateway's rate limits divide by connected proxies
        wait_until(lambda: not _connected(env, admin).get("pub-2"), 30, 0.5)
    # a proxy that left is shown as gone, not as one out of sync
    goto(page, env, "overview")
    cells = page.locator("[data-testid=proxies] tr[data-node=pub-2] td").all_inner_texts()
    assert cells[5] == "disconnected", cells
    gateway = page.locator("[data-testid=gateways] tbody tr", has_text="public")
    assert gateway.locator("td").nth(3).inner_text() == "1 of 1 (1 disconnected)"
    assert page.errors == []


def _add_cluster_and_route_through_the_forms(
    env: Env, new_page: Callable[..., Any], admin: str
) -> Any:
    page = new_page()
    login(page, env, admin)

    goto(page, env, "clusters")
    page.get_by_role("button", name="New cluster").click()
    page.get_by_label("Name").fill("alpha")
    page.get_by_label("Endpoints").fill("not-an-endpoint")
    page.get_by_role("button", name="Plan").click()
    error = page.locator("[data-field=endpoints] .field-error")
    error.wait_for()
    assert "must be host:port" in error.inner_text()
    assert page.get_by_label("Endpoints").get_attribute("aria-invalid") == "true"

    page.get_by_label("Endpoints").fill(f"127.0.0.1:{env.backends['alpha'].port}")
    page.get_by_role("button", name="Plan").click()
    diff = page.get_by_test_id("diff")
    diff.wait_for()
    assert "create cluster alpha" in diff.inner_text()
    assert f"127.0.0.1:{env.backends['alpha'].port}" in diff.locator("pre.after").inner_text()
    before = revision(env, admin)
    assert "alpha" not in [
        c["name"] for c in env.api(admin).get("/v1/clusters").json()["items"]
    ]  # planning wrote nothing
    page.get_by_role("button", name="Apply").click()
    applied = page.get_by_test_id("applied")
    applied.wait_for()
    assert f"Applied as revision {before + 1}" in applied.inner_text()
    page.locator("[data-testid=clusters] tr[data-name=alpha]").wait_for()  # listed now
    assert applied.is_visible()

    goto(page, env, "routes")
    page.get_by_role("button", name="New route").click()
    page.get_by_label("Name").fill("hello")
    page.get_by_label("Gateways").fill("public")
    page.get_by_label("Path prefix").fill("/hello" + HOSTILE)  # refused, and shown escaped
    page.get_by_label("Cluster").fill("alpha")
    page.get_by_role("button", name="Plan").click()
    error = page.locator("[data-field=match] .field-error")
    error.wait_for()
    # the API's message (the value as a Python repr), shown as text
    assert '<script>window.__xss=1</script>"' in error.inner_text()
    assert 'ü漢<img src=x onerror="window.__xss=2">' in error.inner_text()
    assert page.evaluate("window.__xss") is None
    page.get_by_label("Path prefix").fill("/hello")
    page.get_by_role("button", name="Plan").click()
    page.get_by_test_id("diff").wait_for()
    assert "create route hello" in page.get_by_test_id("diff").inner_text()
    page.get_by_role("button", name="Apply").click()
    applied = page.get_by_test_id("applied")
    applied.wait_for()
    text = applied.inner_text()
    assert f"Applied as revision {before + 2}" in text and "every connected proxy ACKed" in text
    # applied with wait: Envoy serves it already
    assert backend_of(env.gateway_port, "/hello") == "alpha"

    # search, then edit: the form keeps the route's other fields, the diff shows both sides
    goto(page, env, "routes")
    page.get_by_label("Search").fill("hell")
    assert page.locator("[data-testid=routes] tbody tr").all_inner_texts()[0].startswith("hello")
    assert page.locator("[data-testid=routes] tbody tr").count() == 1
    page.get_by_label("Gateway", exact=True).select_option("public")
    assert page.locator("[data-testid=routes] tbody tr").count() == 1
    page.get_by_role("button", name="Edit hello").click()
    assert page.get_by_label("Name").input_value() == "hello"
    assert page.get_by_label("Name").get_attribute("readonly") is not None
    page.get_by_label("Cluster").fill("beta")
    page.get_by_role("button", name="Plan").click()
    diff = page.get_by_test_id("diff")
    diff.wait_for()
    assert "update route hello" in diff.inner_text()
    assert '"alpha"' in diff.locator("pre.before").inner_text()
    assert '"beta"' in diff.locator("pre.after").inner_text()
    assert '"/hello"' in diff.locator("pre.after").inner_text()
    page.get_by_role("button", name="Apply").click()
    page.get_by_test_id("applied").wait_for()
    assert backend_of(env.gateway_port, "/hello") == "beta"

    goto(page, env, "overview")
    assert page.get_by_test_id("revision").inner_text() == str(before + 3)
    assert page.locator("[data-testid=proxies] tbody tr").count() == 2
    for node in ("pub-1", "pub-2"):
        cells = page.locator(f"[data-testid=proxies] tr[data-node={node}] td").all_inner_texts()
        # node, gateway, address, Envoy, ACKed revision, sync, last NACK
        assert cells[1] == "public" and cells[4] == str(before + 3), cells
        assert cells[5] == "in sync" and cells[6] == "—", cells
    gateway = page.locator("[data-testid=gateways] tbody tr", has_text="public")
    assert gateway.locator("td").nth(3).inner_text() == "2 of 2", gateway.inner_text()
    assert "Every proxy runs the current policy." in page.locator("main").inner_text()
    assert page.errors == [] and page.dialogs == []
    return page


def _send(port: int, path: str, key: str, count: int) -> list[int]:
    statuses = []
    for _ in range(count):
        status, _, _ = request(port, path, headers={"x-api-key": key})
        statuses.append(status)
    return statuses


def test_key_issued_once_and_usage_counted_per_minute_with_csv(
    env: Env, new_page: Callable[..., Any]
) -> None:
    admin = env.token("ops-usage", "admin")
    with env.api(admin) as api:
        r = api.patch("/v1/gateways/public", json={"analytics": {"enabled": True}})
        assert r.status_code == 200, r.text
        r = api.post(
            "/v1/apply",
            params={"wait": "30s"},
            json={
                "plans": [
                    {"name": "small", "limits": [{"requests": 10, "per": "minute"}]},
                    {"name": "big", "limits": [{"requests": 1000, "per": "minute"}]},
                ],
                "consumers": [{"name": "acme", "plan": "big"}],
                "routes": [
                    {
                        "name": "metered",
                        "gateways": ["public"],
                        "match": {"path_prefix": "/metered"},
                        "cluster": "beta",
                        "auth": {"api_key": True},
                        "rate_limit": {"key": "consumer"},
                    }
                ],
            },
        )
        assert r.status_code == 200, r.text
    page = new_page()
    login(page, env, admin)
    goto(page, env, "consumers")
    card = page.locator("[data-consumer=acme]")
    card.get_by_label("Plan").select_option("small")
    card.get_by_role("button", name="Move to plan").click()
    card.locator("p.ok").wait_for()
    card.get_by_role("button", name="Issue a key for acme").click()
    shown = card.get_by_test_id("new-key")
    shown.wait_for()
    key = shown.input_value()
    assert key and "shown this once" in card.inner_text()
    card.get_by_role("button", name="Copy").click()
    # the key is in no later answer: not the page, not the API's listing
    goto(page, env, "consumers")
    assert page.get_by_test_id("new-key").count() == 0
    assert key not in page.content()
    assert not page.evaluate(
        "(key) => [...document.querySelectorAll('input')].some((i) => i.value.includes(key))", key
    )
    with env.api(admin) as api:
        assert key not in api.get("/v1/consumers/acme/keys").text
        assert key not in api.get("/v1/export").text

    # 15 requests within one minute of the limiter: 10 admitted, 5 throttled
    second = time.time() % 60
    if second > 30:
        time.sleep(61 - second)
    minute = datetime.fromtimestamp(time.time() // 60 * 60, UTC).isoformat()
    statuses = _send(env.gateway_port, "/metered/x", key, 15)
    assert statuses == [200] * 10 + [429] * 5, statuses

    def row() -> dict[str, Any] | None:
        with env.api(admin) as api:
            data = api.get("/ui/usage.json", params={"range": "15m", "consumer": "acme"}).json()
        found = [p for p in data["points"] if p["time"] == minute]
        return found[0] if found and found[0]["requests"] == 15 else None

    point = wait_until(row, 60, 1)
    # the gateway's own 429s are a series of their own, not lumped into 4xx
    assert point["status"] == {"2xx": 10, "429": 5}, point
    assert point["usage"] == {
        "admitted": 10,
        "throttled": 5,
        "unauthenticated": 0,
        "upstream_errors": 0,
        "refused": 0,
    }, point

    # still the minute of the requests (they started before its 30th second)
    goto(page, env, "consumers")
    assert "10 per minute" in page.get_by_test_id("plans").inner_text()
    card = page.locator("[data-consumer=acme]")
    used = card.get_by_test_id("plan-usage").inner_text()
    # admitted against the limit, throttled beside it: never "15 of 10"
    if datetime.fromtimestamp(time.time() // 60 * 60, UTC).isoformat() == minute:
        assert "10 of 10 requests this minute, 5 throttled" in used, used
    else:  # a slow machine: the minute turned while the page loaded; either answer is right
        assert any(f"{n} of 10 requests this minute" in used for n in (10, 0)), used

    page.goto(f"{env.url}/ui/#/usage?range=15m&consumer=acme")
    page.wait_for_selector("main[data-page=usage]")
    assert "UTC" in page.locator("main").inner_text()
    assert "admitted: 10" in page.get_by_test_id("totals").inner_text()
    assert "throttled: 5" in page.get_by_test_id("totals").inner_text()

    def table_row(testid: str, title: str) -> dict[str, str]:
        """The cells of ``minute``'s row of a chart's table, by column header."""
        table = page.get_by_test_id(testid)
        page.get_by_text(f"Table: {title}", exact=True).click()
        cells = table.locator("tr", has_text=minute[:16].replace("T", " ")).locator("td")
        heads = [t.strip() for t in table.locator("th").all_inner_texts()]
        return dict(zip(heads, [t.strip() for t in cells.all_inner_texts()], strict=True))

    by_usage = table_row("usage-classes", "Requests by usage class")
    assert by_usage["Requests"] == "15", by_usage
    assert by_usage["Admitted"] == "10" and by_usage["Throttled (429)"] == "5", by_usage
    assert by_usage["Unauthenticated (401/403)"] == "0", by_usage
    by_status = table_row("usage-requests", "Requests by status class")
    assert by_status["2xx"] == "10" and by_status["429"] == "5", by_status
    assert "4xx" not in by_status, by_status  # no other 4xx in this range
    for chart in page.locator("img.chart").all():
        assert chart.evaluate("(img) => img.complete && img.naturalWidth > 0")
        assert chart.get_attribute("alt")

    with page.expect_download() as download:
        page.get_by_role("link", name="Download CSV").click()
    text = Path(download.value.path()).read_text()
    rows = list(csv.DictReader(io.StringIO(text)))
    (mine,) = [r for r in rows if r["time_utc"] == minute]
    assert mine["requests"] == "15" and mine["admitted"] == "10", mine
    assert mine["throttled"] == "5" and mine["unauthenticated"] == "0", mine
    assert mine["2xx"] == "10" and mine["429"] == "5" and mine["4xx"] == "0", mine

    goto(page, env, "consumers")
    card = page.locator("[data-consumer=acme]")
    # a second key with an expiry, then the first revoked (after the confirm dialog)
    card.get_by_label("Key expires in").fill("30d")
    card.get_by_role("button", name="Issue a key for acme").click()
    card.get_by_test_id("new-key").wait_for()
    second = card.get_by_test_id("new-key").input_value()
    assert second != key
    goto(page, env, "consumers")
    card = page.locator("[data-consumer=acme]")
    rows = card.get_by_test_id("keys").locator("tbody tr")
    assert rows.count() == 2
    expiring = [t for t in rows.all_inner_texts() if "UTC" in t.split("\t")[2]]
    assert len(expiring) == 1, rows.all_inner_texts()
    first_id = next(t.split("\t")[0] for t in rows.all_inner_texts() if t not in expiring)
    card.get_by_role("button", name=f"Revoke key {first_id}").click()
    page.locator(f"[data-consumer=acme] tr:has-text('{first_id}'):has-text('revoked')").wait_for()
    assert page.dialogs and "Revoke key" in page.dialogs[-1]
    status, _, _ = request(env.gateway_port, "/metered/x", headers={"x-api-key": key})
    assert status == 401
    assert request(env.gateway_port, "/metered/x", headers={"x-api-key": second})[0] in (200, 429)

    # the gateway's 401 (an anonymous request now) is a series of its own, not 4xx
    def refused() -> dict[str, Any] | None:
        with env.api(admin) as api:
            data = api.get("/ui/usage.json", params={"range": "15m", "route": "metered"}).json()
        found = [p for p in data["points"] if p["usage"]["unauthenticated"]]
        return found[0] if found else None

    point = wait_until(refused, 60, 1)
    assert point["usage"]["unauthenticated"] == 1 and point["status"]["401/403"] == 1, point
    assert point["status"].get("4xx", 0) == 0, point
    assert page.errors == []


def test_hostile_values_are_shown_as_text_everywhere(
    env: Env, new_page: Callable[..., Any]
) -> None:
    admin = env.token("ops-xss", "admin")
    with env.api(admin) as api:
        r = api.post(
            "/v1/routes",
            params={"wait": "30s"},
            json={
                "name": "xss",
                "gateways": ["public"],
                "match": {"path_prefix": "/xss", "headers": [{"name": "x-a", "exact": HOSTILE}]},
                "response_headers": {"add": {"x-note": HOSTILE}},
                "cluster": "beta",
            },
        )
        assert r.status_code == 201, r.text
    page = new_page()
    login(page, env, admin)
    for section in ("routes", "activity", "overview", "clusters", "consumers"):
        goto(page, env, section)
        if section in ("routes", "activity"):
            assert "<script>window.__xss=1</script>" in page.locator("main").inner_text()
        assert page.evaluate("window.__xss") is None, section
        assert page.locator("main script, main img").count() == 0, section
    goto(page, env, "routes")
    page.locator("tr[data-name=xss]").get_by_role("button", name="Edit xss").click()
    page.get_by_role("button", name="Plan").click()
    page.locator(".result > *").first.wait_for()
    assert "No change" in page.locator(".result").inner_text()
    assert page.evaluate("window.__xss") is None
    assert page.errors == [] and page.dialogs == []


def test_nack_shown_on_the_overview_then_rolled_back_from_the_history(
    env: Env, new_page: Callable[..., Any]
) -> None:
    admin = env.token("ops-rollback", "admin")
    page = new_page()
    login(page, env, admin)
    good = revision(env, admin)
    with (
        KeepAliveLoad(env.gateway_port, ["/home"]) as load,
        socket.socket() as squatter,
    ):
        load.more(20)
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        # a valid change only the proxy can refuse: the new port is taken on its host
        env.cli.run("gateway", "update", "public", "--port", str(taken))
        goto(page, env, "overview")
        row = page.locator("[data-testid=proxies] tr[data-node=pub-1]")
        wait_until(lambda: "gateway public" in row.inner_text(), 30, 0.5)
        text = row.inner_text()
        assert "not in sync" in text and "Address already in use" in text, text
        assert "pub-1" in page.locator("main p.error").inner_text()

        goto(page, env, "activity")
        # the audit trail: who changed what, old -> new per field
        audit = page.get_by_test_id("audit").locator("tr", has_text=f"→ {taken}").first
        assert "update gateway public" in audit.inner_text()
        assert f"port: {env.gateway_port} → {taken}" in audit.inner_text()
        page.get_by_role("button", name=f"Roll back to revision {good}").click()
        done = page.get_by_test_id("rolled-back")
        done.wait_for()
        assert f"Rolled back to revision {good}" in done.inner_text()
        assert "every connected proxy ACKed" in done.inner_text()
        assert page.dialogs and "Roll back the policy" in page.dialogs[-1]
        load.more(20)
    assert set(load.outcomes) == {"2xx"}, load.outcomes  # no failed request meanwhile
    goto(page, env, "overview")
    row = page.locator("[data-testid=proxies] tr[data-node=pub-1]")
    wait_until(lambda: "not in sync" not in row.inner_text(), 30, 0.5)
    assert "in sync" in row.inner_text()
    assert backend_of(env.gateway_port, "/home") == "beta"
    assert page.errors == []


def test_pages_fit_desktop_and_phone_widths(env: Env, new_page: Callable[..., Any]) -> None:
    """Every page at 1280x800 and 390 px: nothing wider than the screen but the tables'
    own scrolling boxes, every control labelled (screenshots: CONSOLE_SCREENSHOTS=dir)."""
    admin = env.token("ops-layout", "admin")
    for label, (width, height) in WIDTHS.items():
        page = new_page(width, height)
        login(page, env, admin)
        for section in ("overview", "routes", "clusters", "consumers", "usage", "activity"):
            goto(page, env, section)
            if section in ("routes", "clusters"):
                page.get_by_role("button", name=f"New {section[:-1]}").click()
            overflow = page.evaluate("document.documentElement.scrollWidth")
            assert overflow <= width, (label, section, overflow)
            unlabelled = page.evaluate(
                """() => [...document.querySelectorAll('input, select, textarea')]
                    .filter((el) => !(el.labels && el.labels.length)
                        && !el.getAttribute('aria-label'))
                    .map((el) => el.id || el.outerHTML)"""
            )
            assert unlabelled == [], (section, unlabelled)
            if SHOTS:
                Path(SHOTS).mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(Path(SHOTS) / f"{section}-{label}.png"), full_page=True)
        # keyboard: the skip link comes first, then the sections
        page.reload()
        page.wait_for_selector("main[data-page=activity]")
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.textContent") == "Skip to content"
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.textContent") == "Overview"
        assert page.errors == []

"""The CLI as a client of the admin API, against a tiny local HTTP server that answers with
canned responses in the shape of the contract (docs/decisions/0029-cli-client.md).

What is checked: error codes -> exit codes, one-line messages that never carry the token,
transport failures naming the URL, context resolution order, the config file's mode and
content, request shapes (POST body, merge patch, If-Match, wait=), and that ``-o json`` of
a remote list equals the local one.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from controlplane.cli.client import Client
from controlplane.cli.contexts import Target, resolve, save_config
from controlplane.errors import StoreError

TOKEN = "gw_" + "S3cr3tT0ken" * 4  # recognisable in any output it must never appear in

Canned = dict[tuple[str, str], tuple[int, Any]]


class FakeApi:
    """A threaded HTTP server answering ``(method, path)`` with canned JSON; records every
    request (method, path with query, headers, decoded body)."""

    def __init__(self, answers: Canned) -> None:
        self.answers = answers
        self.requests: list[dict[str, Any]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                path = self.path.split("?", 1)[0]
                api.requests.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": json.loads(raw) if raw else None,
                    }
                )
                status, body = api.answers.get(
                    (self.command, path),
                    (404, {"error": {"code": "not_found", "message": f"no {path}", "field": None}}),
                )
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("ETag", '"7"')
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeApi:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def cli_env(tmp_path: Path, url: str | None = None, token: str | None = None) -> dict[str, str]:
    """The environment of a user with no database option and a config dir of their own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    env["PYTHONPATH"] = str(Path(__file__).parents[2])
    if url:
        env["GATEWAY_URL"] = url
    if token:
        env["GATEWAY_TOKEN"] = token
    return env


def gatewayctl(
    tmp_path: Path, env: dict[str, str], *args: str, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controlplane.cli", *args],
        env=env,
        cwd=tmp_path,
        input=input,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _error(code: str, status: int, message: str, field: str | None = None) -> tuple[int, Any]:
    return status, {"error": {"code": code, "message": message, "field": field}}


# -- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status", "exit_code"),
    [
        ("invalid", 400, 2),
        ("rejected", 422, 2),
        ("too_large", 413, 2),
        ("not_found", 404, 3),
        ("conflict", 409, 4),
        ("unavailable", 503, 5),
        ("unauthorized", 401, 9),
        ("forbidden", 403, 9),
        ("wait_failed", 504, 7),
    ],
)
def test_error_codes_map_to_exit_codes(
    tmp_path: Path, code: str, status: int, exit_code: int
) -> None:
    answer = _error(code, status, f"route 'r1': {code} happened", "match.path")
    with FakeApi({("GET", "/v1/routes/r1"): answer}) as api:
        proc = gatewayctl(tmp_path, cli_env(tmp_path, api.url, TOKEN), "route", "get", "r1")
    assert proc.returncode == exit_code, proc.stderr
    assert proc.stderr.strip() == f"error: route 'r1': {code} happened (field match.path)"
    assert TOKEN not in proc.stderr + proc.stdout


def test_a_non_contract_error_still_names_the_status(tmp_path: Path) -> None:
    with FakeApi({("GET", "/v1/routes"): (502, {"detail": "bad gateway"})}) as api:
        proc = gatewayctl(tmp_path, cli_env(tmp_path, api.url, TOKEN), "route", "list")
    assert proc.returncode == 5
    assert f"the admin API at {api.url} answered 502" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_connection_refused_names_the_url_not_the_token(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = gatewayctl(tmp_path, cli_env(tmp_path, url, TOKEN), "route", "list")
    assert proc.returncode == 5
    assert proc.stderr.strip().splitlines() == [
        f"error: cannot connect to the admin API at {url}: connection refused "
        "(is `gatewayctl serve` running with --admin-address?)"
    ]
    assert TOKEN not in proc.stderr


def test_a_server_that_never_answers_times_out() -> None:
    with socket.socket() as listener:  # accepts connections (backlog), never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        client = Client(url, TOKEN, timeout=0.5)
        with pytest.raises(StoreError, match=r"did not answer within 0\.5s") as info:
            client.get("/v1/revision")
    assert TOKEN not in str(info.value)


def test_a_token_is_not_sent_in_clear_to_a_remote_host() -> None:
    from controlplane.errors import PolicyInvalid

    with pytest.raises(PolicyInvalid, match="plain HTTP to a non-loopback host"):
        Client("http://gateway.example.com:18004", TOKEN)
    Client("http://gateway.example.com:18004", TOKEN, insecure=True)  # explicit opt-in
    Client("http://localhost:18004", TOKEN)  # loopback: no network in between


def test_bad_ca_file_is_named(tmp_path: Path) -> None:
    from controlplane.errors import PolicyInvalid

    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    client = Client("https://127.0.0.1:1", TOKEN, ca_file=str(bad))
    with pytest.raises(PolicyInvalid, match=f"CA file {bad}: cannot load"):
        client.get("/v1/revision")


# -- requests -----------------------------------------------------------------------------


def test_add_posts_the_object_with_token_if_match_and_wait(tmp_path: Path) -> None:
    written = {"revision": 8, "changes": [{"op": "create", "kind": "route", "name": "r1"}]}
    answers: Canned = {("POST", "/v1/routes"): (201, {**written, "notes": ["proxy p1 slow"]})}
    with FakeApi(answers) as api:
        env = cli_env(tmp_path, api.url, TOKEN)
        args = ["route", "add", "r1", "--gateway", "public", "--path-prefix", "/a"]
        proc = gatewayctl(
            tmp_path, env, *args, "--cluster", "c1", "--wait", "--expect-revision", "7"
        )
    assert proc.returncode == 0, proc.stderr
    (req,) = api.requests
    assert req["path"] == "/v1/routes?wait=30s"
    assert req["headers"]["authorization"] == f"Bearer {TOKEN}"
    assert req["headers"]["if-match"] == '"7"'
    assert req["body"] == {
        "name": "r1",
        "gateways": ["public"],
        "match": {"path_prefix": "/a"},
        "cluster": "c1",
    }
    assert "route 'r1' created (revision 8)" in proc.stderr
    assert "note: proxy p1 slow" in proc.stderr
    assert "revision 8 is live on every connected proxy" in proc.stderr


def test_a_rejected_wait_says_the_write_stays_committed(tmp_path: Path) -> None:
    """The admin API waited and a proxy rejected the change: the answer names the revision
    the write stays committed as, and the CLI says so before the error (as a local command
    does), exit 7. An --atomic failure carries no revision: nothing of it remains."""
    message = "proxy p1 of gateway 'public' rejected Listener: cannot bind"
    body = {"error": {"code": "wait_failed", "message": message, "field": None, "revision": 9}}
    atomic = _error("wait_failed", 409, f"{message}; restored as revision 10")
    answers: Canned = {("PATCH", "/v1/gateways/public"): (409, body)}
    with FakeApi(answers) as api:
        env = cli_env(tmp_path, api.url, TOKEN)
        proc = gatewayctl(tmp_path, env, "gateway", "update", "public", "--port", "81", "--wait")
        api.answers[("PATCH", "/v1/gateways/public")] = atomic
        undone = gatewayctl(
            tmp_path, env, "gateway", "update", "public", "--port", "81", "--atomic"
        )
    assert proc.returncode == 7, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "change committed (revision 9)",
        f"error: {message}",
    ]
    assert undone.returncode == 7, undone.stderr
    assert undone.stderr.strip().splitlines() == [f"error: {message}; restored as revision 10"]


def test_update_sends_a_merge_patch_that_replaces_the_action(tmp_path: Path) -> None:
    written = {"revision": 9, "changes": [{"op": "update", "kind": "route", "name": "r1"}]}
    with FakeApi({("PATCH", "/v1/routes/r1"): (200, written)}) as api:
        env = cli_env(tmp_path, api.url, TOKEN)
        proc = gatewayctl(tmp_path, env, "route", "update", "r1", "--cluster", "v2", "--path", "/x")
    assert proc.returncode == 0, proc.stderr
    (req,) = api.requests
    assert req["method"] == "PATCH"
    assert req["headers"]["content-type"] == "application/merge-patch+json"
    assert req["body"] == {
        "cluster": "v2",
        "backends": None,
        "redirect": None,
        "direct_response": None,
        "aggregate": None,
        "match": {"path": "/x", "path_prefix": None, "path_regex": None},
    }
    assert "route 'r1' updated (revision 9)" in proc.stderr


def test_names_are_one_path_segment(tmp_path: Path) -> None:
    with FakeApi({}) as api:
        proc = gatewayctl(tmp_path, cli_env(tmp_path, api.url, TOKEN), "route", "get", "../x")
    assert proc.returncode == 3
    assert api.requests[0]["path"] == "/v1/routes/..%2Fx"


def test_apply_merges_files_and_sends_options(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("clusters:\n  - {name: c1, endpoints: ['127.0.0.1:1']}\n")
    (tmp_path / "b.json").write_text(json.dumps({"routes": [{"name": "r1", "cluster": "c1"}]}))
    change = {"op": "create", "kind": "cluster", "name": "c1", "before": None, "after": {}}
    answer = {"revision": 4, "dry_run": True, "changes": [change]}
    with FakeApi({("POST", "/v1/apply"): (200, answer)}) as api:
        env = cli_env(tmp_path, api.url, TOKEN)
        proc = gatewayctl(
            tmp_path, env, "apply", "-f", "a.yaml", "-f", "b.json", "--prune", "--dry-run"
        )
    assert proc.returncode == 0, proc.stderr
    (req,) = api.requests
    assert req["path"] == "/v1/apply?prune=true&dry_run=true"
    assert req["body"] == {
        "clusters": [{"name": "c1", "endpoints": ["127.0.0.1:1"]}],
        "routes": [{"name": "r1", "cluster": "c1"}],
    }
    assert proc.stdout == "+ cluster c1\n"
    assert "dry run: 1 change(s), nothing written" in proc.stderr


def test_apply_refuses_an_object_in_two_files_before_any_request(tmp_path: Path) -> None:
    for name in ("a.yaml", "b.yaml"):
        (tmp_path / name).write_text("clusters:\n  - {name: c1, endpoints: ['127.0.0.1:1']}\n")
    with FakeApi({}) as api:
        proc = gatewayctl(
            tmp_path, cli_env(tmp_path, api.url, TOKEN), "apply", "-f", "a.yaml", "-f", "b.yaml"
        )
    assert proc.returncode == 2
    assert "b.yaml: cluster 'c1' is also defined in a.yaml" in proc.stderr
    assert api.requests == []


def test_status_exits_8_when_a_proxy_has_a_problem(tmp_path: Path) -> None:
    proxy = {
        "node": "n1",
        "gateway": "public",
        "connected": True,
        "envoy": "1.40",
        "acked_revision": 3,
        "since_ack_s": 1.0,
        "in_sync": False,
        "last_nack": None,
        "hold": None,
        "problem": "runs revision 3, its gateway is at 4",
    }
    doc = {"revision": 4, "controllers": [], "proxies": [proxy], "problem": None}
    with FakeApi({("GET", "/v1/status"): (200, doc)}) as api:
        env = cli_env(tmp_path, api.url, TOKEN)
        as_json = gatewayctl(tmp_path, env, "status", "-o", "json")
        as_table = gatewayctl(tmp_path, env, "status")
    assert as_json.returncode == 8
    assert json.loads(as_json.stdout) == doc
    assert as_table.returncode == 8
    assert "proxy n1 (public): runs revision 3, its gateway is at 4" in as_table.stderr


def test_commands_without_an_endpoint_refuse_in_one_line(tmp_path: Path) -> None:
    with FakeApi({}) as api:
        env = cli_env(tmp_path, api.url, TOKEN)
        proc = gatewayctl(tmp_path, env, "secrets", "status")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"error: gatewayctl secrets status works on the local database only: use --db or "
        f"unset GATEWAY_URL (the current target is the admin API at {api.url})"
    )
    assert api.requests == []


def test_remote_list_json_equals_local_list_json(tmp_path: Path) -> None:
    """Local and remote ``-o json`` print through the same code: the same objects give the
    same bytes."""
    db = str(tmp_path / "gateway.db")
    env_local = {**cli_env(tmp_path), "GATEWAY_DB": db}
    assert gatewayctl(tmp_path, env_local, "init").returncode == 0
    for args in (
        ["gateway", "add", "public", "--port", "8080"],
        ["cluster", "add", "c1", "--endpoint", "127.0.0.1:9000", "--lb", "least_request"],
        ["route", "add", "r1", "--gateway", "public", "--path-prefix", "/a", "--cluster", "c1"],
    ):
        assert gatewayctl(tmp_path, env_local, *args).returncode == 0
    answers: Canned = {}
    local_out = {}
    for plural, kind in (("gateways", "gateway"), ("clusters", "cluster"), ("routes", "route")):
        local = gatewayctl(tmp_path, env_local, kind, "list", "-o", "json")
        assert local.returncode == 0, local.stderr
        local_out[kind] = local.stdout
        items = [{"kind": kind, "name": s["name"], "spec": s} for s in json.loads(local.stdout)]
        answers[("GET", f"/v1/{plural}")] = (200, {"revision": 3, "items": items})
        answers[("GET", f"/v1/{plural}/{items[0]['name']}")] = (200, {**items[0], "revision": 3})
    with FakeApi(answers) as api:
        env = cli_env(tmp_path, api.url, TOKEN)
        for kind, expected in local_out.items():
            remote = gatewayctl(tmp_path, env, kind, "list", "-o", "json")
            assert remote.returncode == 0, remote.stderr
            assert remote.stdout == expected
            name = json.loads(expected)[0]["name"]
            local_get = gatewayctl(tmp_path, env_local, kind, "get", name, "-o", "json")
            remote_get = gatewayctl(tmp_path, env, kind, "get", name, "-o", "json")
            assert remote_get.stdout == local_get.stdout


# -- contexts -----------------------------------------------------------------------------


def test_context_file_is_0600_and_holds_no_token(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    env = cli_env(tmp_path)
    proc = gatewayctl(
        tmp_path,
        env,
        "context",
        "add",
        "prod",
        "--url",
        "https://gw.example.com:18004",
        "--token-file",
        str(token_file),
    )
    assert proc.returncode == 0, proc.stderr
    path = tmp_path / "config" / "gatewayctl" / "config.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert TOKEN not in path.read_text()
    config = json.loads(path.read_text())
    assert config["current"] == "prod"
    assert config["contexts"]["prod"]["token_file"] == str(token_file)
    listing = gatewayctl(tmp_path, env, "context", "list", "-o", "json")
    shown = gatewayctl(tmp_path, env, "context", "show", "-o", "json")
    assert json.loads(shown.stdout)["url"] == "https://gw.example.com:18004"
    assert TOKEN not in listing.stdout + listing.stderr + shown.stdout + shown.stderr


def test_an_explicit_token_is_stored_with_a_warning(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    proc = gatewayctl(
        tmp_path, env, "context", "add", "dev", "--url", "http://127.0.0.1:18004", "--token", TOKEN
    )
    assert proc.returncode == 0
    assert "warning: the token of context 'dev' is stored in clear" in proc.stderr
    assert TOKEN not in proc.stderr
    path = tmp_path / "config" / "gatewayctl" / "config.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    listing = gatewayctl(tmp_path, env, "context", "list", "-o", "json")
    assert TOKEN not in listing.stdout


def test_context_use_remove_and_bad_input(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    url = "http://127.0.0.1:18004"
    assert gatewayctl(tmp_path, env, "context", "add", "a", "--url", url).returncode == 0
    assert gatewayctl(tmp_path, env, "context", "add", "b", "--url", url).returncode == 0
    assert gatewayctl(tmp_path, env, "context", "use", "b").returncode == 0
    shown = json.loads(gatewayctl(tmp_path, env, "context", "show", "-o", "json").stdout)
    assert shown["source"] == "context 'b'"
    missing = gatewayctl(tmp_path, env, "context", "use", "nope")
    assert missing.returncode == 3
    assert "context 'nope' does not exist" in missing.stderr
    bad = gatewayctl(tmp_path, env, "context", "add", "c", "--url", "ftp://x")
    assert bad.returncode == 2
    assert "--url: 'ftp://x' must be an http:// or https:// URL" in bad.stderr
    creds = gatewayctl(tmp_path, env, "context", "add", "c", "--url", "http://u:p@h:1")
    assert creds.returncode == 2
    assert "p@" not in creds.stderr
    assert gatewayctl(tmp_path, env, "context", "remove", "b").returncode == 0
    shown = json.loads(gatewayctl(tmp_path, env, "context", "show", "-o", "json").stdout)
    assert shown["mode"] == "local"  # the current context was removed


@pytest.fixture
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    for var in ("GATEWAY_URL", "GATEWAY_TOKEN", "GATEWAY_TOKEN_FILE", "GATEWAY_CONTEXT"):
        monkeypatch.delenv(var, raising=False)
    save_config(
        {
            "current": "cur",
            "contexts": {
                "cur": {"url": "http://127.0.0.1:1", "token_env": "CUR_TOKEN"},
                "named": {"url": "http://127.0.0.1:2"},
            },
        }
    )
    return tmp_path


def _url(target: Target | None) -> str | None:
    return None if target is None else target.url


def test_resolution_order(config_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _url(resolve(None, None)) == "http://127.0.0.1:1"  # the current context
    monkeypatch.setenv("GATEWAY_URL", "http://127.0.0.1:3")
    monkeypatch.setenv("GATEWAY_TOKEN", TOKEN)
    env_target = resolve(None, None)
    assert _url(env_target) == "http://127.0.0.1:3"  # GATEWAY_URL beats the current one
    assert env_target is not None and env_target.token() == TOKEN
    monkeypatch.setenv("GATEWAY_CONTEXT", "named")
    assert _url(resolve(None, None)) == "http://127.0.0.1:2"  # GATEWAY_CONTEXT beats URL
    assert _url(resolve(None, "cur")) == "http://127.0.0.1:1"  # --context beats the env
    assert resolve("/tmp/x.db", "cur") is None  # --db beats everything: local


def test_no_context_means_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    for var in ("GATEWAY_URL", "GATEWAY_CONTEXT"):
        monkeypatch.delenv(var, raising=False)
    assert resolve(None, None) is None


def test_token_sources_fail_naming_the_source(config_home: Path) -> None:
    from controlplane.errors import PolicyInvalid

    target = resolve(None, "cur")
    assert target is not None
    with pytest.raises(PolicyInvalid, match=r"environment variable CUR_TOKEN .* is not set"):
        target.token()
    missing = Target(url="http://x", source="GATEWAY_URL", token_file="/nonexistent/t")
    with pytest.raises(PolicyInvalid, match="cannot read token file /nonexistent/t"):
        missing.token()


def test_wait_check_reads_the_one_duration_grammar() -> None:
    """--wait is checked before anything runs, with the grammar of every other duration."""
    from controlplane.cli.main import _check_wait
    from controlplane.errors import PolicyInvalid

    for good in ("30s", "250ms", "1m", "1h30m", "2d", " 5 s", "90"):
        _check_wait([f"--wait={good}"])
    for bad in ("x", "0", "-1s", "5 parsecs"):
        with pytest.raises(PolicyInvalid, match="--wait"):
            _check_wait([f"--wait={bad}"])


def test_ratelimit_set_replaces_the_section_with_if_match_of_the_read(tmp_path: Path) -> None:
    """A section replaced as a whole cannot be a merge patch: the object is read and PUT
    back with If-Match of the revision read (a concurrent write -> 409, nothing lost)."""
    stored = {
        "name": "r1",
        "gateways": ["public"],
        "cluster": "c1",
        "rate_limit": {"key": "client_ip", "limits": [{"requests": 5, "per": "second"}]},
    }
    written = {"revision": 12, "changes": [{"op": "update", "kind": "route", "name": "r1"}]}
    answers: Canned = {
        ("GET", "/v1/routes/r1"): (
            200,
            {"kind": "route", "name": "r1", "spec": stored, "revision": 11},
        ),
        ("PUT", "/v1/routes/r1"): (200, written),
    }
    with FakeApi(answers) as api:
        env = cli_env(tmp_path, api.url, TOKEN)
        proc = gatewayctl(
            tmp_path, env, "ratelimit", "set", "--route", "r1", "--key", "consumer",
            "--limit", "10/minute",
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    get, put = api.requests
    assert get["method"] == "GET"
    assert put["method"] == "PUT" and put["headers"]["if-match"] == '"11"'
    assert put["body"] == {
        **stored,
        "rate_limit": {
            "key": "consumer",
            "limits": [{"requests": 10, "per": "minute"}],
            "use_plans": True,
        },
    }
    assert "rate limit of route 'r1' set (revision 12)" in proc.stderr


def test_a_framework_validation_answer_names_the_field(tmp_path: Path) -> None:
    """A 422 in FastAPI's own shape (not mapped to the contract's) still gives one line
    naming the field, exit 2."""
    detail = {"detail": [{"loc": ["body", "port"], "msg": "Input should be a valid integer"}]}
    with FakeApi({("POST", "/v1/gateways"): (422, detail)}) as api:
        env = cli_env(tmp_path, api.url, TOKEN)
        proc = gatewayctl(tmp_path, env, "gateway", "add", "g", "--port", "80")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: port: Input should be a valid integer"


@pytest.mark.parametrize(
    ("args", "command"),
    [
        (("init",), "init"),
        (("serve",), "serve"),
        (("up",), "up"),
        (("analytics-sink",), "analytics-sink"),
        (("backup", "b.bak"), "backup"),
        (("status", "--prune"), "status --prune"),
    ],
)
def test_database_commands_never_open_a_local_database_in_remote_mode(
    tmp_path: Path, args: tuple[str, ...], command: str
) -> None:
    """With GATEWAY_URL set, commands that work on a database file (or serve one) refuse
    in one line, send nothing, and create no database in HOME or the XDG folders."""
    with FakeApi({}) as api:
        env = cli_env(tmp_path, api.url, TOKEN)
        env.update(HOME=str(tmp_path / "home"), XDG_DATA_HOME=str(tmp_path / "data"))
        proc = gatewayctl(tmp_path, env, *args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        f"error: gatewayctl {command} works on the local database only: use --db or unset "
        f"GATEWAY_URL (the current target is the admin API at {api.url})"
    )
    assert api.requests == []
    assert [p for p in tmp_path.rglob("*") if p.suffix in (".db", ".bak")] == []

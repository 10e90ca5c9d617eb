"""The CLI without Envoy: bad input is refused with one line and changes nothing."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from controlplane.store import ProxyStatus, Store
from tests.e2e.harness import Cli

GOOD = """
gateways:
  - {name: public, port: 8080}
clusters:
  - {name: users, endpoints: ["127.0.0.1:9001", "users.internal:8080"], lb_policy: least_request}
  - {name: orders, endpoints: ["127.0.0.1:9002"]}
routes:
  - name: users-api
    gateway: public
    match: {path_prefix: /users, methods: [GET, POST]}
    cluster: users
    timeout: 2s
  - name: orders-canary
    gateway: public
    match: {path_prefix: /orders}
    backends: [{cluster: orders, weight: 90}, {cluster: users, weight: 10}]
"""


@pytest.fixture
def loaded(tmp_path: Path) -> Cli:
    cli = Cli(db=str(tmp_path / "gateway.db"))
    cli.run("apply", "-f", "-", input=GOOD)
    return cli


def _state(cli: Cli) -> tuple[int, str]:
    """Revision and full contents, read straight from the database."""
    store = Store(cli.db)
    try:
        return store.revision(), store.bundle().to_yaml()
    finally:
        store.close()


BAD_FILES = {
    "malformed YAML": ("routes: [", "malformed YAML"),
    "unknown field": (
        GOOD.replace("timeout: 2s", "timeout: 2s\n    colour: red"),
        "routes[0] 'users-api': colour: unknown field",
    ),
    "invalid regex": (
        GOOD.replace("path_prefix: /users", "path_regex: '/users/(['"),
        "match.path_regex: invalid RE2 regex",
    ),
    "unknown cluster": (
        GOOD.replace("cluster: users\n", "cluster: nobody\n"),
        "route 'users-api': cluster 'nobody' does not exist",
    ),
    "duplicate name": (
        GOOD.replace("name: orders,", "name: users,"),
        "clusters: duplicate name 'users'",
    ),
    "port out of range": (
        GOOD.replace("port: 8080", "port: 70000"),
        "gateways[0] 'public': port: 70000 is out of range: must be an integer from 1 to 65535",
    ),
    "wrong type": (
        GOOD.replace("port: 8080", "port: eighty"),
        "gateways[0] 'public': port: must be an integer from 1 to 65535, not a string",
    ),
    "weights sum to zero": (
        GOOD.replace("weight: 90", "weight: 0").replace("weight: 10", "weight: 0"),
        "backends: weights must add up to more than zero",
    ),
    "bad duration": (
        GOOD.replace("timeout: 2s", "timeout: soon"),
        "timeout: 'soon' is not a duration",
    ),
    "a second auth key": (
        GOOD.replace("timeout: 2s", "timeout: 2s\n    auth: {api_key: true}\n    auth: {}"),
        "stdin: duplicate key 'auth' at line 14 (first at line 13)",
    ),
    "deep nesting": ("routes: " + "[" * 50_000 + "]" * 50_000, "stdin: nested deeper than 64"),
    "redirect host with CR/LF": (
        GOOD.replace(
            "cluster: users\n", 'redirect: {host: "a.test\\r\\nset-cookie: x=1"}\n'
        ).replace("timeout: 2s", ""),
        "redirect.host: host 'a.test\\r\\nset-cookie: x=1' contains a control character",
    ),
    "route sets the consumer header": (
        GOOD.replace("timeout: 2s", "request_headers: {set: {X-Consumer-Id: admin}}"),
        "request_headers.set: 'x-consumer-id' is reserved",
    ),
}


@pytest.mark.parametrize("command", ["apply", "diff"])
def test_files_that_are_not_utf8_or_repeat_keys(loaded: Cli, tmp_path: Path, command: str) -> None:
    before = _state(loaded)
    bad = tmp_path / "bad.yaml"
    for data, expected in (
        (GOOD.encode() + b"\n# \xff\n", "not UTF-8 text (byte"),
        (GOOD.replace("port: 8080", "port: 8080, port: 8081").encode(), "duplicate key 'port'"),
    ):
        bad.write_bytes(data)
        proc = loaded.run(command, "-f", str(bad), check=False)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], proc.stderr
    assert _state(loaded) == before


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_file_changes_nothing(loaded: Cli, case: str) -> None:
    text, expected = BAD_FILES[case]
    before = _state(loaded)
    proc = loaded.run("apply", "-f", "-", input=text, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert expected in lines[0]
    assert _state(loaded) == before


BAD_COMMANDS = {
    "unknown cluster": (
        ["route", "add", "x", "--gateway", "public", "--cluster", "nobody"],
        2,
        "cluster 'nobody' does not exist",
    ),
    "invalid regex": (
        ["route", "add", "x", "--gateway", "public", "--path-regex", "(", "--cluster", "users"],
        2,
        "match.path_regex: invalid RE2 regex",
    ),
    "regex too complex for Envoy": (
        [
            "route",
            "add",
            "x",
            "--gateway",
            "public",
            "--cluster",
            "users",
            "--path-regex",
            "/(abc|def|ghi|jkl|mno|pqr|stu|vwx|yz0|123|456|789){3,9}",
        ],
        2,
        "match.path_regex: regex '/(abc|def|ghi|jkl|mno|pqr|stu|vwx|yz0|123|456|789){3,9}' is "
        "too complex for Envoy (RE2 program size 353 > 100)",
    ),
    "header Envoy cannot set": (
        ["route", "update", "users-api", "--set-request-header", "host=x"],
        2,
        "'host' is reserved",
    ),
    "duplicate name": (
        ["cluster", "add", "users", "--endpoint", "127.0.0.1:1"],
        4,
        "cluster 'users' already exists",
    ),
    "port out of range": (
        ["gateway", "add", "g2", "--port", "0"],
        2,
        "gateway 'g2': port: 0 is out of range: must be an integer from 1 to 65535",
    ),
    "bad endpoint": (["cluster", "add", "c2", "--endpoint", "nowhere"], 2, "must be host:port"),
    "delete in use": (
        ["cluster", "delete", "orders"],
        4,
        "cannot delete cluster 'orders': route 'orders-canary' uses it",
    ),
    "missing object": (
        ["route", "update", "ghost", "--timeout", "1s"],
        3,
        "route 'ghost' does not exist",
    ),
    "two actions": (
        ["route", "update", "users-api", "--direct-response", "200", "--cluster", "users"],
        2,
        "action: set exactly one of",
    ),
    "bad method": (["route", "update", "users-api", "--method", "FETCH"], 2, "match.methods[0]"),
}


@pytest.mark.parametrize("case", sorted(BAD_COMMANDS))
def test_bad_command_changes_nothing(loaded: Cli, case: str) -> None:
    args, code, expected = BAD_COMMANDS[case]
    before = _state(loaded)
    proc = loaded.run(*args, check=False)
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], proc.stderr
    assert _state(loaded) == before


def test_export_round_trips_and_diff(loaded: Cli, tmp_path: Path) -> None:
    exported = loaded.run("export").stdout
    path = tmp_path / "exported.yaml"
    path.write_text(exported)
    revision = loaded.json("status")["revision"]
    assert loaded.run("apply", "-f", str(path)).stderr.startswith("no changes")
    assert loaded.run("diff", "-f", str(path)).returncode == 0
    assert loaded.json("status")["revision"] == revision
    assert loaded.run("export").stdout == exported

    changed = exported.replace("timeout: 2s", "timeout: 3s")
    path.write_text(changed)
    diff = loaded.run("diff", "-f", str(path), check=False)
    assert diff.returncode == 1 and "~ route users-api" in diff.stdout and "2s -> 3s" in diff.stdout
    dry = loaded.run("apply", "-f", str(path), "--dry-run")
    assert "~ route users-api" in dry.stdout
    assert loaded.json("status")["revision"] == revision  # dry run wrote nothing
    loaded.run("apply", "-f", str(path))
    assert loaded.json("status")["revision"] == revision + 1
    assert loaded.run("export").stdout == changed


def test_prune_deletes_what_the_file_no_longer_names(loaded: Cli) -> None:
    smaller = GOOD.split("  - name: orders-canary")[0]
    kept = loaded.run("apply", "-f", "-", input=smaller)
    assert "orders-canary" not in kept.stdout  # without --prune nothing is deleted
    assert "orders-canary" in loaded.run("route", "list").stdout
    pruned = loaded.run("apply", "-f", "-", "--prune", input=smaller)
    assert "- route orders-canary" in pruned.stdout
    assert [r["name"] for r in loaded.json("route", "list")] == ["users-api"]


def test_update_merges_into_stored_object(loaded: Cli) -> None:
    loaded.run("route", "update", "users-api", "--retries", "2", "--set-request-header", "x-a=1")
    route = loaded.json("route", "get", "users-api")
    assert route["timeout"] == "2s"  # untouched fields stay
    assert route["retries"] == {"attempts": 2}
    assert route["request_headers"] == {"set": {"x-a": "1"}}
    loaded.run("route", "update", "orders-canary", "--cluster", "orders")
    canary = loaded.json("route", "get", "orders-canary")
    assert canary["cluster"] == "orders" and "backends" not in canary


def test_list_formats(loaded: Cli) -> None:
    table = loaded.run("cluster", "list").stdout
    assert "users" in table and "least_request" in table
    assert {c["name"] for c in loaded.json("cluster", "list")} == {"users", "orders"}
    assert "endpoints:" in loaded.run("-o", "yaml", "cluster", "get", "users").stdout


def test_a_piped_table_has_one_line_per_row(loaded: Cli) -> None:
    """Piped into grep or a log, a table used to be folded to 80 columns: a long cell went
    on over several lines, and `gatewayctl route list | grep NAME` lost the rest of it."""
    long_host = "a-very-long-host-name-that-does-not-fit." * 3 + "example.com"
    loaded.run("route", "update", "users-api", "--host", long_host)
    lines = loaded.run("route", "list").stdout.splitlines()  # stdout is a pipe here
    assert len(lines) == 2 + 2  # header, rule, one line per route
    row = next(line for line in lines if line.startswith("users-api "))
    assert long_host in row and "/users" in row


def test_output_format_after_the_subcommand(loaded: Cli) -> None:
    """``-o`` is taken before or after the subcommand, in every spelling."""
    before = loaded.run("-o", "json", "route", "list").stdout
    assert [r["name"] for r in json.loads(before)] == ["orders-canary", "users-api"]
    for flag in (["-o", "json"], ["--output", "json"], ["--output=json"], ["-ojson"]):
        assert loaded.run("route", "list", *flag).stdout == before, flag
    got = loaded.run("cluster", "get", "users", "-o", "json").stdout
    assert json.loads(got)["lb_policy"] == "least_request"
    assert json.loads(loaded.run("status", "-o", "json").stdout)["revision"] == _state(loaded)[0]
    assert (
        yaml.safe_load(loaded.run("route", "get", "users-api", "-o", "yaml").stdout)["timeout"]
        == "2s"
    )
    bad = loaded.run("route", "list", "-o", "xml", check=False)
    assert bad.returncode == 2 and "'xml' is not one of" in bad.stderr


def test_version(tmp_path: Path) -> None:
    from importlib.metadata import version

    cli = Cli(db=str(tmp_path / "absent.db"), init=False)
    proc = cli.run("--version")
    assert proc.stdout.strip() == f"gatewayctl {version('gateway-controlplane')}"
    assert not (tmp_path / "absent.db").exists()


SPLIT = {
    "a-gateways.yaml": "gateways:\n  - {name: public, port: 8080}\n",
    "b-clusters.yml": '{"clusters": [{"name": "users", "endpoints": ["127.0.0.1:9001"]}]}',
    "c-routes.json": '{"routes": [{"name": "users-api", "gateway": "public",'
    ' "match": {"path_prefix": "/users"}, "cluster": "users"}]}',
    "notes.txt": "not policy",
}


@pytest.mark.parametrize("command", ["apply", "diff"])
def test_several_files_merge(tmp_path: Path, command: str) -> None:
    """``-f a -f b`` (or a directory) is one bundle: nothing of any file is dropped."""
    cli = Cli(db=str(tmp_path / "gateway.db"))
    parts = tmp_path / "policy"
    parts.mkdir()
    for name, text in SPLIT.items():
        (parts / name).write_text(text)
    files = [str(parts / n) for n in sorted(SPLIT) if n != "notes.txt"]
    proc = cli.run(command, "-f", files[0], "-f", files[1], "-f", files[2], check=False)
    assert proc.returncode == (0 if command == "apply" else 1), proc.stderr
    for line in ("+ gateway public", "+ cluster users", "+ route users-api"):
        assert line in proc.stdout
    if command == "apply":
        assert [r["name"] for r in cli.json("route", "list")] == ["users-api"]
        assert cli.run("diff", "-f", str(parts)).returncode == 0  # the directory: same bundle
        assert cli.run("apply", "-f", str(parts), "--prune").stderr.startswith("no changes")


@pytest.mark.parametrize("command", ["apply", "diff"])
def test_several_files_defining_one_object_are_refused(
    loaded: Cli, tmp_path: Path, command: str
) -> None:
    before = _state(loaded)
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("clusters:\n  - {name: extra, endpoints: ['127.0.0.1:1']}\n")
    b.write_text("clusters:\n  - {name: extra, endpoints: ['127.0.0.1:2']}\n")
    proc = loaded.run(command, "-f", str(a), "-f", str(b), check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == f"error: {b}: cluster 'extra' is also defined in {a}"
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = loaded.run(command, "-f", str(empty), "--prune", check=False)
    assert proc.returncode == 2 and "has no *.yaml" in proc.stderr, proc.stderr
    assert _state(loaded) == before


@pytest.mark.parametrize(
    "url",
    [
        "bogus://admin:s3cret-PW@db.internal/gateway",  # no such dialect
        "mysql://admin:s3cret-PW@127.0.0.1:1/gateway",  # driver not installed
        "postgresql://admin:s3cret-PW@127.0.0.1:1/gateway",  # nothing listens
        "postgresql://admin:s3cret-PW@db.internal:notaport/gateway",  # malformed port
    ],
)
@pytest.mark.parametrize("command", [["route", "list"], ["init"], ["status"], ["apply", "-f", "-"]])
def test_errors_never_print_a_database_password(
    tmp_path: Path, url: str, command: list[str]
) -> None:
    cli = Cli(db=url, init=False)
    proc = cli.run(*command, input="{}", check=False, timeout=120)
    assert proc.returncode != 0
    assert "s3cret-PW" not in proc.stderr + proc.stdout
    assert "admin" in proc.stderr or "database" in proc.stderr, proc.stderr  # still says which


def _proxy(node: str, acked: int, **extra: object) -> ProxyStatus:
    now = time.time()
    fields: dict[str, object] = {
        "node_id": node,
        "gateway": "public",
        "controller": "ctl",
        "connected": True,
        "address": "127.0.0.1:1",
        "envoy_version": "1.40.0",
        "acked_revision": acked,
        "nack_revision": None,
        "nack_type": None,
        "nack_error": None,
        "nack_objects": None,
        "connected_at": now,
        "updated_at": now,
        "acked_at": now,
        **extra,
    }
    return ProxyStatus(**fields)  # type: ignore[arg-type]


def test_status_exit_code_says_whether_every_proxy_is_in_sync(loaded: Cli) -> None:
    """``status`` exits 8 when a connected proxy is behind beyond --grace, NACKed what it was
    sent, or is held; 0 when all are in sync (disconnected proxies do not count)."""
    store = Store(loaded.db)
    try:
        rev = store.revision()

        def status(*args: str) -> subprocess.CompletedProcess[str]:
            # a fresh heartbeat of the proxies' controller first: it is alive (dated a
            # minute ahead: a CLI start on a loaded machine must not outlast its freshness,
            # wait.STALE_AFTER, and turn this into a test of the controller's liveness)
            beat = time.time() + 60
            store.save_builds("ctl", "127.0.0.1:1", rev, {"public": (rev, None)}, beat)
            return loaded.run("status", *args, check=False)

        store.save_proxy(_proxy("good", rev))
        store.save_proxy(_proxy("gone", 0, connected=False))
        assert status().returncode == 0
        assert status("-o", "json").returncode == 0

        store.save_proxy(_proxy("late", rev - 1))  # behind: fine within the grace only
        assert status("--grace", "1h").returncode == 0
        late = status("--grace", "1ms")
        assert late.returncode == 8, late.stderr
        assert f"proxy late (public): runs revision {rev - 1}" in late.stderr
        store.save_proxy(_proxy("late", rev))

        nack = {"nack_revision": rev, "nack_type": "Cluster", "nack_error": "bad"}
        store.save_proxy(_proxy("nacking", rev - 1, **nack))
        proc = status("-o", "json", "--grace", "1h")
        assert proc.returncode == 8
        problems = {p["node"]: p["problem"] for p in json.loads(proc.stdout)["proxies"]}
        assert problems["good"] is None and problems["gone"] is None
        assert "NACK" in problems["nacking"]
        store.save_proxy(_proxy("nacking", rev, **nack))  # a later ACK supersedes the NACK
        assert status().returncode == 0

        store.save_proxy(_proxy("held", rev, hold="would roll back"))
        assert status().returncode == 8
    finally:
        store.close()

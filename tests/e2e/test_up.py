"""``gatewayctl up``: the README's first command, a working local gateway.

Every test runs the installed ``gatewayctl up`` with a real Envoy, and checks what a user
sees: the few lines it prints, the requests it serves, the ports and processes it leaves.
"""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import socket
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from controlplane.envoy_launcher import free_port

from .harness import Cli, gatewayctl_command, request, wait_until

pytestmark = pytest.mark.e2e

#: the start of a line of Envoy's own log: "[2026-12-03 16:35:49.346][22462][warning]..."
ENVOY_LOG_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+\]\[\d+\]\[")


@dataclass
class Up:
    """A running ``gatewayctl up`` and the ports it was given."""

    proc: subprocess.Popen[bytes]
    out: Path
    db: str
    port: int
    xds: int
    admin: int
    aggregator: int
    health: int
    envoy_log: Path
    children: list[int] = field(default_factory=list)

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def wait_up(self) -> None:
        wait_until(lambda: "is up" in self.output() or self.proc.poll() is not None, 90, 0.1)
        assert self.proc.poll() is None, self.output()
        self.children = child_pids(self.proc.pid)

    def ports(self) -> list[int]:
        return [self.port, self.admin, self.aggregator, self.health]


def start_up(
    tmp_path: Path,
    *extra: str,
    port: int | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> Up:
    db = str(tmp_path / "gateway.db")
    port = port or free_port()
    xds, admin, agg, health = (free_port() for _ in range(4))
    out = tmp_path / "up.out"
    envoy_log = tmp_path / "envoy.log"
    with open(out, "wb") as sink:
        proc = subprocess.Popen(
            [
                *(*gatewayctl_command(), "--db", db, "up", "--port", str(port)),
                *("--xds-port", str(xds), "--admin-port", str(admin)),
                *("--aggregator-port", str(agg), "--health-address", f"127.0.0.1:{health}"),
                *("--envoy-log", str(envoy_log), *extra),
            ],
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, "GATEWAY_DB": ""},
            start_new_session=True,
            preexec_fn=preexec_fn,
        )
    return Up(proc, out, db, port, xds, admin, agg, health, envoy_log)


@contextmanager
def running(up: Up) -> Iterator[Up]:
    """Whatever happens in the block, ``up`` and its process group end."""
    try:
        yield up
    finally:
        if up.proc.poll() is None:
            os.killpg(up.proc.pid, signal.SIGKILL)
            up.proc.wait(10)


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc: every thread's children file)."""
    pids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with open(task / "children") as f:
            pids.extend(int(p) for p in f.read().split())
    return pids


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie no init reaped yet does not: it has exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def assert_all_gone(up: Up) -> None:
    """No child of ``up`` runs and none of its ports accepts connections."""
    assert len(up.children) >= 2, up.children  # Envoy and the aggregation service
    wait_until(lambda: not any(alive(p) for p in up.children), 30, 0.1)
    wait_until(lambda: not any(listening(p) for p in up.ports()), 30, 0.1)


def test_up_serves_the_demo_and_takes_changes(tmp_path: Path) -> None:
    up = start_up(tmp_path, "--demo")
    with running(up):
        up.wait_up()
        out = up.output()
        assert f"http://127.0.0.1:{up.port}/" in out

        # the few lines a user needs, none of Envoy's own log (that is in the file named);
        # a first start adds two about the admin token
        lines = out.strip().splitlines()
        assert "admin token written to" in out
        assert len(lines) <= 10, out
        assert not [line for line in lines if ENVOY_LOG_LINE.match(line)], out
        assert f"log {up.envoy_log}" in out
        assert up.envoy_log.is_file()
        # the admin API announced is the one bound (the address may ask for port 0)
        announced = re.search(r"admin API http://127\.0\.0\.1:(\d+)/v1/", out)
        assert announced is not None and listening(int(announced.group(1))), out

        status, headers, body = request(up.port, "/hello")
        assert status == 200 and headers["x-backend"] == "demo" and body["path"] == "/hello"

        # serve's health and metrics port, on the address given (README: curl :18001/metrics)
        assert f"http://127.0.0.1:{up.health}/metrics" in out
        with urllib.request.urlopen(f"http://127.0.0.1:{up.health}/metrics", timeout=5) as resp:
            metrics = resp.read().decode()
        assert 'gateway_connected_proxies{gateway="public"} 1' in metrics, metrics
        with urllib.request.urlopen(f"http://127.0.0.1:{up.health}/healthz", timeout=5) as resp:
            assert resp.status == 200

        # the CLI changes the running gateway: same database, pushed live
        cli = Cli(db=up.db)
        cli.run(
            "route",
            "add",
            "teapot",
            "--gateway",
            "public",
            "--path",
            "/tea",
            "--direct-response",
            "418",
            "--body",
            "short and stout",
            "--wait",
        )
        status, _, body = request(up.port, "/tea")
        assert (status, body) == (418, "short and stout")
        [proxy] = cli.json("status")["proxies"]
        assert proxy["gateway"] == "public" and proxy["in_sync"]

        # Ctrl-C stops Envoy and the aggregation service too: nothing is left listening
        up.proc.send_signal(signal.SIGINT)
        assert up.proc.wait(60) == 0, up.output()
        assert_all_gone(up)


def _ignore_sigint() -> None:
    """What a non-interactive shell does to a background job (``gatewayctl up &``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _hangup_ends_it() -> None:
    """A terminal's ``up``: SIGHUP at its default, whatever the suite inherited (a suite
    run under ``nohup`` passes SIGHUP ignored down, and ``up`` rightly keeps it so)."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


@pytest.mark.parametrize(
    ("sig", "preexec", "extra"),
    [
        pytest.param(signal.SIGTERM, None, (), id="SIGTERM"),
        pytest.param(signal.SIGINT, _ignore_sigint, (), id="SIGINT-from-background-job"),
        pytest.param(
            signal.SIGHUP,
            _hangup_ends_it,
            ("--verbose",),
            id="SIGHUP-verbose",
        ),
    ],
)
def test_a_signal_to_up_stops_every_child(
    tmp_path: Path,
    sig: signal.Signals,
    preexec: Callable[[], None] | None,
    extra: tuple[str, ...],
) -> None:
    up = start_up(tmp_path, *extra, preexec_fn=preexec)
    with running(up):
        up.wait_up()
        assert [p for p in up.ports() if not listening(p)] == []
        if extra:  # --verbose: Envoy's log at info level on the terminal instead
            assert any(ENVOY_LOG_LINE.match(line) for line in up.output().splitlines())
            assert "starting main dispatch loop" in up.output()
        up.proc.send_signal(sig)
        assert up.proc.wait(60) == 0, up.output()
        assert f"stopped ({sig.name})" in up.output()
        assert_all_gone(up)


def test_children_do_not_outlive_a_killed_up(tmp_path: Path) -> None:
    """SIGKILL leaves ``up`` no chance to clean up: the kernel's parent-death signal does."""
    up = start_up(tmp_path)
    with running(up):
        up.wait_up()
        up.proc.kill()  # only `up` itself, not its process group
        up.proc.wait(10)
        assert_all_gone(up)


def test_up_port_changes_a_stored_gateway(tmp_path: Path) -> None:
    """--port against a database whose gateway listens elsewhere: the gateway moves to the
    port asked for, as one recorded change that ``up`` reports."""
    cli = Cli(db=str(tmp_path / "gateway.db"))
    stored, wanted = free_port(), free_port()
    cli.add_gateway("public", stored)
    cli.run(
        *("route", "add", "ping", "--gateway", "public", "--path", "/ping"),
        *("--direct-response", "200", "--body", "pong"),
    )
    up = start_up(tmp_path, port=wanted)
    with running(up):
        up.wait_up()
        out = up.output()
        assert f"changed gateway 'public' port {stored} -> {wanted}" in out, out
        assert f"http://127.0.0.1:{wanted}/" in out
        assert cli.json("gateway", "get", "public")["port"] == wanted
        status, _, body = request(wanted, "/ping")
        assert (status, body) == (200, "pong")
        assert not listening(stored)
        up.proc.send_signal(signal.SIGTERM)
        assert up.proc.wait(60) == 0


def test_up_exits_non_zero_when_envoy_cannot_bind_the_port(tmp_path: Path) -> None:
    """Envoy rejects a listener whose port is taken and still reports ready: ``up`` says
    why and exits, rather than announcing a gateway that serves nothing."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        up = start_up(tmp_path, port=port)
        with running(up):
            code = up.proc.wait(120)
            out = up.output()
            assert code == 7, out  # WaitFailed: a proxy rejected the configuration
            assert "is up" not in out
            assert "Address already in use" in out, out
            assert len(out.strip().splitlines()) <= 8, (
                out
            )  # two lines of them: the admin token of a first start
            # Envoy's own account of it is in its log file, not on the terminal
            assert "rejected" in up.envoy_log.read_text(), up.envoy_log.read_text()
    # nothing it started is left listening
    wait_until(lambda: not any(listening(p) for p in (up.admin, up.aggregator, up.health)), 30)


def test_ctrl_c_at_a_terminal_stops_up_and_its_children(tmp_path: Path) -> None:
    """The everyday case: ``up`` in the foreground of a terminal, the user presses Ctrl-C
    (the terminal sends SIGINT to the whole foreground process group)."""
    db = str(tmp_path / "gateway.db")
    port, xds, admin, agg, health = (free_port() for _ in range(5))
    args = [
        *(*gatewayctl_command(), "--db", db, "up", "--port", str(port)),
        *("--xds-port", str(xds), "--admin-port", str(admin), "--aggregator-port", str(agg)),
        *("--health-address", f"127.0.0.1:{health}", "--envoy-log", str(tmp_path / "e.log")),
    ]
    env = {**os.environ, "GATEWAY_DB": ""}
    pid, fd = pty.fork()
    if pid == 0:  # the child: a session leader whose controlling terminal is the pty
        try:
            os.execve(args[0], args, env)
        finally:
            os._exit(127)
    output = bytearray()
    status: list[int] = []

    def read_some() -> None:
        """What the terminal shows so far (waits at most 0.2 s for more)."""
        if select.select([fd], [], [], 0.2)[0]:
            with suppress(OSError):  # EIO: nothing holds the terminal any more
                output.extend(os.read(fd, 65536))

    def exited() -> bool:
        read_some()
        done, code = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            status.append(code)
        return bool(status)

    try:
        wait_until(lambda: read_some() or b"is up" in output or exited(), 90, 0)
        assert b"is up" in output, output.decode(errors="replace")
        children = child_pids(pid)
        assert len(children) >= 2
        os.write(fd, b"\x03")  # Ctrl-C
        wait_until(exited, 60, 0)
        read_some()
    finally:
        if not status:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status[0]) == 0
    text = output.decode(errors="replace")
    assert "stopped (SIGINT)" in text and "Traceback" not in text, text
    wait_until(lambda: not any(alive(p) for p in children), 30, 0.1)
    wait_until(lambda: not any(listening(p) for p in (port, admin, agg, health)), 30, 0.1)


def test_a_taken_health_port_is_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        health = taken.getsockname()[1]
        up = subprocess.run(
            [
                *(*gatewayctl_command(), "--db", str(tmp_path / "g.db"), "up"),
                *("--port", str(free_port()), "--xds-port", str(free_port())),
                *("--admin-port", str(free_port()), "--aggregator-port", str(free_port())),
                *("--health-address", f"127.0.0.1:{health}"),
                *("--envoy-log", str(tmp_path / "envoy.log")),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "GATEWAY_DB": ""},
        )
    assert up.returncode == 1, up.stderr
    [error] = [line for line in up.stderr.splitlines() if line.startswith("error:")]
    assert "address already in use" in error.lower(), error
    assert f"--health-address 127.0.0.1:{health}" in error
    assert "Traceback" not in up.stderr and "is up" not in up.stderr

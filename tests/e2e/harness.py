"""Processes for end-to-end tests: the real CLI, the real controller, real Envoys.

Everything runs on loopback with ephemeral ports, started the same way a user starts it:
``gatewayctl serve`` and ``envoy/run-envoy.sh`` (the bootstrap docker-compose uses).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controlplane.envoy_launcher import EnvoySpec, free_port, server_info, start_envoy, wait_ready


def gatewayctl_command() -> list[str]:
    """The installed console script next to this interpreter, as a user would run it."""
    script = Path(sys.executable).with_name("gatewayctl")
    if script.exists():
        return [str(script)]
    found = shutil.which("gatewayctl")
    return [found] if found else [sys.executable, "-m", "controlplane.cli"]


#: commands that work on the database file itself (or run a server of their own): always
#: run against ``--db``, never through a controller's admin API
LOCAL_ONLY = frozenset(
    {
        "init",
        "serve",
        "up",
        "aggregator",
        "analytics-sink",
        "context",
        "backup",
        "restore",
        "secrets",
    }
)


#: the CLI's options that come before the command and take a value
_VALUED = frozenset({"-o", "--output", "--db", "--context"})


def _command(args: tuple[str, ...]) -> str:
    """The subcommand of a ``gatewayctl`` argument list ("" for none)."""
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in _VALUED:
            skip = True
        elif not arg.startswith("-"):
            return arg
    return ""


@dataclass
class Cli:
    """``gatewayctl`` against one database. The database is created (``gatewayctl init``,
    in-process for speed) unless ``init`` is False: no command creates it implicitly.

    While a :class:`Controller` of this database runs (and serves its admin API on the
    harness's port), commands go to that API with the controller's bootstrap admin token,
    as an operator's CLI does (``GATEWAY_URL``/``GATEWAY_TOKEN``); otherwise, and for the
    commands in :data:`LOCAL_ONLY` or with an explicit ``--db``, they open the database.
    ``E2E_CLI=local`` keeps every command local (to compare the two paths)."""

    db: str
    env: dict[str, str] = field(default_factory=dict)
    init: bool = True
    #: the controller whose admin API the commands go to while it runs, or None
    server: Controller | None = None

    def __post_init__(self) -> None:
        if self.init:
            from controlplane.store import Store

            Store(self.db, create=True).close()

    def environment(self, args: tuple[str, ...]) -> dict[str, str]:
        """The environment one command runs with: remote or local (see the class)."""
        env = {**os.environ, "GATEWAY_DB": self.db, **self.env}
        remote = None if self.server is None else self.server.remote()
        if (
            remote is not None
            and _command(args) not in LOCAL_ONLY
            and not any(a == "--db" or a.startswith("--db=") for a in args)
            and "GATEWAY_URL" not in self.env
            and "GATEWAY_CONTEXT" not in self.env
        ):
            del env["GATEWAY_DB"]
            env["GATEWAY_URL"], env["GATEWAY_TOKEN"] = remote
        return env

    def run(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        env = self.environment(args)
        proc = subprocess.run(
            [*gatewayctl_command(), *args],
            env=env,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        # ``status`` exits 8 when a proxy is out of sync: its output is still the answer
        accepted = (0, 8) if "status" in args else (0,)
        if check and proc.returncode not in accepted:
            raise AssertionError(
                f"gatewayctl {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}{proc.stdout}"
            )
        return proc

    def add_gateway(self, name: str, port: int, *extra: str) -> None:
        self.run("gateway", "add", name, "--port", str(port), "--address", "127.0.0.1", *extra)

    def add_route(self, name: str, gateway: str, prefix: str, cluster: str, *extra: str) -> None:
        self.run(
            "route",
            "add",
            name,
            "--gateway",
            gateway,
            "--path-prefix",
            prefix,
            "--cluster",
            cluster,
            *extra,
        )

    def json(self, *args: str) -> Any:
        return json.loads(self.run("-o", "json", *args).stdout)


class Controller:
    """``gatewayctl serve`` as a child process; can be killed and restarted on the same ports."""

    def __init__(self, cli: Cli, log_dir: Path, args: tuple[str, ...] = ()) -> None:
        self.cli = cli
        self.args = args  # extra ``serve`` options
        self.xds_port = free_port()
        self.health_port = free_port()
        self.admin_port = free_port()
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        #: (admin API URL, bootstrap admin token) for the CLI, once known (``_serve_cli``)
        self._admin: tuple[str, str] | None = None

    def start(self, timeout: float = 20) -> None:
        self.starts += 1
        log = open(self.log_dir / f"controller-{self.starts}.log", "wb")  # noqa: SIM115
        env = {**os.environ, "GATEWAY_DB": self.cli.db}
        self.proc = subprocess.Popen(
            [
                *gatewayctl_command(),
                "serve",
                "--xds-address",
                f"127.0.0.1:{self.xds_port}",
                "--health-address",
                f"127.0.0.1:{self.health_port}",
                *(
                    ()
                    if any(a.startswith("--admin-address") for a in self.args)
                    else ("--admin-address", f"127.0.0.1:{self.admin_port}")
                ),
                *self.args,
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"controller exited {self.proc.returncode}: {self.log()}")
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.health_port}/healthz", timeout=1
                ) as resp:
                    if resp.status == 200:
                        self._serve_cli()
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"controller not healthy after {timeout}s: {self.log()}")

    def _serve_cli(self) -> None:
        """Point the CLI at this controller's admin API (see :class:`Cli`) when it serves
        one on the harness's port with the bootstrap token of a database file: the token
        ``serve`` wrote next to the database on its first start."""
        if os.environ.get("E2E_CLI") == "local" or any(a.startswith("--admin") for a in self.args):
            return
        token_file = Path(self.cli.db).parent / "admin-token"
        if "://" in self.cli.db or not token_file.is_file():
            return
        url, token = f"http://127.0.0.1:{self.admin_port}", token_file.read_text().strip()
        # the file may hold another database's token (two databases in one folder)
        ask = urllib.request.Request(
            f"{url}/v1/revision", headers={"Authorization": f"Bearer {token}"}
        )
        try:
            with urllib.request.urlopen(ask, timeout=10) as resp:
                if resp.status != 200:
                    return
        except OSError:
            return
        self._admin = (url, token)
        self.cli.server = self

    def remote(self) -> tuple[str, str] | None:
        """(admin API URL, admin token) while this controller runs and serves its API."""
        if self._admin is None or self.proc is None or self.proc.poll() is not None:
            return None
        return self._admin

    def _local_cli(self) -> None:
        """The controller is gone: the CLI opens the database again."""
        if self.cli.server is self:
            self.cli.server = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._local_cli()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self._local_cli()

    def log(self) -> str:
        path = self.log_dir / f"controller-{self.starts}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


class Envoy:
    def __init__(
        self,
        gateway: str,
        node_id: str,
        xds_port: int,
        log_dir: Path,
        *,
        wait: bool = True,
        **spec_fields: Any,
    ) -> None:
        self.admin_port = free_port()
        self.spec = EnvoySpec(
            node_id=node_id,
            gateway=gateway,
            xds_host="127.0.0.1",
            xds_port=xds_port,
            admin_port=self.admin_port,
            log_level="warning",
            **spec_fields,
        )
        self.log_path = log_dir / f"envoy-{node_id}.log"
        self.proc = start_envoy(
            self.spec,
            log_path=self.log_path,
            rendered=log_dir / f"envoy-bootstrap-{node_id}-{self.admin_port}.yaml",
        )
        if wait:
            wait_ready(self.admin_port, 40, process=self.proc)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def uptime(self) -> int:
        return int(server_info(self.admin_port)["uptime_current_epoch"].rstrip("s"))  # type: ignore[union-attr]

    def info(self) -> dict[str, Any]:
        return server_info(self.admin_port)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def request(
    port: int,
    path: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    timeout: float = 5,
    body: str | bytes | None = None,
) -> tuple[int, dict[str, str], Any]:
    """One request through Envoy on a new connection: (status, headers, JSON body or text)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        hdrs = {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()
    try:
        body: Any = json.loads(data)
    except ValueError:
        body = data.decode(errors="replace")
    return resp.status, hdrs, body


def wait_until(predicate: Any, timeout: float = 10, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value {last!r})")


def wait_connected(cli: Cli, proxies: int, timeout: float = 30) -> None:
    """Wait until ``proxies`` proxies have a stream to a running controller. A write's
    ``--wait`` waits only for connected proxies: right after a controller (re)starts, an
    Envoy still in its reconnect backoff is not waited for, and would answer from the
    configuration it had."""

    def connected() -> list[bool]:
        return [p["connected"] for p in cli.json("status")["proxies"]]  # exit 8 accepted

    wait_until(lambda: connected() == [True] * proxies, timeout, 0.1)


def clear_of_boundary(period: int, margin: float) -> None:
    """Wait for the UTC ``period`` (3600: the hour, 86400: the day) to turn if it would
    within ``margin`` seconds. A test that spends an hour's or a day's quota, or reads "this
    hour" back, would otherwise see the quota reset or the period change half way."""
    left = period - time.time() % period
    if left < margin:
        time.sleep(left + 1)


def backend_of(port: int, path: str) -> str | int:
    """Which echo backend answered, or the status when none did."""
    status, headers, _ = request(port, path)
    return headers.get("x-backend", status) if status == 200 else status


class Remote:
    """``gatewayctl`` with only the URL and a token, in a directory of its own whose HOME
    and XDG folders are inside it (so a database created by mistake would be seen)."""

    def __init__(self, url: str, token: str, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        self.env.update(
            GATEWAY_URL=url,
            GATEWAY_TOKEN=token,
            HOME=str(workdir / "home"),
            XDG_CONFIG_HOME=str(workdir / "config"),
            XDG_DATA_HOME=str(workdir / "data"),
            XDG_STATE_HOME=str(workdir / "state"),
        )

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [*gatewayctl_command(), *args],
            env=self.env,
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"gatewayctl {' '.join(args)} exited {proc.returncode}: {proc.stderr}"
            )
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "-o", "json").stdout)


class KeepAliveLoad:
    """Clients that each request their path in a loop on one keep-alive connection until
    the block ends, counting outcomes: "2xx", "status N" or "error ExceptionName". A
    connection that fails is replaced, so every failure is counted once."""

    def __init__(
        self, port: int, paths: list[str], headers: dict[str, dict[str, str]] | None = None
    ) -> None:
        self.port = port
        self.paths = paths
        #: request headers per path (credentials), sent with every request to that path
        self.headers = headers or {}
        self.outcomes: Counter[str] = Counter()
        #: outcomes per path, to say which client failed
        self.by_path: dict[str, Counter[str]] = {p: Counter() for p in paths}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(p,)) for p in paths]

    def __enter__(self) -> KeepAliveLoad:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def more(self, count: int, timeout: float = 10) -> None:
        """Wait until ``count`` more requests have succeeded."""
        seen = self.outcomes["2xx"]
        wait_until(lambda: self.outcomes["2xx"] >= seen + count, timeout)

    def _client(self, path: str) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        headers = self.headers.get(path, {})
        while not self._stop.is_set():
            try:
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
                resp.read()
                ok = 200 <= resp.status < 300
                outcome = "2xx" if ok else f"status {resp.status}"
            except (OSError, http.client.HTTPException) as exc:
                outcome = f"error {type(exc).__name__}"
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            self.outcomes[outcome] += 1
            self.by_path[path][outcome] += 1
        conn.close()

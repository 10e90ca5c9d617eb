"""The parts of ``gatewayctl up`` (controller + one local Envoy) that are more than wiring.

Kept apart from the CLI module so the command stays a short sequence of steps, and so the
CLI module imports none of this (policy, store, controller) until ``up`` runs.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
import sys
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from .errors import GatewayError, NotFound, WaitFailed
from .policy import Gateway
from .store import Store
from .supervise import Children, StopSignals

if TYPE_CHECKING:
    from .controller import Controller

__all__ = [
    "LocalRun",
    "default_envoy_log",
    "ensure_gateway",
    "log_tail",
    "prepare_log",
    "wait_confirmed",
    "wait_listening",
]

#: 8080: the port of a gateway ``up`` creates when --port is not given
DEFAULT_PORT = 8080


def default_envoy_log(gateway: str, admin_port: int) -> Path:
    """Where Envoy's log goes under ``up``: $XDG_STATE_HOME/gatewayctl (~/.local/state by
    default), a directory only its owner can read, one file per gateway and admin port so
    two ``up`` runs side by side do not share one."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    directory = Path(base) / "gatewayctl"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    return directory / f"envoy-{gateway}-{admin_port}.log"


def prepare_log(path: Path) -> None:
    """Start ``path`` empty (this run's log only), readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # a file kept from before keeps its mode otherwise
    finally:
        os.close(fd)


def ensure_gateway(store: Store, name: str, port: int | None) -> tuple[Gateway, str | None]:
    """The gateway ``up`` serves, created or brought to ``port``; and what was done, if any.

    --port names the port the user wants to send requests to, so a stored gateway on
    another port is changed to it: one recorded change, reported, never silent. Without
    --port a stored gateway keeps its port; a new one gets 8080.
    """
    try:
        gw = cast(Gateway, store.get("gateway", name))
    except NotFound:
        gw = Gateway(name=name, port=port or DEFAULT_PORT, address="127.0.0.1")
        store.create(gw)
        return gw, f"created gateway {name!r} on 127.0.0.1:{gw.port}"
    if port is None or port == gw.port:
        return gw, None
    old = gw.port

    def patch(spec: dict[str, Any]) -> dict[str, Any]:
        return {**spec, "port": port}

    result = store.update("gateway", name, patch)
    gw = cast(Gateway, store.get("gateway", name))
    return gw, (
        f"changed gateway {name!r} port {old} -> {gw.port} (--port; revision {result.revision})"
    )


async def wait_confirmed(
    controller: Controller,
    gateway: str,
    node_id: str,
    envoy: subprocess.Popen[bytes],
    timeout: float = 60.0,
) -> None:
    """Return once the local Envoy ACKed the gateway's configuration; raise if it rejected
    it (a listener port it cannot bind, ...) or the configuration does not build.

    Envoy reports ready even when it rejected its listeners, so readiness alone would let
    ``up`` announce a gateway that serves nothing.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        error = controller.runner.builds().get(gateway, (0, None))[1]
        if error is not None:
            raise GatewayError(f"gateway {gateway!r} cannot be served: {error}")
        if envoy.poll() is not None:
            raise GatewayError(f"Envoy exited with code {envoy.returncode}")
        proxy = next(
            (
                s.proxy
                for s in controller.ads.active
                if s.proxy is not None and s.proxy.node_id == node_id
            ),
            None,
        )
        if proxy is not None:
            if proxy.nack_error:
                raise WaitFailed(
                    f"gateway {gateway!r}: Envoy rejected its {proxy.nack_type}: {proxy.nack_error}"
                )
            if proxy.hold:
                raise WaitFailed(f"gateway {gateway!r}: Envoy not served: {proxy.hold}")
            withheld = controller.cache.withheld(gateway)
            if not withheld and proxy.acked_revision >= controller.cache.get(gateway).revision:
                return
        if loop.time() >= deadline:
            raise WaitFailed(
                f"gateway {gateway!r}: Envoy did not acknowledge its configuration "
                f"within {timeout:.0f} s"
            )
        await asyncio.sleep(0.1)


async def wait_listening(
    port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 60.0
) -> None:
    """Return once 127.0.0.1:``port`` accepts connections; raise if ``proc`` exits first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if proc.poll() is not None:
            raise GatewayError(f"{what} exited with code {proc.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if loop.time() >= deadline:
                raise GatewayError(
                    f"{what} not listening on 127.0.0.1:{port} after {timeout:.0f} s"
                ) from None
            await asyncio.sleep(0.1)
            continue
        writer.close()
        with suppress(OSError):
            await writer.wait_closed()
        return


def log_tail(path: Path, lines: int = 5) -> str:
    """The last lines of a log file, for an error message (empty if unreadable)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _failure(exc: Exception, envoy_log: Path | None) -> GatewayError:
    """``exc`` as a one-line error of the same exit code, naming Envoy's log and its last line."""
    message = str(exc)
    if envoy_log is not None:
        last = log_tail(envoy_log, 1)
        message += f" (Envoy's log: {envoy_log}" + (f"; last line: {last})" if last else ")")
    cls = type(exc) if isinstance(exc, GatewayError) else GatewayError
    return cls(message)


@dataclass
class LocalRun:
    """One ``up``: a controller in this process, Envoy and the aggregation service as
    children tied to it, until a signal or a failure ends them all."""

    store_url: str
    db: str | None
    gateway: Gateway
    xds_port: int
    health_address: str | None
    admin_port: int
    aggregator_port: int
    #: Envoy's own log file; None: the terminal, at info level (--verbose)
    envoy_log: Path | None
    demo: bool
    #: where a first start writes the admin token (None: the default next to the database)
    admin_token_file: str | None = None
    #: the controller's admin API (loopback); None: not served
    admin_address: str | None = None
    _demo_server: Any = None

    @property
    def node_id(self) -> str:
        return f"{self.gateway.name}-local"

    def prepare_demo(self, store: Store) -> None:
        """--demo: an echo backend in this process, and a route of the gateway to it."""
        if not self.demo:
            note = stale_demo_note(store)
            if note is not None:
                _say(f"note: {note}")
            return
        from .demo.echo import EchoServer
        from .policy import Cluster, Route

        self._demo_server = EchoServer("demo").start()
        cluster = Cluster(name="demo", endpoints=[f"127.0.0.1:{self._demo_server.port}"])
        route = Route(name="demo", gateways=[self.gateway.name], cluster="demo")
        store.apply_objects([cluster, route])

    async def main(self) -> None:
        """Serve until SIGINT/SIGTERM/SIGHUP (exit 0) or a failure (raised)."""
        stop = StopSignals(asyncio.get_running_loop())
        work = asyncio.create_task(self._serve())
        stopper = asyncio.create_task(stop.event.wait())
        try:
            await asyncio.wait({work, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            work.cancel()
            try:
                await work  # re-raises what ended it
            except asyncio.CancelledError:
                pass
            except GatewayError:
                if not stop.event.is_set():  # a failure while stopping is the stop's
                    raise
            finally:
                stop.close()
        if stop.name:
            _say(f"stopped ({stop.name}): Envoy and the aggregation service with it")

    async def _serve(self) -> None:
        from .controller import Controller
        from .envoy_launcher import EnvoySpec, start_envoy, wait_ready
        from .settings import Settings

        controller = Controller(
            Settings(
                db=self.db,
                xds_address=f"127.0.0.1:{self.xds_port}",
                health_address=self.health_address,
                aggregator=f"127.0.0.1:{self.aggregator_port}",
                aggregation_address="127.0.0.1",
                admin_token_file=self.admin_token_file,
                admin_address=self.admin_address,
            )
        )
        if controller.admin_token_file is not None:
            _say(
                "use it with the admin API: "
                f"export GATEWAY_TOKEN=$(cat {shlex.quote(str(controller.admin_token_file))})"
            )
        try:
            await controller.start()
        except OSError as exc:  # a port taken: --xds-port or --health-address
            await controller.stop()
            raise GatewayError(
                f"controller cannot start: {exc.strerror or exc} (--xds-port {self.xds_port}, "
                f"--health-address {self.health_address or 'off'})"
            ) from None
        task = asyncio.create_task(controller.run())
        children = Children()
        try:
            # the aggregation service for aggregate routes, as its own process (as deployed)
            aggregator = children.start(
                [
                    *(sys.executable, "-m", "controlplane.cli", "aggregator"),
                    *("--host", "127.0.0.1", "--port", str(self.aggregator_port)),
                    *("--log-level", "warning"),
                ]
            )
            spec = EnvoySpec(
                node_id=self.node_id,
                gateway=self.gateway.name,
                xds_host="127.0.0.1",
                xds_port=self.xds_port,
                admin_port=self.admin_port,
                log_level="info" if self.envoy_log is None else "warning",
            )
            envoy = children.adopt(start_envoy(spec, envoy_log=self.envoy_log, tie_to_parent=True))
            try:
                await asyncio.to_thread(wait_ready, self.admin_port, 60.0, process=envoy)
                await wait_confirmed(controller, self.gateway.name, self.node_id, envoy)
                await wait_listening(self.aggregator_port, aggregator, "the aggregation service")
            except (GatewayError, RuntimeError, TimeoutError) as exc:
                raise _failure(exc, self.envoy_log) from None
            self._announce(envoy.pid, aggregator.pid, controller.health_port, controller.admin_port)
            while envoy.poll() is None:
                await asyncio.sleep(0.5)
            raise _failure(
                GatewayError(f"Envoy exited with code {envoy.returncode}"), self.envoy_log
            )
        finally:
            # bounded as `serve`'s stop is (controller.SHUTDOWN_DEADLINE_S): the children
            # are stopped off the event loop, the controller's steps share a deadline
            await asyncio.to_thread(children.stop, 5.0)
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
            await controller.stop(deadline=time.monotonic() + 3.5)
            if self._demo_server is not None:
                self._demo_server.stop()

    def _announce(
        self, envoy_pid: int, aggregator_pid: int, health_port: int, admin_port: int | None
    ) -> None:
        """The few lines ``up`` prints once the gateway serves."""
        gw = self.gateway
        host = gw.address if gw.address != "0.0.0.0" else "127.0.0.1"
        log = (
            f"log {self.envoy_log} (warnings; --verbose for more)"
            if self.envoy_log is not None
            else "log on this terminal"
        )
        health = (
            f", health and metrics http://{self.health_address.rpartition(':')[0]}:{health_port}/metrics"
            if self.health_address
            else ""
        )
        _say(f"gateway {gw.name!r} is up: send requests to http://{host}:{gw.port}/")
        _say(f"  Envoy pid {envoy_pid}, admin http://127.0.0.1:{self.admin_port}/, {log}")
        admin = (  # the port bound (the address may say 0: any free port)
            f", admin API http://{self.admin_address.rpartition(':')[0]}:{admin_port}/v1/"
            if self.admin_address and admin_port
            else ""
        )
        where = f"policy in {self.store_url}"
        _say(f"  controller: xDS 127.0.0.1:{self.xds_port}{health}{admin}; {where}")
        _say(f"  aggregation service 127.0.0.1:{self.aggregator_port} (pid {aggregator_pid})")
        if self._demo_server is not None:
            _say(f"try: curl http://{host}:{gw.port}/hello")
        _say("Ctrl-C stops.")


def stale_demo_note(store: Store) -> str | None:
    """Why the demo route answers 503 when `up` runs without --demo after an `up --demo`:
    the echo backend lived in that earlier process, its cluster still names its port."""
    import socket

    from .policy import Cluster
    from .policy.common import parse_hostport

    try:
        cluster = store.get("cluster", "demo")
    except NotFound:
        return None
    if not isinstance(cluster, Cluster) or len(cluster.endpoints) != 1:
        return None
    host, port = parse_hostport(cluster.endpoints[0])  # validated when it was stored
    if host != "127.0.0.1":
        return None
    try:
        socket.create_connection((host, port), timeout=0.5).close()
    except OSError:
        return (
            f"cluster 'demo' goes to {host}:{port}, where nothing listens: the backend of an "
            "earlier `up --demo`, which runs only with --demo (its routes answer 503 without it)"
        )
    return None


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)

"""The controller process: load state, then serve ADS and a small health/status endpoint.

Ordering matters: the full state is loaded and translated before the gRPC port opens, so
a restarted controller never answers an Envoy with less than what it was running.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Awaitable
from contextlib import suppress

import grpc

from .analytics.scope import Scope
from .analytics.sink import AccessLogSink
from .api.app import create_app, create_health_app
from .api.server import HttpService, warm_routes
from .api.status import HealthSource
from .errors import GatewayError
from .metrics import CheckMetrics, Registry
from .runner import Runner
from .settings import Settings
from .store import Store
from .store.history import parse_retention
from .store.repository import display_url
from .store.tokens import bootstrap_admin
from .supervise import wake_loop_on_signals
from .translate.aggregate import aggregation_target
from .xds import AdsServer, SnapshotCache, StatusRecorder
from .xds.admission import SERVER_OPTIONS as ADMISSION_OPTIONS
from .xds.admission import SLOT_TIMEOUT, InitialSyncGate
from .xds.gcdefer import FullCollectionDeferral
from .xds.metrics import XdsMetrics
from .xds.mtls import HandshakeCounter, StreamAuthorizer, check_bind, server_credentials

__all__ = ["SHUTDOWN_DEADLINE_S", "Controller", "serve"]

log = logging.getLogger(__name__)

#: ``serve`` has exited this long after SIGTERM or SIGINT, whatever it was doing
SHUTDOWN_DEADLINE_S = 5.0
#: the orderly part: stop the watchers, close the ports, end the ADS streams, write proxy
#: status; a step still running when it is used up is abandoned (status is best effort)
SHUTDOWN_BUDGET_S = 3.5
#: then the process ends even if a thread (a status write waiting on a database another
#: writer holds, up to its 10 s busy timeout per row) or a task has not finished
_HARD_EXIT_S = 4.5


class Controller:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # refused before anything is opened or written: a plaintext port beyond loopback
        files = (settings.xds_tls_cert, settings.xds_tls_key, settings.xds_client_ca)
        #: TLS handshakes gRPC starts on the xDS port (mutual TLS only; ADR 0036)
        self.handshakes = HandshakeCounter()
        # the TLS files are read and checked now: an incomplete set, a key that does not
        # match its certificate... is the one-line error before anything is opened or written
        self._xds_credentials = self._credentials()
        tls = all(files)
        self._exposed = check_bind(
            "--xds-address",
            settings.xds_address,
            tls=tls,
            insecure=settings.insecure,
            tls_options="--xds-tls-cert/--xds-tls-key/--xds-client-ca",
        )
        self._admin_tls = self._admin_tls_files()
        self._admin_exposed = bool(settings.admin_address) and check_bind(
            "--admin-address",
            settings.admin_address or "",
            tls=self._admin_tls is not None,
            insecure=settings.insecure,
            tls_options="--admin-tls-cert/--admin-tls-key",
        )
        self.id = settings.controller_id or f"{socket.gethostname()}-{os.getpid()}"
        from .validate import EnvoyValidator

        #: admin API writes are checked by Envoy before commit, as the CLI's (ADR 0030);
        #: one validator process is kept started ahead of the next write (ADR 0037)
        self.validator = EnvoyValidator(
            settings.validate_mode, settings=settings, warn=log.warning, warm=True
        )
        self.store = Store(settings.db, create=settings.create_database, validator=self.validator)
        if self.store.created:
            log.warning("created database %s (--create)", display_url(self.store.url))
        #: the file the first admin token was written to on this start (None: an admin
        #: token already existed)
        self.admin_token_file = bootstrap_admin(self.store, settings.admin_token_file)
        self.cache = SnapshotCache()
        self.recorder = StatusRecorder(self.store, self.id, pushes_done=self.cache.pushes_done)
        self.runner = Runner(
            self.store,
            self.cache,
            controller=self.id,
            xds_address=settings.xds_address,
            poll_interval=settings.poll_interval,
            aggregation=aggregation_target(settings),
            shard_from=settings.route_shards_from,
            proxy_expiry=settings.proxy_expiry,
            sink_tls=tls,
            history_retention=parse_retention(settings.history_retention),
        )
        self.runner.allow_rollback = self.cache.allow_rollback = settings.allow_rollback
        self.metrics = Registry()
        self.validator.observer = CheckMetrics(self.metrics)
        #: with mutual TLS, each ADS and access-log stream's certificate must permit the
        #: gateway and node id it claims (ADR 0018); without it, every client is trusted
        self.authorizer = StreamAuthorizer(required=tls)
        #: first syncs in flight at once: a fleet reconnecting together is served in order
        #: (xds/admission.py, ADR 0053)
        self.gate = InitialSyncGate(settings.max_initial_syncs, deferral=FullCollectionDeferral())
        self.ads = AdsServer(
            self.cache, self.recorder, XdsMetrics(self.metrics), self.authorizer, self.gate
        )
        self.metrics.gauge(
            "gateway_connected_proxies",
            "Proxies with an open ADS stream to this controller, per gateway.",
            lambda: {(g,): float(n) for g, n in self.ads.connected().items()},
            ("gateway",),
        )
        self.metrics.gauge(
            "gateway_policy_revision",
            "The policy revision this controller has translated and serves.",
            lambda: float(self.runner.revision),
        )
        self.metrics.gauge(
            "gateway_store_refusals",
            "Times the database was refused since start: removed, replaced by another "
            "database or an older copy (the policy in memory stays served).",
            lambda: float(self.runner.store_refusals),
        )
        self.metrics.gauge(
            "gateway_streams_held",
            "ADS streams held because answering would roll the proxy back.",
            lambda: float(sum(1 for s in self.ads.active if s.proxy and s.proxy.hold)),
        )
        self.metrics.gauge(
            "gateway_xds_tls_handshakes",
            "TLS handshakes started on the xDS port since start, accepted or refused "
            "(0 without mutual TLS). Rising while gateway_connected_proxies stays flat: a "
            "client is being refused and retrying (gRPC's log line on stderr says why).",
            lambda: float(self.handshakes.started),
        )
        self.metrics.gauge(
            "gateway_xds_streams_refused",
            "ADS and access-log streams refused since start because the client certificate "
            "does not name the gateway and node id the stream claims (ADR 0018).",
            lambda: float(self.authorizer.refused),
        )
        self.metrics.gauge(
            "gateway_xds_initial_syncs_in_flight",
            "ADS streams running their first sync now (at most --max-initial-syncs).",
            lambda: float(self.gate.active),
        )
        self.metrics.gauge(
            "gateway_xds_initial_syncs_waiting",
            "ADS streams waiting in turn for their first sync (--max-initial-syncs reached).",
            lambda: float(self.gate.waiting),
        )
        self.metrics.gauge(
            "gateway_xds_initial_syncs_peak",
            "Most first syncs in flight at once since start.",
            lambda: float(self.gate.peak),
        )
        self.metrics.gauge(
            "gateway_xds_initial_syncs_queued",
            "ADS streams since start that waited for their first sync.",
            lambda: float(self.gate.queued),
        )
        self.metrics.gauge(
            "gateway_xds_initial_sync_longest_wait_seconds",
            "The longest time an ADS stream waited for its first sync since start.",
            lambda: self.gate.max_wait,
        )
        self.metrics.gauge(
            "gateway_xds_initial_syncs_timed_out",
            f"First-sync slots passed on because the proxy had not ACKed within "
            f"{SLOT_TIMEOUT:g} s.",
            lambda: float(self.gate.expired),
        )
        #: Envoy's access-log service, served on the xDS port (gateways with analytics on)
        self.sink = AccessLogSink(
            settings.db,
            Scope(
                self.runner.objects["gateway"],
                self.runner.by_gateway,
                self.runner.objects["consumer"],
            ),
            sink_id=self.id,
            registry=self.metrics,
            retention_s=settings.analytics_retention_days * 86400,
            authorizer=self.authorizer,
            engine=self.store.writer_engine,  # one pool, pinned to the store's file
        )
        #: the quota service (RLQS) of shared budgets and calendar quotas, on the xDS port
        from .quota.service import QuotaService

        self.quota = QuotaService(
            self.store.writer_engine, self.runner.objects, authorizer=self.authorizer
        )
        self.metrics.gauge(
            "gateway_quota_streams",
            "Open quota-service (RLQS) streams: one per Envoy and quota filter (unit) in use.",
            lambda: float(self.quota.streams),
        )
        self.metrics.gauge(
            "gateway_quota_reports",
            "Usage reports the quota service has answered since start.",
            lambda: float(self.quota.reports),
        )
        #: ``serve``: once started, freeze the heap (see :meth:`_freeze_heap`)
        self.freeze_heap = False
        self._grpc: grpc.aio.Server | None = None
        self._health: HttpService | None = None
        self._admin: HttpService | None = None
        self.xds_port = 0
        self.health_port = 0
        self.admin_port = 0

    def _admin_tls_files(self) -> tuple[str, str] | None:
        cert, key = self.settings.admin_tls_cert, self.settings.admin_tls_key
        if bool(cert) != bool(key):
            raise GatewayError("--admin-tls-cert and --admin-tls-key go together")
        return (cert, key) if cert and key else None

    def _health_source(self) -> HealthSource:
        return HealthSource(
            ready=self.cache.ready.is_set, metrics=self.metrics.render, status=self.health
        )

    def _credentials(self) -> grpc.ServerCredentials | None:
        """mTLS credentials when the settings name the files, else None (plaintext)."""
        s = self.settings
        files = (s.xds_tls_cert, s.xds_tls_key, s.xds_client_ca)
        if not any(files):
            return None
        if not all(files):
            raise GatewayError(
                "--xds-tls-cert, --xds-tls-key and --xds-client-ca go together: "
                "the controller serves TLS only to clients the CA vouches for"
            )
        cert, key, ca = (str(f) for f in files)
        return server_credentials(cert, key, ca, handshakes=self.handshakes)

    async def start(self) -> None:
        credentials = self._xds_credentials
        if self._exposed:
            log.warning(
                "INSECURE: xDS and the access-log service listen on %s in plaintext without "
                "client authentication (--insecure): anyone who reaches this address receives "
                "every gateway's configuration, API keys and TLS private keys included, and "
                "can pose as a proxy. Use mutual TLS (gatewayctl pki init).",
                self.settings.xds_address,
            )
        elif self.settings.insecure:
            log.warning("--insecure has no effect: xDS is on loopback or over mutual TLS")
        await self.runner.load()
        self._grpc = grpc.aio.server(
            options=[
                ("grpc.max_send_message_length", 256 * 1024 * 1024),
                ("grpc.max_receive_message_length", 16 * 1024 * 1024),
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
                *ADMISSION_OPTIONS,  # a reconnecting fleet waits in turn, not refused
            ]
        )
        self._grpc.add_generic_rpc_handlers(
            (self.ads.handler(), self.sink.handler(), self.quota.handler())
        )
        if credentials is None:
            self.xds_port = self._grpc.add_insecure_port(self.settings.xds_address)
        else:
            self.xds_port = self._grpc.add_secure_port(self.settings.xds_address, credentials)
        if self.xds_port == 0:
            raise OSError(f"cannot listen for xDS on {self.settings.xds_address}")
        await self._grpc.start()
        # the admin API first: a healthy health port means every port is up
        if self.settings.admin_address:
            await self._start_admin()
        if self.settings.health_address:
            self._health = HttpService(
                create_health_app(self._health_source()),
                self.settings.health_address,
                name="health",
            )
            await self._health.start()
            self.health_port = self._health.port
        if self.freeze_heap:
            self._freeze_heap()
        log.info(
            "controller %s serving xDS on %s (port %d)%s",
            self.id,
            self.settings.xds_address,
            self.xds_port,
            f" over mutual TLS (client CA {self.settings.xds_client_ca})" if credentials else "",
        )

    @staticmethod
    def _freeze_heap() -> None:
        """Move every object alive once the controller has started - the loaded policy,
        the imported modules' objects (grpc, protobuf, pydantic, SQLAlchemy, FastAPI) - out
        of the collector's reach (``gc.freeze``). A full collection otherwise walks all of
        them, ~95 ms on this heap, whenever the objects a push to 100 proxies leaves behind
        cross CPython's threshold: measured twice in 40 pushes, each the push's p99
        (``bench.ads_fanout`` with the GC log of ``bench/controller_shim.py``, ADR 0040).
        Frozen objects are still freed when their count drops to zero; only a cycle among
        them is never collected."""
        gc.collect()
        gc.freeze()
        log.debug("heap frozen: %d objects out of the collector's reach", gc.get_freeze_count())

    async def _start_admin(self) -> None:
        address = self.settings.admin_address or ""
        if self._admin_exposed:
            log.warning(
                "INSECURE: the admin API listens on %s in plaintext (--insecure): tokens "
                "and policy cross the network in clear. Give --admin-tls-cert/--admin-tls-key.",
                address,
            )
        tls = self._admin_tls
        app = create_app(
            self.store,
            status_source=self._health_source(),
            max_body=self.settings.admin_max_body,
            listing=self.runner.listed,
        )
        await warm_routes(app)
        self._admin = HttpService(
            app,
            address,
            tls_cert=tls[0] if tls else None,
            tls_key=tls[1] if tls else None,
            name="admin API",
        )
        await self._admin.start()
        self.admin_port = self._admin.port
        await asyncio.to_thread(self.validator.prime)
        log.info(
            "admin API on %s://%s (port %d)",
            "https" if tls else "http",
            address,
            self.admin_port,
        )

    async def run(self) -> None:
        """Until cancelled: watch revisions and record proxy status."""
        await asyncio.gather(
            self.runner.run(), self.recorder.run(), self.sink.run(), self.quota.run()
        )

    async def stop(self, deadline: float | None = None) -> bool:
        """Close the ports, end the ADS streams, write proxy status and mark this
        controller's proxies disconnected. ``deadline`` (``time.monotonic()``): each step
        gets what is left of it and is abandoned, with a warning, when that runs out.
        True when every step finished."""
        steps: list[tuple[str, float, Awaitable[object]]] = []
        services = [s.close() for s in (self._admin, self._health) if s is not None]
        if services:
            steps.append(("close the HTTP ports", 1.0, asyncio.gather(*services)))
        if self._grpc is not None:
            # grace: streams end on their own; then gRPC cancels every handler
            steps.append(("end the ADS streams", 1.5, self._grpc.stop(grace=0.5)))
        steps.append(("write proxy status", 2.0, self.recorder.flush()))
        steps.append(("write access-log rollups", 0.5, self.sink.flush()))
        steps.append(
            (
                "mark this controller's proxies disconnected",
                1.0,
                asyncio.to_thread(self.store.disconnect_controller_proxies, self.id),
            )
        )
        complete = True
        for what, bound, step in steps:
            left = bound if deadline is None else min(bound, deadline - time.monotonic())
            task = asyncio.ensure_future(step)
            if left <= 0:
                task.cancel()
                log.warning("shutdown: no time left to %s", what)
                complete = False
                continue
            # not wait_for: it waits for the cancelled step to unwind, which for 10,000
            # streams' handlers took seconds past the step's bound
            done, _ = await asyncio.wait({task}, timeout=left)
            if not done:
                task.cancel()
                log.warning("shutdown: could not %s within %.1f s; abandoned", what, left)
                complete = False
            elif not task.cancelled() and task.exception() is not None:
                # shutting down: report and carry on
                log.warning("shutdown: could not %s: %s", what, task.exception())
                complete = False
        self.sink.close()
        self.validator.close()  # the Envoy started ahead for the next write
        return complete

    def health(self) -> dict[str, object]:
        return {
            "controller": self.id,
            "ready": self.cache.ready.is_set(),
            "revision": self.runner.revision,
            "gateways": {
                g: {"streams": self.cache.streams(g), "changed_revision": changed, "error": error}
                for g, (changed, error) in self.runner.builds().items()
            },
            "streams": len(self.ads.active),
            "database": self.runner.identity.database_id if self.runner.identity else None,
            "store_problem": self.runner.store_problem,
            "held": [
                {"node": s.proxy.node_id, "gateway": s.proxy.gateway, "reason": s.proxy.hold}
                for s in self.ads.active
                if s.proxy is not None and s.proxy.hold
            ],
        }


async def serve(
    settings: Settings, started: asyncio.Event | None = None, *, hard_exit: bool = True
) -> None:
    """Run a controller until SIGINT/SIGTERM, then stop within :data:`SHUTDOWN_DEADLINE_S`.

    The handlers are plain ``signal`` handlers: they run between two bytecodes of the main
    thread even while the event loop is busy. A second signal ends the process at once.
    ``hard_exit`` (the ``serve`` command): a watchdog thread started by the first signal
    ends the process after :data:`_HARD_EXIT_S` if something still holds it (a thread
    blocked on a busy database, a task that does not end when cancelled)."""
    controller = Controller(settings)
    controller.freeze_heap = True  # this process is the controller's (see _freeze_heap)
    await controller.start()
    if started is not None:
        started.set()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[tuple[str, float]] = []
    finished = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if received:
            log.warning("%s during shutdown: exiting now", name)
            _exit_now(1)
        received.append((name, time.monotonic()))
        if hard_exit:
            threading.Thread(
                target=_watchdog,
                args=(finished, name, received[0][1]),
                daemon=True,
                name="shutdown-watchdog",
            ).start()
        loop.call_soon_threadsafe(stop.set)

    unwake = None
    with suppress(ValueError):  # not the main thread: the caller handles signals
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, on_signal)
        unwake = wake_loop_on_signals(loop)
    runner = asyncio.create_task(controller.run())
    try:
        await stop.wait()
    finally:
        name, since = received[0] if received else ("cancellation", time.monotonic())
        deadline = since + SHUTDOWN_BUDGET_S
        log.info("%s: stopping (bound %.1f s)", name, SHUTDOWN_DEADLINE_S)
        runner.cancel()
        await asyncio.wait({runner}, timeout=max(0.05, min(1.0, deadline - time.monotonic())))
        complete = await controller.stop(deadline) and runner.done()
        log.log(
            logging.INFO if complete else logging.WARNING,
            "controller stopped %.2f s after %s%s",
            time.monotonic() - since,
            name,
            "" if complete else " (some steps abandoned, see above)",
        )
        if unwake is not None:
            unwake()
        finished.set()
        if hard_exit and received:
            # Nothing is left to do: skip the interpreter's teardown, which frees every
            # object of every stream while holding the GIL (2.5 s after the orderly stop
            # with 10,000 streams open, when the watchdog could not even run).
            log.info("exiting %.2f s after %s", time.monotonic() - since, name)
            _exit_now(0)


def _watchdog(finished: threading.Event, name: str, since: float) -> None:
    """End the process :data:`_HARD_EXIT_S` after the first signal if it is still there:
    exit 0 when the orderly shutdown finished (only leftovers hold the process), else 1."""
    if finished.wait(max(0.0, since + _HARD_EXIT_S - time.monotonic())):
        # the orderly stop is done: interpreter teardown has what is left of the bound
        time.sleep(max(0.0, since + SHUTDOWN_DEADLINE_S - 0.3 - time.monotonic()))
        log.warning(
            "shutdown: a thread or task outlived the orderly stop; exiting %.2f s after %s",
            time.monotonic() - since,
            name,
        )
        _exit_now(0)
    log.warning("shutdown incomplete: exiting %.2f s after %s", time.monotonic() - since, name)
    _exit_now(1)


def _exit_now(code: int) -> None:
    """End the process without waiting for threads or tasks (log lines written first)."""
    for handler in logging.getLogger().handlers:
        with suppress(Exception):
            handler.flush()
    with suppress(Exception):
        sys.stderr.flush()
    os._exit(code)

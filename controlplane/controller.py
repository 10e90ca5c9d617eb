"""The controller process: load state, then serve ADS and a small health/status endpoint.

Ordering matters: the full state is loaded and translated before the gRPC port opens, so
a restarted controller never answers an Envoy with less than what it was running.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
from contextlib import suppress

import grpc

from .analytics.scope import Scope
from .analytics.sink import AccessLogSink
from .errors import GatewayError
from .httpserve import HttpServer, serve_http_on
from .metrics import CONTENT_TYPE, Registry
from .runner import Runner
from .settings import Settings
from .store import Store
from .store.history import parse_retention
from .store.repository import display_url
from .store.tokens import bootstrap_admin
from .translate import AggregationTarget
from .xds import AdsServer, SnapshotCache, StatusRecorder
from .xds.metrics import XdsMetrics
from .xds.mtls import HandshakeLog, StreamAuthorizer, check_bind, server_credentials

__all__ = ["Controller", "serve"]

log = logging.getLogger(__name__)

_JSON = "application/json"


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


def aggregation_target(settings: Settings) -> AggregationTarget:
    try:
        return AggregationTarget.parse(settings.aggregator, settings.aggregation_address)
    except ValueError as exc:
        raise GatewayError(f"aggregation settings: {exc}") from None


class Controller:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # refused before anything is opened or written: a plaintext port beyond loopback
        files = (settings.xds_tls_cert, settings.xds_tls_key, settings.xds_client_ca)
        if any(files) and not all(files):
            self._credentials()  # the one-line error for an incomplete set
        tls = all(files)
        self._exposed = check_bind(
            "--xds-address",
            settings.xds_address,
            tls=tls,
            insecure=settings.insecure,
            tls_options="--xds-tls-cert/--xds-tls-key/--xds-client-ca",
        )
        self.id = settings.controller_id or f"{socket.gethostname()}-{os.getpid()}"
        self.store = Store(settings.db, create=settings.create_database)
        if self.store.created:
            log.warning("created database %s (--create)", display_url(self.store.url))
        #: the file the first admin token was written to on this start (None: an admin
        #: token already existed)
        self.admin_token_file = bootstrap_admin(self.store, settings.admin_token_file)
        self.cache = SnapshotCache()
        self.recorder = StatusRecorder(self.store, self.id)
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
        #: with mutual TLS, each ADS and access-log stream's certificate must permit the
        #: gateway and node id it claims (ADR 0018); without it, every client is trusted
        self.authorizer = StreamAuthorizer(required=tls)
        self.ads = AdsServer(self.cache, self.recorder, XdsMetrics(self.metrics), self.authorizer)
        self.metrics.gauge(
            "gateway_connected_proxies",
            "Proxies with an open ADS stream to this controller, per gateway.",
            lambda: {(("gateway", g),): float(n) for g, n in self.ads.connected().items()},
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
        )
        self._grpc: grpc.aio.Server | None = None
        self._health: HttpServer | None = None
        self._handshakes: HandshakeLog | None = None
        self.xds_port = 0
        self.health_port = 0

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
        return server_credentials(*files)  # type: ignore[arg-type]

    async def start(self) -> None:
        credentials = self._credentials()
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
            ]
        )
        self._grpc.add_generic_rpc_handlers((self.ads.handler(), self.sink.handler()))
        if credentials is None:
            self.xds_port = self._grpc.add_insecure_port(self.settings.xds_address)
        else:
            self._handshakes = HandshakeLog()
            self._handshakes.start()
            self.xds_port = self._grpc.add_secure_port(self.settings.xds_address, credentials)
        if self.xds_port == 0:
            raise OSError(f"cannot listen for xDS on {self.settings.xds_address}")
        await self._grpc.start()
        if self.settings.health_address:
            host, port = _split(self.settings.health_address)
            self._health = await serve_http_on(host, port, self._route_health)
            self.health_port = self._health.port
        log.info(
            "controller %s serving xDS on %s (port %d)%s",
            self.id,
            self.settings.xds_address,
            self.xds_port,
            f" over mutual TLS (client CA {self.settings.xds_client_ca})" if credentials else "",
        )

    async def run(self) -> None:
        """Until cancelled: watch revisions and record proxy status."""
        await asyncio.gather(self.runner.run(), self.recorder.run(), self.sink.run())

    async def stop(self) -> None:
        if self._health is not None:
            await self._health.close()
        if self._grpc is not None:
            await self._grpc.stop(grace=0.5)
        await self.recorder.flush()
        with suppress(Exception):
            await self.sink.flush()
        self.sink.close()
        if self._handshakes is not None:
            self._handshakes.stop()
        with suppress(Exception):
            await asyncio.to_thread(self.store.disconnect_controller_proxies, self.id)

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

    def _route_health(self, path: str) -> tuple[int, str, bytes]:
        """``/healthz``, ``/readyz`` (503 until the first snapshot), ``/status``, ``/metrics``."""
        ok = self.cache.ready.is_set()
        if path == "/metrics":
            return 200, CONTENT_TYPE, self.metrics.render().encode()
        if path in ("/healthz", "/readyz"):
            return (200 if ok else 503), _JSON, json.dumps({"ok": ok}).encode()
        if path == "/status":
            return 200, _JSON, json.dumps(self.health()).encode()
        return 404, _JSON, json.dumps({"error": "not found"}).encode()


async def serve(settings: Settings, started: asyncio.Event | None = None) -> None:
    """Run a controller until SIGINT/SIGTERM."""
    controller = Controller(settings)
    await controller.start()
    if started is not None:
        started.set()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    runner = asyncio.create_task(controller.run())
    try:
        await stop.wait()
    finally:
        runner.cancel()
        with suppress(asyncio.CancelledError):
            await runner
        await controller.stop()

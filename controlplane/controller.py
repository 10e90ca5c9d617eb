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

from .analytics.sink import AccessLogSink
from .errors import GatewayError
from .metrics import CONTENT_TYPE, Registry
from .runner import Runner
from .settings import Settings
from .store import Store
from .translate import AggregationTarget
from .xds import AdsServer, SnapshotCache, StatusRecorder
from .xds.metrics import XdsMetrics
from .xds.mtls import HandshakeLog, server_credentials

__all__ = ["Controller", "serve"]

log = logging.getLogger(__name__)


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
        self.id = settings.controller_id or f"{socket.gethostname()}-{os.getpid()}"
        self.store = Store(settings.db)
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
        )
        self.metrics = Registry()
        self.ads = AdsServer(self.cache, self.recorder, XdsMetrics(self.metrics))
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
        #: Envoy's access-log service, served on the xDS port (gateways with analytics on)
        self.sink = AccessLogSink(
            settings.db,
            sink_id=self.id,
            registry=self.metrics,
            retention_s=settings.analytics_retention_days * 86400,
        )
        self._grpc: grpc.aio.Server | None = None
        self._health: asyncio.Server | None = None
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
            self._health = await asyncio.start_server(self._serve_health, host, port)
            self.health_port = self._health.sockets[0].getsockname()[1]
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
            self._health.close()
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
        }

    async def _serve_health(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            path = line.split()[1].decode() if len(line.split()) > 1 else "/"
            path = path.split("?", 1)[0]
            ok = self.cache.ready.is_set()
            content_type = "application/json"
            if path == "/metrics":
                status, body, content_type = 200, self.metrics.render(), CONTENT_TYPE
            elif path in ("/healthz", "/readyz"):
                status, body = (200 if ok else 503), json.dumps({"ok": ok})
            elif path == "/status":
                status, body = 200, json.dumps(self.health())
            else:
                status, body = 404, json.dumps({"error": "not found"})
            data = body.encode()
            reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
                + data
            )
            await writer.drain()
        except (TimeoutError, ConnectionError, IndexError):
            pass
        finally:
            writer.close()


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

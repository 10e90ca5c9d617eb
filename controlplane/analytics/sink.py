"""The access-log sink: Envoy's gRPC access-log service -> per-minute rollups in the database.

Envoy buffers entries and sends them in batches on a long-lived ``StreamAccessLogs``
stream; the sink only adds each entry to an in-memory cell (a dict lookup and a few
additions) and a flush task writes the changed cells once a second in one transaction. The
database is never touched per request, and a sink that is slow or gone costs Envoy nothing
but the log entries it drops from its own bounded buffer.

The controller serves this on its gRPC port by default; ``gatewayctl analytics-sink`` runs
it as a process of its own (for a busy gateway, or to keep analytics away from the control
plane).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import suppress

import grpc
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2

from ..metrics import Registry
from .rollup import Rollups, RollupWriter, status_class

__all__ = ["ALS_SERVICE", "AccessLogSink", "serve_sink"]

log = logging.getLogger(__name__)

ALS_SERVICE = "envoy.service.accesslog.v3.AccessLogService"
_CONSUMER_HEADER = "x-consumer-id"


def _ms(duration: object) -> float:
    return duration.seconds * 1e3 + duration.nanos / 1e6  # type: ignore[attr-defined]


class AccessLogSink:
    """Receives access-log streams, aggregates, flushes; owns its metrics."""

    def __init__(
        self,
        db: str | None,
        *,
        sink_id: str | None = None,
        registry: Registry | None = None,
        flush_interval: float = 1.0,
        retention_s: float = 30 * 86400,
    ) -> None:
        self.sink_id = sink_id or f"{socket.gethostname()}-{os.getpid()}"
        self.rollups = Rollups()
        self.writer = RollupWriter(db, self.sink_id)
        self.flush_interval = flush_interval
        self.retention_s = retention_s
        self.streams: dict[int, str] = {}
        self.registry = registry or Registry()
        r = self.registry
        self.m_entries = r.counter(
            "gateway_analytics_entries_total", "Access-log entries received, per gateway."
        )
        r.gauge(
            "gateway_analytics_dropped_total",
            "Entries dropped by the sink (its buffer full while the database was unavailable).",
            lambda: float(self.rollups.dropped),
        )
        self.m_flushes = r.counter(
            "gateway_analytics_flushes_total", "Rollup flushes, by result (ok or error)."
        )
        self.m_flush_seconds = r.histogram(
            "gateway_analytics_flush_seconds",
            "Time to write one flush of rollups to the database.",
            [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
        )
        r.gauge(
            "gateway_analytics_streams",
            "Open access-log streams from Envoys.",
            lambda: float(len(self.streams)),
        )
        r.gauge(
            "gateway_analytics_pending_cells",
            "Rollup cells aggregated in memory, not yet written.",
            lambda: float(len(self.rollups.cells)),
        )

    # -- ingestion --------------------------------------------------------------------------

    def ingest(self, gateway: str, entries: Iterable[accesslog_pb2.HTTPAccessLogEntry]) -> int:
        add = self.rollups.add
        n = 0
        for e in entries:
            c = e.common_properties
            req = e.request
            resp = e.response
            latency = c.duration if c.HasField("duration") else c.time_to_last_downstream_tx_byte
            add(
                (
                    c.start_time.seconds // 60,
                    gateway,
                    c.route_name,
                    req.request_headers.get(_CONSUMER_HEADER, ""),
                    status_class(resp.response_code.value),
                ),
                req.request_headers_bytes + req.request_body_bytes,
                resp.response_headers_bytes + resp.response_body_bytes,
                _ms(latency),
            )
            n += 1
        self.m_entries.inc(n, gateway=gateway)
        return n

    async def _stream(
        self,
        requests: AsyncIterator[als_pb2.StreamAccessLogsMessage],
        context: grpc.aio.ServicerContext,
    ) -> als_pb2.StreamAccessLogsResponse:
        gateway = "unknown"
        key = id(context)
        try:
            async for msg in requests:
                if msg.HasField("identifier"):
                    ident = msg.identifier
                    gateway = ident.log_name or ident.node.cluster or gateway
                    self.streams[key] = gateway
                self.ingest(gateway, msg.http_logs.log_entry)
        except (asyncio.CancelledError, grpc.RpcError):
            pass
        finally:
            self.streams.pop(key, None)
        return als_pb2.StreamAccessLogsResponse()

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            ALS_SERVICE,
            {
                "StreamAccessLogs": grpc.stream_unary_rpc_method_handler(
                    self._stream,
                    request_deserializer=als_pb2.StreamAccessLogsMessage.FromString,
                    response_serializer=als_pb2.StreamAccessLogsResponse.SerializeToString,
                )
            },
        )

    # -- flushing ---------------------------------------------------------------------------

    async def flush(self) -> None:
        cells = self.rollups.take()
        if not cells:
            return
        started = time.perf_counter()
        try:
            await asyncio.to_thread(self.writer.write, cells)
        except Exception as exc:  # the database may be away; keep the cells for the next try
            self.rollups.give_back(cells)
            self.m_flushes.inc(result="error")
            log.warning("could not write access-log rollups (kept for the next flush): %s", exc)
            return
        self.m_flushes.inc(result="ok")
        self.m_flush_seconds.observe(time.perf_counter() - started)

    async def run(self) -> None:
        """Flush every ``flush_interval``; prune rows past the retention once a minute."""
        next_prune = 0.0
        try:
            while True:
                await asyncio.sleep(self.flush_interval)
                await self.flush()
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + 60
                    before = int((time.time() - self.retention_s) // 60)
                    try:
                        await asyncio.to_thread(self.writer.prune, before)
                    except Exception as exc:
                        log.warning("could not prune old rollups: %s", exc)
        finally:
            with suppress(Exception):
                await self.flush()

    def close(self) -> None:
        self.writer.close()


async def serve_sink(
    db: str | None,
    address: str,
    http_address: str | None,
    *,
    retention_s: float,
    flush_interval: float = 1.0,
    started: asyncio.Event | None = None,
) -> None:
    """``gatewayctl analytics-sink``: the sink as its own process, until SIGINT/SIGTERM."""
    import signal

    from ..httpserve import serve_http
    from ..metrics import CONTENT_TYPE
    from ..store import Store

    Store(db).close()  # migrates the schema; a missing database is an error (``init``)
    sink = AccessLogSink(db, retention_s=retention_s, flush_interval=flush_interval)
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 16 * 1024 * 1024)])
    server.add_generic_rpc_handlers((sink.handler(),))
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen for access logs on {address}")
    await server.start()
    http = None
    if http_address:

        def route(path: str) -> tuple[int, str, bytes]:
            if path == "/metrics":
                return 200, CONTENT_TYPE, sink.registry.render().encode()
            if path in ("/healthz", "/readyz"):
                return 200, "application/json", b'{"ok": true}'
            return 404, "application/json", b'{"error": "not found"}'

        http = await serve_http(http_address, route)
    log.info("analytics sink %s: access logs on %s (port %d)", sink.sink_id, address, port)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    flusher = asyncio.create_task(sink.run())
    if started is not None:
        started.set()
    try:
        await stop.wait()
    finally:
        await server.stop(grace=0.5)
        flusher.cancel()
        with suppress(asyncio.CancelledError):
            await flusher
        if http is not None:
            http.close()
        sink.close()

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
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2

from ..metrics import Registry
from ..xds.mtls import StreamAuthorizer
from .rollup import Cell, Key, Rollups, RollupWriter, rollup_class, usage_class
from .scope import OTHER, Scope, StoreScope

if TYPE_CHECKING:
    from sqlalchemy import Engine

__all__ = ["ALS_SERVICE", "AccessLogSink", "Bounds", "serve_sink"]

log = logging.getLogger(__name__)

ALS_SERVICE = "envoy.service.accesslog.v3.AccessLogService"
_CONSUMER_HEADER = "x-consumer-id"
#: one entry's byte counts are clamped to this (64 GiB): a forged entry's uint64 cannot
#: overflow a rollup's 64-bit column and stall every later flush
_MAX_BYTES = 1 << 36


def _ms(duration: object) -> float:
    return duration.seconds * 1e3 + duration.nanos / 1e6  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Bounds:
    """The sink's limits, so neither memory nor the rollup table grows with what clients send.

    * ``consumers_per_minute``: distinct consumers per gateway and minute; later ones (even
      declared consumers) are counted under :data:`OTHER`. Undeclared consumers always are.
    * ``window_minutes``: an entry whose start lies further in the past (a long WebSocket
      session, a forged timestamp) or in the future is counted in the minute it arrives.
    * ``max_cells``: rollup cells held in memory between flushes (or while the database is
      away); beyond it entries are dropped and counted.
    * ``batch``: cells written per transaction; ``pause`` seconds between two transactions,
      so a policy write waiting for the database lock always gets it within one batch.
    """

    consumers_per_minute: int = 1000
    window_minutes: int = 5
    max_cells: int = 200_000
    batch: int = 500
    pause: float = 0.02


class AccessLogSink:
    """Receives access-log streams, aggregates, flushes; owns its metrics."""

    def __init__(
        self,
        db: str | None,
        scope: Scope,
        *,
        sink_id: str | None = None,
        registry: Registry | None = None,
        flush_interval: float = 1.0,
        retention_s: float = 30 * 86400,
        bounds: Bounds | None = None,
        authorizer: StreamAuthorizer | None = None,
        engine: Engine | None = None,
    ) -> None:
        #: with mutual TLS, a stream's certificate must permit the node it names (ADR 0018)
        self.authorizer = authorizer
        self.sink_id = sink_id or f"{socket.gethostname()}-{os.getpid()}"
        self.scope = scope
        self.bounds = bounds or Bounds()
        self.rollups = Rollups(self.bounds.max_cells)
        self.writer = RollupWriter(db, self.sink_id, engine)
        self.flush_interval = flush_interval
        self.retention_s = retention_s
        self.streams: dict[int, str] = {}
        #: (gateway, minute) -> consumers counted under their own name in that minute
        self._consumers: dict[tuple[str, int], set[str]] = {}
        self.registry = registry or Registry()
        r = self.registry
        self.m_entries = r.counter(
            "gateway_analytics_entries_total",
            "Access-log entries received, per gateway.",
            ("gateway",),
        )
        r.gauge(
            "gateway_analytics_dropped_total",
            "Entries dropped by the sink (its buffer full while the database was unavailable).",
            lambda: float(self.rollups.dropped),
        )
        self.m_refused = r.counter(
            "gateway_analytics_refused_total",
            "Entries refused, by reason: the stream's gateway is unknown or has analytics off.",
            ("reason",),
        )
        self.m_refused_streams = r.counter(
            "gateway_analytics_refused_streams_total",
            "Access-log streams refused when they opened, by reason.",
            ("reason",),
        )
        self.m_folded = r.counter(
            "gateway_analytics_folded_total",
            "Entries counted under '(other)' (unknown route or consumer, or over the bound of "
            "consumers per minute) or in the current minute (start outside the window), "
            "per gateway and field.",
            ("gateway", "field"),
        )
        self.m_flushes = r.counter(
            "gateway_analytics_flushes_total",
            "Rollup flushes, by result (ok or error).",
            ("result",),
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
        """Add ``entries`` of a stream of ``gateway`` (already admitted) to the rollups.

        Nothing in an entry can name another gateway; its route and consumer are kept only
        if the policy knows them (see :mod:`.scope`), within the bounds.
        """
        entries = list(entries)
        if not entries:
            return 0
        refusal = self.scope.refusal(gateway)
        if refusal is not None:  # analytics turned off (or the gateway deleted) mid-stream
            self.m_refused.labels(reason=refusal).inc(len(entries))
            return 0
        add = self.rollups.add
        scope = self.scope
        now = int(time.time() // 60)
        oldest = now - self.bounds.window_minutes
        limit = self.bounds.consumers_per_minute
        folded_route = folded_consumer = late = 0
        for e in entries:
            c = e.common_properties
            req = e.request
            resp = e.response
            latency = c.duration if c.HasField("duration") else c.time_to_last_downstream_tx_byte
            minute = c.start_time.seconds // 60
            if not oldest <= minute <= now:
                minute = now
                late += 1
            route = c.route_name
            if route and not scope.is_route(gateway, route):
                route = OTHER
                folded_route += 1
            consumer = req.request_headers.get(_CONSUMER_HEADER, "")
            if consumer:
                seen = self._consumers.get((gateway, minute))
                if seen is None:
                    seen = self._consumers[(gateway, minute)] = set()
                if consumer not in seen:
                    if len(seen) < limit and scope.is_consumer(consumer):
                        seen.add(consumer)
                    else:
                        consumer = OTHER
                        folded_consumer += 1
            code = resp.response_code.value
            klass = rollup_class(
                code, usage_class(code, resp.response_code_details, c.response_flags.rate_limited)
            )
            add(
                (minute, gateway, route, consumer, klass),
                min(req.request_headers_bytes + req.request_body_bytes, _MAX_BYTES),
                min(resp.response_headers_bytes + resp.response_body_bytes, _MAX_BYTES),
                max(0.0, _ms(latency)),
            )
        self.m_entries.labels(gateway=gateway).inc(len(entries))
        if folded_route:
            self.m_folded.labels(gateway=gateway, field="route").inc(folded_route)
        if folded_consumer:
            self.m_folded.labels(gateway=gateway, field="consumer").inc(folded_consumer)
        if late:
            self.m_folded.labels(gateway=gateway, field="minute").inc(late)
        return len(entries)

    async def admit(
        self,
        identifier: als_pb2.StreamAccessLogsMessage.Identifier,
        context: grpc.aio.ServicerContext,
    ) -> str | None:
        """The gateway a stream writes for, decided once when it opens; None: refused.

        The gateway is the node's ``cluster`` (what the stream's Envoy was configured as),
        never the client-chosen ``log_name`` nor anything in the entries. This is the one
        place a stream is let in: checks of the peer (``context``) belong here too.
        """
        gateway = identifier.node.cluster
        refusal = self.scope.refusal(gateway)
        if refusal is not None:  # a gateway just created or switched on: read the policy
            await self.scope.refresh(soon=True)
            refusal = self.scope.refusal(gateway)
        if refusal is not None:
            self.m_refused_streams.labels(reason=refusal).inc()
            log.debug("access-log stream refused (%s): node cluster %r", refusal, gateway[:128])
            return None
        return gateway

    async def _stream(
        self,
        requests: AsyncIterator[als_pb2.StreamAccessLogsMessage],
        context: grpc.aio.ServicerContext,
    ) -> als_pb2.StreamAccessLogsResponse:
        key = id(context)
        gateway: str | None = None
        try:
            async for msg in requests:
                if gateway is None:  # the first message identifies the stream, once
                    if self.authorizer is not None:
                        node = msg.identifier.node  # Envoy names itself on the first message
                        refusal = self.authorizer.refusal(
                            context, node.cluster, node.id, "access-log"
                        )
                        if refusal is not None:
                            await context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal)
                    admitted = await self.admit(msg.identifier, context)  # none: cluster ""
                    if admitted is None:
                        self.m_refused.labels(reason="refused_stream").inc(
                            len(msg.http_logs.log_entry)
                        )
                        await context.abort(
                            grpc.StatusCode.PERMISSION_DENIED,
                            "access logs are accepted only from gateways with analytics on",
                        )
                        return als_pb2.StreamAccessLogsResponse()  # (abort raises)
                    gateway = self.streams[key] = admitted
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
        """Write the cells changed since the last flush, ``bounds.batch`` per transaction.

        Short transactions with a pause between them: a policy write waiting on the
        database's write lock (SQLite's busy timeout) gets it between two batches, however
        much traffic the sink has to write.
        """
        cells = self.rollups.take()
        self._forget_old_minutes()
        if not cells:
            return
        started = time.perf_counter()
        items = list(cells.items())
        step = max(1, self.bounds.batch)
        for i in range(0, len(items), step):
            if i:
                await asyncio.sleep(self.bounds.pause)
            chunk: dict[Key, Cell] = dict(items[i : i + step])
            try:
                await asyncio.to_thread(self.writer.write, chunk)
            except Exception as exc:  # the database may be away; keep the cells for the next try
                self.rollups.give_back(dict(items[i:]))
                self.m_flushes.labels(result="error").inc()
                log.warning("could not write access-log rollups (kept for the next flush): %s", exc)
                return
        self.m_flushes.labels(result="ok").inc()
        self.m_flush_seconds.observe(time.perf_counter() - started)

    def _forget_old_minutes(self) -> None:
        oldest = int(time.time() // 60) - self.bounds.window_minutes
        for key in [k for k in self._consumers if k[1] < oldest]:
            del self._consumers[key]

    async def run(self) -> None:
        """Flush every ``flush_interval``; prune rows past the retention once a minute."""
        next_prune = 0.0
        try:
            while True:
                await asyncio.sleep(self.flush_interval)
                await self.scope.refresh()
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
    tls: tuple[str, str, str] | None = None,
    insecure: bool = False,
) -> None:
    """``gatewayctl analytics-sink``: the sink as its own process, until SIGINT/SIGTERM.

    ``tls`` (certificate, key, client CA) serves mutual TLS, and each stream's certificate
    must then permit the node it names, as on the controller's port (ADR 0018)."""
    import signal

    from ..api.app import create_health_app
    from ..api.server import HttpService
    from ..api.status import HealthSource
    from ..store import Store
    from ..xds.mtls import check_bind, server_credentials

    options = "--tls-cert/--tls-key/--client-ca"
    if check_bind("--address", address, tls=bool(tls), insecure=insecure, tls_options=options):
        log.warning(
            "INSECURE: access logs accepted on %s in plaintext from anyone (--insecure)", address
        )
    credentials = (
        None
        if tls is None
        else server_credentials(*tls, ("--tls-cert", "--tls-key", "--client-ca"))
    )
    Store(db).close()  # migrates the schema; a missing database is an error (``init``)
    scope = StoreScope(db)
    await scope.refresh()
    sink = AccessLogSink(
        db,
        scope,
        retention_s=retention_s,
        flush_interval=flush_interval,
        authorizer=StreamAuthorizer(required=tls is not None),
    )

    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 16 * 1024 * 1024)])
    server.add_generic_rpc_handlers((sink.handler(),))
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"cannot listen for access logs on {address}")
    await server.start()
    http = None
    if http_address:
        source = HealthSource(ready=lambda: True, metrics=sink.registry.render)
        http = HttpService(create_health_app(source), http_address, name="sink metrics")
        await http.start()
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
            await http.close()
        sink.close()
        scope.close()

"""The access-log sink on PostgreSQL: policy writes go through while it flushes heavily, and
invented names longer than the rollup columns cannot fail a flush."""

from __future__ import annotations

import asyncio
import threading
import time

from envoy.data.accesslog.v3 import accesslog_pb2

from controlplane.analytics.rollup import Filter, RollupReader
from controlplane.analytics.scope import OTHER, Scope
from controlplane.analytics.sink import AccessLogSink, Bounds
from controlplane.policy import Consumer, Gateway
from controlplane.store import Store


def _entry(route: str, consumer: str, start: float) -> accesslog_pb2.HTTPAccessLogEntry:
    e = accesslog_pb2.HTTPAccessLogEntry()
    e.common_properties.route_name = route
    e.common_properties.start_time.FromSeconds(int(start))
    e.request.request_headers["x-consumer-id"] = consumer
    e.response.response_code.value = 200
    return e


def test_policy_writes_while_the_sink_flushes(pg_url: str) -> None:
    store = Store(pg_url, create=True)
    gateways = {"public": Gateway.model_validate({"name": "public", "port": 1, "analytics": {}})}
    routes = {"public": {f"r{i}": object() for i in range(20)}}
    consumers = {f"c{i}": object() for i in range(1000)}
    sink = AccessLogSink(pg_url, Scope(gateways, routes, consumers), bounds=Bounds(batch=500))
    now = time.time() // 60 * 60 + 30
    entries = [_entry(f"r{i % 20}", f"c{i // 20}", now) for i in range(20_000)]
    entries += [_entry("r0", "x" * 1000, now)]  # longer than the column: folded, not written
    sink.ingest("public", entries)
    done = threading.Event()

    def flush() -> None:
        asyncio.run(sink.flush())
        done.set()

    flusher = threading.Thread(target=flush)
    flusher.start()
    written = 0
    while not done.is_set() or written < 5:
        store.create(Consumer(name=f"new-{written}"))  # never waits for the flush to end
        written += 1
    flusher.join()
    assert 'gateway_analytics_flushes_total{result="ok"} 1' in sink.registry.render()
    rows = list(RollupReader.open(pg_url).rows(Filter(0, 1e12)))
    assert sum(c.requests for _, c in rows) == 20_001
    assert len(rows) == 20_000 + 1 and any(k[3] == OTHER for k, _ in rows)
    assert len(store.list_objects("consumer")) == written
    sink.close()
    store.close()

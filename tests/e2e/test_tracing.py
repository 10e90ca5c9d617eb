"""OpenTelemetry tracing end to end: a real Envoy exports spans over OTLP/gRPC to a receiver
built here from the official ``opentelemetry-proto`` stubs, and passes a W3C ``traceparent``
on to the backend.

A traced request's spans (Envoy's server span and its span of the call to the backend) arrive
with one trace id, the trace id the backend received, and with the route and consumer as
attributes; a ``traceparent`` the client sent is continued, not replaced.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from controlplane.demo.echo import EchoServer

from .harness import Cli, Controller, Envoy, wait_until

pytestmark = pytest.mark.e2e


def _scope_groups(resource_spans: object) -> list[object]:
    """ResourceSpans field 2: ``scope_spans`` in current OTLP, ``instrumentation_library_spans``
    in the older copy of these modules that xds-protos also installs (same wire format;
    which copy a fresh environment ends up with depends on pip's install order)."""
    name = resource_spans.DESCRIPTOR.fields_by_number[2].name  # type: ignore[attr-defined]
    return list(getattr(resource_spans, name))


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver: keeps every span with its attributes and service name."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        with self.lock:
            for resource_spans in request.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in _scope_groups(resource_spans):
                    for span in scope_spans.spans:
                        self.spans.append(
                            {
                                "trace_id": span.trace_id.hex(),
                                "span_id": span.span_id.hex(),
                                "parent_span_id": span.parent_span_id.hex(),
                                "name": span.name,
                                "kind": span.kind,
                                "service": resource.get("service.name"),
                                "attributes": {
                                    a.key: a.value.string_value for a in span.attributes
                                },
                            }
                        )
        return trace_service_pb2.ExportTraceServiceResponse()

    def of(self, trace_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return [s for s in self.spans if s["trace_id"] == trace_id]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.server.start()
    yield r
    r.server.stop(grace=None)


def _get(port: int, path: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, json.loads(body) if resp.status == 200 else {}
    except OSError:
        return 0, {}
    finally:
        conn.close()


def test_spans_carry_one_trace_id_route_and_consumer(
    cli: Cli, controller: Controller, tmp_path: Path, gateway_port: int, receiver: Receiver
) -> None:
    backend = EchoServer("alpha").start()
    envoy = None
    try:
        policy = {
            "gateways": [
                {
                    "name": "public",
                    "port": gateway_port,
                    "address": "127.0.0.1",
                    "tracing": {"otlp": f"127.0.0.1:{receiver.port}", "sampling": "100%"},
                    "api_key_query": "api_key",
                }
            ],
            "clusters": [{"name": "echo", "endpoints": [f"127.0.0.1:{backend.port}"]}],
            "consumers": [{"name": "acme"}],
            "routes": [
                {
                    "name": "orders",
                    "gateway": "public",
                    "match": {"path_prefix": "/orders"},
                    "cluster": "echo",
                    "auth": {"api_key": True},
                }
            ],
        }
        cli.run("apply", "-f", "-", input=json.dumps(policy))
        key = cli.run("consumer", "key", "add", "acme").stdout.strip()
        envoy = Envoy("public", "public-1", controller.xds_port, tmp_path)
        wait_until(
            lambda: _get(gateway_port, "/orders", {"x-api-key": key})[0] == 200,
            timeout=30,
            interval=0.2,
        )

        # three requests, then one wait: Envoy flushes spans every 5 s (or every 5 spans)
        # a request of its own: the backend receives a W3C traceparent
        status, echoed = _get(gateway_port, "/orders/1", {"x-api-key": key})
        assert status == 200
        version, trace_id, parent_id, flags = echoed["headers"]["traceparent"].split("-")
        assert version == "00" and len(trace_id) == 32 and flags == "01"
        # a trace the client started is continued: same trace id, the client's span as parent
        client_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
        client_span = "00f067aa0ba902b7"
        status, echoed = _get(
            gateway_port,
            "/orders/2",
            {"x-api-key": key, "traceparent": f"00-{client_trace}-{client_span}-01"},
        )
        assert status == 200
        assert echoed["headers"]["traceparent"].split("-")[1] == client_trace
        # an API key sent in the query is removed before the span records the URL
        status, echoed = _get(gateway_port, f"/orders/3?api_key={key}&b=2", {})
        assert status == 200
        query_trace = echoed["headers"]["traceparent"].split("-")[1]
        traces = (trace_id, client_trace, query_trace)
        wait_until(lambda: all(len(receiver.of(t)) >= 2 for t in traces), timeout=30, interval=0.2)

        spans = receiver.of(trace_id)
        server = [s for s in spans if s["parent_span_id"] == ""]
        assert len(server) == 1, spans
        upstream = [s for s in spans if s["parent_span_id"] == server[0]["span_id"]]
        assert upstream, spans
        # the backend's parent is Envoy's span of the call to it
        assert parent_id in {s["span_id"] for s in upstream}
        for span in server:
            assert span["attributes"]["gateway.route"] == "orders"
            assert span["attributes"]["gateway.consumer"] == "acme"
            assert span["attributes"]["gateway.name"] == "public"
            assert span["service"] == "public"

        joined = receiver.of(client_trace)
        assert any(s["parent_span_id"] == client_span for s in joined), joined
        assert all(s["trace_id"] == client_trace for s in joined)

        spans = receiver.of(query_trace)
        assert any("/orders/3" in str(s["attributes"]) for s in spans), spans
        assert key not in json.dumps(receiver.spans)
    finally:
        if envoy is not None:
            envoy.stop()
        backend.stop()


@pytest.mark.parametrize(
    ("tracing", "message"),
    [
        ({"otlp": "127.0.0.1:4317", "sampling": "101%"}, "tracing.sampling"),
        ({"otlp": "127.0.0.1:4317", "sampling": -1}, "tracing.sampling"),
        ({"otlp": "127.0.0.1:4317", "sampling": "lots"}, "tracing.sampling"),
        ({"otlp": "collector"}, "tracing.otlp"),
        ({"otlp": "127.0.0.1:99999"}, "tracing.otlp"),
    ],
)
def test_bad_tracing_is_one_line_naming_the_field(
    cli: Cli, tracing: dict[str, Any], message: str
) -> None:
    doc = {"gateways": [{"name": "public", "port": 8080, "tracing": tracing}]}
    before = cli.run("export").stdout
    proc = cli.run("apply", "-f", "-", input=json.dumps(doc), check=False)
    assert proc.returncode == 2, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "public" in lines[0], lines
    assert cli.run("export").stdout == before  # nothing written

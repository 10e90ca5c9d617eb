"""Gateway tracing -> the HTTP connection manager's OpenTelemetry tracer and its collector.

Envoy's ``envoy.tracers.opentelemetry`` starts a span for the sampled share of requests
(``random_sampling``), continues a trace whose W3C ``traceparent`` the client sent, passes
``traceparent`` on to the backend and exports spans over OTLP/gRPC through a cluster of
its own (``tracing:otlp``). Span attributes name the gateway, the route and the consumer
(custom tags: the route from Envoy's route name, the consumer from ``x-consumer-id``, which
the gateway's authentication sets and clients cannot). Tracing is configured on the
connection manager, never as an HTTP filter.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import grpc_service_pb2
from envoy.config.trace.v3 import http_tracer_pb2, opentelemetry_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.type.tracing.v3 import custom_tag_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import wrappers_pb2

from ..policy import Gateway
from ..policy.common import parse_hostport
from ..policy.headers import CONSUMER_HEADER
from ..policy.reserved import TRACING_CLUSTER
from .cluster import grpc_collector_cluster
from .common import duration, pack

__all__ = ["ATTRIBUTES", "TRACING_CLUSTER", "tracing", "tracing_cluster"]

#: span attribute names (README "Tracing")
ATTRIBUTES = {"gateway": "gateway.name", "route": "gateway.route", "consumer": "gateway.consumer"}


def tracing(gateway: Gateway) -> hcm_pb2.HttpConnectionManager.Tracing | None:
    """The connection manager's tracing settings, or None when the gateway traces nothing."""
    config = gateway.tracing
    if config is None:
        return None
    tracer = opentelemetry_pb2.OpenTelemetryConfig(
        grpc_service=grpc_service_pb2.GrpcService(
            envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=TRACING_CLUSTER),
            timeout=duration("1s"),
        ),
        service_name=config.service_name or gateway.name,
    )
    return hcm_pb2.HttpConnectionManager.Tracing(
        provider=http_tracer_pb2.Tracing.Http(
            name="envoy.tracers.opentelemetry", typed_config=pack(tracer)
        ),
        random_sampling=percent_pb2.Percent(value=config.sampling),
        # a client span for the call to the backend too: the backend's time is its own span
        spawn_upstream_span=wrappers_pb2.BoolValue(value=True),
        custom_tags=[
            custom_tag_pb2.CustomTag(tag=ATTRIBUTES["gateway"], literal=_literal(gateway.name)),
            custom_tag_pb2.CustomTag(tag=ATTRIBUTES["route"], value="%ROUTE_NAME%"),
            custom_tag_pb2.CustomTag(
                tag=ATTRIBUTES["consumer"],
                request_header=custom_tag_pb2.CustomTag.Header(name=CONSUMER_HEADER),
            ),
        ],
    )


def _literal(value: str) -> custom_tag_pb2.CustomTag.Literal:
    return custom_tag_pb2.CustomTag.Literal(value=value)


def tracing_cluster(gateway: Gateway) -> cluster_pb2.Cluster | None:
    """The collector's cluster (HTTP/2, for gRPC), when the gateway traces."""
    config = gateway.tracing
    if config is None:
        return None
    host, port = parse_hostport(config.otlp)
    cluster = grpc_collector_cluster(TRACING_CLUSTER, host, port)
    return cluster

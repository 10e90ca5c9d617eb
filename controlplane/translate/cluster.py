"""Cluster policy -> Envoy Cluster (+ ClusterLoadAssignment for EDS).

Clusters whose endpoints are all IP addresses are EDS clusters: an endpoint change is then
an EDS update, which Envoy applies without re-warming the cluster. Clusters naming DNS hosts
are STRICT_DNS clusters with their endpoints inline (EDS cannot carry names).
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, health_check_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2 as tls_common_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.v3 import http_pb2, range_pb2
from google.protobuf import wrappers_pb2

from ..policy import Cluster
from ..policy.cluster import LbPolicy, UpstreamProtocol
from ..policy.common import is_ip
from .common import ads_source, duration, pack

__all__ = [
    "cluster_resource",
    "endpoints_of",
    "grpc_collector_cluster",
    "is_eds",
    "load_assignment",
    "url_cluster",
]

_LB = {
    LbPolicy.round_robin: cluster_pb2.Cluster.ROUND_ROBIN,
    LbPolicy.least_request: cluster_pb2.Cluster.LEAST_REQUEST,
    LbPolicy.random: cluster_pb2.Cluster.RANDOM,
    LbPolicy.ring_hash: cluster_pb2.Cluster.RING_HASH,
    LbPolicy.maglev: cluster_pb2.Cluster.MAGLEV,
}
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def is_eds(cluster: Cluster) -> bool:
    return all(is_ip(host) for host, _ in cluster.parsed_endpoints())


def load_assignment(cluster: Cluster) -> endpoint_pb2.ClusterLoadAssignment:
    return endpoints_of(cluster.name, cluster.parsed_endpoints())


def endpoints_of(name: str, hosts: Iterable[tuple[str, int]]) -> endpoint_pb2.ClusterLoadAssignment:
    """One locality with these ``(host, port)`` endpoints."""
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=name,
        endpoints=[
            endpoint_components_pb2.LocalityLbEndpoints(
                lb_endpoints=[
                    endpoint_components_pb2.LbEndpoint(
                        endpoint=endpoint_components_pb2.Endpoint(
                            address=address_pb2.Address(
                                socket_address=address_pb2.SocketAddress(
                                    address=host, port_value=port
                                )
                            )
                        )
                    )
                    for host, port in hosts
                ]
            )
        ],
    )


def cluster_resource(cluster: Cluster) -> cluster_pb2.Cluster:
    out = cluster_pb2.Cluster(
        name=cluster.name,
        connect_timeout=duration(cluster.connect_timeout),
        lb_policy=_LB[cluster.lb_policy],
    )
    if is_eds(cluster):
        out.type = cluster_pb2.Cluster.EDS
        out.eds_cluster_config.eds_config.CopyFrom(ads_source())
        out.eds_cluster_config.service_name = cluster.name
    else:
        out.type = cluster_pb2.Cluster.STRICT_DNS
        out.dns_lookup_family = cluster_pb2.Cluster.V4_PREFERRED
        out.load_assignment.CopyFrom(load_assignment(cluster))
    if cluster.protocol == UpstreamProtocol.http2:
        options = http_protocol_options_pb2.HttpProtocolOptions(
            explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
                http2_protocol_options=protocol_pb2.Http2ProtocolOptions()
            )
        )
        out.typed_extension_protocol_options[_HTTP_OPTIONS].CopyFrom(pack(options))
    if cluster.health_check is not None:
        hc = cluster.health_check
        http = health_check_pb2.HealthCheck.HttpHealthCheck(
            path=hc.path,
            expected_statuses=[
                range_pb2.Int64Range(start=s, end=s + 1) for s in hc.expected_statuses
            ],
        )
        if hc.host:
            http.host = hc.host
        if cluster.protocol == UpstreamProtocol.http2:
            # Probe with the protocol the backend speaks: a gRPC server has no HTTP/1.1.
            http.codec_client_type = http_pb2.HTTP2
        out.health_checks.append(
            health_check_pb2.HealthCheck(
                timeout=duration(hc.timeout),
                interval=duration(hc.interval),
                # Envoy probes a cluster that has never carried traffic every 60 s by
                # default: an endpoint that was down when the gateway started would then
                # stay out for up to a minute after it recovers. One interval everywhere
                # keeps recovery at healthy_threshold x interval (README, health checks).
                no_traffic_interval=duration(hc.interval),
                healthy_threshold=wrappers_pb2.UInt32Value(value=hc.healthy_threshold),
                unhealthy_threshold=wrappers_pb2.UInt32Value(value=hc.unhealthy_threshold),
                http_health_check=http,
            )
        )
        # An endpoint removed from the cluster leaves at once. Without this, Envoy keeps a
        # removed endpoint that still passes its health checks ("pending_dynamic_removal")
        # and sends it new requests until it fails them: a decommissioned host would keep
        # serving for as long as it stays up.
        out.ignore_health_on_host_removal = True
    if cluster.circuit_breakers is not None:
        cb = cluster.circuit_breakers
        thresholds = circuit_breaker_pb2.CircuitBreakers.Thresholds()
        for field in ("max_connections", "max_pending_requests", "max_requests", "max_retries"):
            value = getattr(cb, field)
            if value is not None:
                getattr(thresholds, field).value = value
        if cb.retry_budget is not None:
            thresholds.retry_budget.budget_percent.value = cb.retry_budget.percent
            thresholds.retry_budget.min_retry_concurrency.value = cb.retry_budget.min_concurrency
        out.circuit_breakers.thresholds.append(thresholds)
    if cluster.outlier_detection is not None:
        od = cluster.outlier_detection
        out.outlier_detection.CopyFrom(
            outlier_detection_pb2.OutlierDetection(
                consecutive_5xx=wrappers_pb2.UInt32Value(value=od.consecutive_5xx),
                interval=duration(od.interval),
                base_ejection_time=duration(od.base_ejection_time),
                max_ejection_percent=wrappers_pb2.UInt32Value(value=od.max_ejection_percent),
            )
        )
    return out


def grpc_collector_cluster(name: str, host: str, port: int) -> cluster_pb2.Cluster:
    """A generated cluster to a gRPC service Envoy itself calls (the analytics sink, the
    tracing collector): HTTP/2, static or DNS by the host, 1 s to connect."""
    options = http_protocol_options_pb2.HttpProtocolOptions(
        explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http2_protocol_options=protocol_pb2.Http2ProtocolOptions()
        )
    )
    cluster = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.STATIC if is_ip(host) else cluster_pb2.Cluster.STRICT_DNS,
        connect_timeout=duration("1s"),
        load_assignment=endpoints_of(name, [(host, port)]),
    )
    cluster.typed_extension_protocol_options[
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ].CopyFrom(pack(options))
    return cluster


#: the system's CA bundle (Debian's path; the Envoy image's too): a provider's https
#: endpoints are verified against it
SYSTEM_CA = "/etc/ssl/certs/ca-certificates.crt"


def url_cluster(name: str, url: str, connect_timeout: str) -> cluster_pb2.Cluster:
    """A generated cluster to the host of ``url`` that Envoy itself calls (a JWKS, an
    OpenID provider's token endpoint): DNS, TLS verified against the system CAs with SNI
    for https."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    cluster = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.STRICT_DNS,
        dns_lookup_family=cluster_pb2.Cluster.V4_PREFERRED,
        connect_timeout=duration(connect_timeout),
        load_assignment=endpoints_of(name, [(host, port)]),
    )
    if parts.scheme == "https":
        tls = tls_pb2.UpstreamTlsContext(
            sni=host,
            common_tls_context=tls_pb2.CommonTlsContext(
                validation_context=tls_common_pb2.CertificateValidationContext(
                    trusted_ca=base_pb2.DataSource(filename=SYSTEM_CA)
                )
            ),
        )
        cluster.transport_socket.name = "envoy.transport_sockets.tls"
        cluster.transport_socket.typed_config.CopyFrom(pack(tls))
    return cluster

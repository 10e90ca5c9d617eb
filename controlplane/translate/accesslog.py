"""Gateway observability -> the HTTP connection manager's access loggers (and a sink cluster).

Two loggers, both asynchronous in Envoy: ``stdout`` for structured lines an operator's log
shipper picks up, and ``http_grpc`` (the access-log service) for usage analytics. The gRPC
logger buffers entries in Envoy and sends them in batches on a long-lived stream; a slow
or dead sink costs dropped log entries, never a request. The sink is the controller (through
the bootstrap's ``xds_cluster``) unless the gateway names a separate one, which then gets a
cluster of its own.
"""

from __future__ import annotations

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2, grpc_service_pb2
from envoy.config.core.v3 import substitution_format_string_pb2 as fmt_pb2
from envoy.extensions.access_loggers.grpc.v3 import als_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from google.protobuf import struct_pb2, wrappers_pb2

from ..policy import Gateway
from ..policy.common import is_ip, parse_hostport
from ..policy.headers import CONSUMER_HEADER
from ..policy.observability import LOG_FIELDS, LogFormat
from ..policy.reserved import SINK_CLUSTER, XDS_CLUSTER
from .cluster import grpc_collector_cluster
from .common import duration, pack

__all__ = ["SINK_CLUSTER", "XDS_CLUSTER", "access_logs", "sink_cluster"]

#: request headers the sink reads from each entry
LOGGED_HEADERS = [CONSUMER_HEADER]


def access_logs(gateway: Gateway) -> list[accesslog_pb2.AccessLog]:
    """The loggers of the gateway's HTTP connection manager (none by default)."""
    out = []
    log = gateway.access_log
    if log is not None and log.format != LogFormat.off:
        out.append(
            accesslog_pb2.AccessLog(
                name="envoy.access_loggers.stdout",
                typed_config=pack(stream_pb2.StdoutAccessLog(log_format=_format(log))),
            )
        )
    analytics = gateway.analytics
    if analytics is not None and analytics.enabled:
        cluster = XDS_CLUSTER if analytics.sink is None else SINK_CLUSTER
        config = als_pb2.HttpGrpcAccessLogConfig(
            common_config=als_pb2.CommonGrpcAccessLogConfig(
                log_name=gateway.name,
                transport_api_version=config_source_pb2.ApiVersion.V3,
                grpc_service=grpc_service_pb2.GrpcService(
                    envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=cluster)
                ),
                buffer_size_bytes=wrappers_pb2.UInt32Value(value=analytics.buffer_size_bytes),
                buffer_flush_interval=duration(analytics.flush_interval),
            ),
            additional_request_headers_to_log=LOGGED_HEADERS,
        )
        out.append(
            accesslog_pb2.AccessLog(
                name="envoy.access_loggers.http_grpc", typed_config=pack(config)
            )
        )
    return out


def _format(log: object) -> fmt_pb2.SubstitutionFormatString:
    fields: list[str] = log.fields  # type: ignore[attr-defined]
    if log.format == LogFormat.text:  # type: ignore[attr-defined]
        line = " ".join(f"{name}={LOG_FIELDS[name]}" for name in fields) + "\n"
        return fmt_pb2.SubstitutionFormatString(
            text_format_source=base_pb2.DataSource(inline_string=line)
        )
    struct = struct_pb2.Struct()
    for name in fields:
        struct[name] = LOG_FIELDS[name]
    return fmt_pb2.SubstitutionFormatString(json_format=struct)


#: static secrets of envoy/bootstrap-mtls.yaml: the Envoy's client certificate and the CA
#: of the control plane's certificates
CLIENT_SECRET = "xds_client_certificate"
CA_SECRET = "xds_trusted_ca"


def sink_cluster(gateway: Gateway, *, tls: bool = False) -> cluster_pb2.Cluster | None:
    """The cluster of a separate analytics sink (HTTP/2, for gRPC), when the gateway names one.

    ``tls``: mutual TLS with the Envoy's control-channel certificate (the bootstrap's static
    secrets), the sink's certificate verified against the same CA and the sink's host."""
    analytics = gateway.analytics
    if analytics is None or not analytics.enabled or analytics.sink is None:
        return None
    host, port = parse_hostport(analytics.sink)
    cluster = grpc_collector_cluster(SINK_CLUSTER, host, port)
    if tls:
        cluster.transport_socket.CopyFrom(_sink_tls(host))
    return cluster


def _sink_tls(host: str) -> base_pb2.TransportSocket:
    from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
    from envoy.type.matcher.v3 import string_pb2

    san = common_pb2.SubjectAltNameMatcher(
        san_type=(
            common_pb2.SubjectAltNameMatcher.IP_ADDRESS
            if is_ip(host)
            else common_pb2.SubjectAltNameMatcher.DNS
        ),
        matcher=string_pb2.StringMatcher(exact=host),
    )
    context = tls_pb2.UpstreamTlsContext(
        common_tls_context=tls_pb2.CommonTlsContext(
            alpn_protocols=["h2"],
            tls_certificate_sds_secret_configs=[secret_pb2.SdsSecretConfig(name=CLIENT_SECRET)],
            combined_validation_context=tls_pb2.CommonTlsContext.CombinedCertificateValidationContext(
                default_validation_context=common_pb2.CertificateValidationContext(
                    match_typed_subject_alt_names=[san]
                ),
                validation_context_sds_secret_config=secret_pb2.SdsSecretConfig(name=CA_SECRET),
            ),
        ),
        sni="" if is_ip(host) else host,
    )
    return base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=pack(context))

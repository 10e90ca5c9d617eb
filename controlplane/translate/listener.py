"""Gateway policy -> Envoy Listener with an HTTP connection manager fed by RDS."""

from __future__ import annotations

from envoy.config.core.v3 import address_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import wrappers_pb2

from .common import ads_source, pack
from .filters import http_filters
from .view import GatewayView

__all__ = ["listener_resource"]

HCM = "envoy.filters.network.http_connection_manager"


def listener_resource(view: GatewayView) -> listener_pb2.Listener:
    gateway = view.gateway
    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix=gateway.name,
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        rds=hcm_pb2.Rds(config_source=ads_source(), route_config_name=gateway.name),
        http_filters=http_filters(view),
        # Hosts are matched without the port, so "api.example.com" matches on any port.
        strip_any_host_port=True,
        normalize_path=wrappers_pb2.BoolValue(value=True),
        merge_slashes=True,
        use_remote_address=wrappers_pb2.BoolValue(value=True),
    )
    return listener_pb2.Listener(
        name=gateway.name,
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(
                address=gateway.address, port_value=gateway.port
            )
        ),
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[listener_components_pb2.Filter(name=HCM, typed_config=pack(hcm))]
            )
        ],
    )

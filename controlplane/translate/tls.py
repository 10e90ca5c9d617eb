"""HTTPS gateways: certificates as SDS secrets, SNI filter chains, the HTTP->HTTPS redirect.

Listeners name their certificates (``tls_certificate_sds_secret_configs`` with an ADS
config source) instead of carrying them, so rotating a certificate is one SDS update: Envoy
uses the new certificate for new connections without re-creating the listener.
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from google.protobuf import wrappers_pb2

from ..policy import Certificate, Gateway
from .common import ads_source, pack
from .edge import apply_limits

__all__ = [
    "redirect_listener",
    "redirect_listener_name",
    "secret_resource",
    "secure_listener",
    "server_names",
]

TLS_SOCKET = "envoy.transport_sockets.tls"
TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"
HCM = "envoy.filters.network.http_connection_manager"
#: what HTTPS clients may negotiate (HTTP/2 first, as browsers and gRPC expect)
ALPN = ("h2", "http/1.1")


def secret_resource(cert: Certificate) -> secret_pb2.Secret:
    return secret_pb2.Secret(
        name=cert.name,
        tls_certificate=common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_string=cert.cert),
            private_key=base_pb2.DataSource(inline_string=cert.key),
        ),
    )


def server_names(certs: Iterable[Certificate]) -> list[tuple[Certificate, list[str]]]:
    """Each certificate with the SNI names it answers: its DNS SANs not claimed before.

    A name in two certificates goes to the one listed first (Envoy refuses two filter chains
    with the same match), so the order of ``tls.certificates`` decides.
    """
    claimed: set[str] = set()
    out = []
    for cert in certs:
        names = [n for n in cert.info().dns_names if n not in claimed]
        claimed.update(names)
        out.append((cert, names))
    return out


def _transport_socket(cert: Certificate) -> base_pb2.TransportSocket:
    context = tls_pb2.DownstreamTlsContext(
        common_tls_context=tls_pb2.CommonTlsContext(
            tls_certificate_sds_secret_configs=[
                secret_pb2.SdsSecretConfig(name=cert.name, sds_config=ads_source())
            ],
            alpn_protocols=list(ALPN),
        )
    )
    return base_pb2.TransportSocket(name=TLS_SOCKET, typed_config=pack(context))


def secure_listener(listener: listener_pb2.Listener, certs: list[Certificate]) -> None:
    """Turn the gateway's plain listener into HTTPS: one filter chain per certificate,
    chosen by SNI, and the first certificate for clients that send no (or another) name."""
    if not certs:
        return
    template = listener.filter_chains[0]
    chains = []
    for cert, names in server_names(certs):
        if not names:
            continue  # no DNS SANs (or all claimed): reachable only as the default
        chain = listener_components_pb2.FilterChain(
            name=f"sni:{cert.name}",
            filter_chain_match=listener_components_pb2.FilterChainMatch(server_names=names),
            transport_socket=_transport_socket(cert),
        )
        chain.filters.extend(template.filters)
        chains.append(chain)
    default = listener_components_pb2.FilterChain(
        name=f"default:{certs[0].name}", transport_socket=_transport_socket(certs[0])
    )
    default.filters.extend(template.filters)
    del listener.filter_chains[:]
    listener.filter_chains.extend(chains)
    listener.default_filter_chain.CopyFrom(default)
    listener.listener_filters.append(
        listener_components_pb2.ListenerFilter(
            name=TLS_INSPECTOR, typed_config=pack(tls_inspector_pb2.TlsInspector())
        )
    )


def redirect_listener_name(gateway: Gateway) -> str:
    return f"{gateway.name}-http-redirect"


def redirect_listener(gateway: Gateway) -> listener_pb2.Listener | None:
    """A plain-HTTP listener answering every request with a redirect to the same host and
    path over HTTPS on the gateway's port (308: the method and body are kept)."""
    if gateway.tls is None or gateway.tls.http_redirect_port is None:
        return None
    name = redirect_listener_name(gateway)
    route = rc.Route(
        name="https-redirect",
        match=rc.RouteMatch(prefix="/"),
        redirect=rc.RedirectAction(
            https_redirect=True,
            port_redirect=gateway.port,
            response_code=rc.RedirectAction.PERMANENT_REDIRECT,
        ),
    )
    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix=name,
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        route_config=route_pb2.RouteConfiguration(
            name=name,
            virtual_hosts=[rc.VirtualHost(name=name, domains=["*"], routes=[route])],
        ),
        http_filters=[
            hcm_pb2.HttpFilter(
                name="envoy.filters.http.router", typed_config=pack(router_pb2.Router())
            )
        ],
        use_remote_address=wrappers_pb2.BoolValue(value=True),
    )
    apply_limits(gateway, hcm)  # slow clients are held to the same bounds here
    return listener_pb2.Listener(
        name=name,
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(
                address=gateway.address, port_value=gateway.tls.http_redirect_port
            )
        ),
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[listener_components_pb2.Filter(name=HCM, typed_config=pack(hcm))]
            )
        ],
    )

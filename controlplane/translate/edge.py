"""Edge controls -> Envoy: the client address, IP rules, limits and external authorization.

* Client address (HCM): ``use_remote_address`` with ``xff_num_trusted_hops`` (0 by default:
  X-Forwarded-For is never believed), or the XFF original-IP extension with trusted CIDRs.
  Envoy then treats the address it found as the downstream remote address, so the RBAC
  ``remote_ip`` of the IP rules, the rate-limit ``remote_address`` descriptor and the access
  log's ``%DOWNSTREAM_REMOTE_ADDRESS%`` (analytics) all read the same address (ADR 0043).
* IP rules: ``gateway.client_ip`` (RBAC, the gateway's rules, over ECDS) first in the chain,
  and ``gateway.route_client_ip`` (RBAC, off unless a route has rules, which its route
  config carries). Two instances because an RBAC per-route config replaces the filter's:
  one filter could not apply the gateway's rules and a route's together.
* Body limit: a declared ``Content-Length`` over the limit matches a copy of the route that
  answers 413 (nothing forwarded, nothing buffered); a request with a length within the
  limit streams through; only a request without a length (chunked) goes through
  ``gateway.body_limit`` (Envoy's buffer filter), which holds at most the limit and answers
  413 beyond it: Envoy has no streaming byte counter that can answer 413.
* Limits (HCM): header size and count, request-headers, request, stream-idle and
  connection-idle timeouts.
* ext_authz: one filter instance (``gateway.ext_authz.<digest>``) per distinct service
  configuration routes use, off in the chain and turned on by those routes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from envoy.config.core.v3 import (
    address_pb2,
    base_pb2,
    config_source_pb2,
    extension_pb2,
    grpc_service_pb2,
    http_uri_pb2,
)
from envoy.config.listener.v3 import listener_pb2
from envoy.config.rbac.v3 import rbac_pb2 as rbac_config
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.buffer.v3 import buffer_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.http.original_ip_detection.xff.v3 import xff_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2
from envoy.type.v3 import range_pb2
from google.protobuf import wrappers_pb2
from google.protobuf.message import Message

from ..policy import Gateway, Route
from ..policy.edge import BODY_MAX, ClientCertRule, ExtAuthz, IpRules
from .common import ads_source, duration, pack

if TYPE_CHECKING:
    from .auth import RouteContext
    from .view import GatewayView

__all__ = [
    "BODY_LIMIT_FILTER",
    "CERT_CONSUMER_FILTER",
    "DENIED_CERT",
    "DENIED_IP",
    "EXT_AUTHZ_PREFIX",
    "GATEWAY_IP_FILTER",
    "ROUTE_IP_FILTER",
    "apply_client_address",
    "apply_client_auth",
    "apply_limits",
    "body_limit_filter",
    "body_limit_variants",
    "cert_consumer_filter",
    "client_ca_secret",
    "configure_route",
    "edge_clusters",
    "edge_features",
    "ext_authz_filters",
    "gateway_ip_filter",
    "route_ip_filter",
]

GATEWAY_IP_FILTER = "gateway.client_ip"
ROUTE_IP_FILTER = "gateway.route_client_ip"
BODY_LIMIT_FILTER = "gateway.body_limit"
EXT_AUTHZ_PREFIX = "gateway.ext_authz."
#: the route rule refusing a client certificate (or its absence)
DENIED_CERT = "client-cert:"
#: prefix of the IP rules' RBAC policy names (``ip:denied``, ``ip:not-allowed``): the 403
#: body names the one that refused (listener.py)
DENIED_IP = "ip:"
_XFF_EXTENSION = "envoy.http.original_ip_detection.xff"


# -- listener (HCM) ---------------------------------------------------------------------


def apply_client_address(gateway: Gateway, hcm: hcm_pb2.HttpConnectionManager) -> None:
    """Which address Envoy takes as the client's (and appends to X-Forwarded-For).

    Trusted CIDRs need the original-IP extension, which Envoy runs only without
    ``use_remote_address``; the extension then alone decides (an untrusted peer, or an XFF
    made only of trusted addresses, leaves the peer as the client).
    """
    policy = gateway.client_address
    if policy is None or not policy.trusted_cidrs:
        hcm.use_remote_address.value = True
        if policy is not None and policy.trusted_hops:
            hcm.xff_num_trusted_hops = policy.trusted_hops
        return
    hcm.use_remote_address.value = False
    config = xff_pb2.XffConfig(
        xff_trusted_cidrs=xff_pb2.XffTrustedCidrs(cidrs=[_cidr(c) for c in policy.trusted_cidrs])
    )
    hcm.original_ip_detection_extensions.append(
        extension_pb2.TypedExtensionConfig(name=_XFF_EXTENSION, typed_config=pack(config))
    )


def apply_limits(gateway: Gateway, hcm: hcm_pb2.HttpConnectionManager) -> None:
    """Header size/count and the timeouts against slow clients (Limits has the defaults)."""
    limits = gateway.limits
    hcm.max_request_headers_kb.value = limits.max_request_headers_kb
    hcm.common_http_protocol_options.max_headers_count.value = limits.max_headers_count
    hcm.common_http_protocol_options.idle_timeout.CopyFrom(duration(limits.idle_timeout))
    hcm.request_headers_timeout.CopyFrom(duration(limits.request_headers_timeout))
    hcm.stream_idle_timeout.CopyFrom(duration(limits.stream_idle_timeout))
    if limits.request_timeout is not None:
        hcm.request_timeout.CopyFrom(duration(limits.request_timeout))


def _cidr(value: str) -> address_pb2.CidrRange:
    address, _, length = value.partition("/")
    return address_pb2.CidrRange(
        address_prefix=address, prefix_len=wrappers_pb2.UInt32Value(value=int(length))
    )


# -- IP rules ---------------------------------------------------------------------------


def _remote_in(ranges: list[str]) -> rbac_config.Principal:
    ids = [rbac_config.Principal(remote_ip=_cidr(c)) for c in ranges]
    if len(ids) == 1:
        return ids[0]
    return rbac_config.Principal(or_ids=rbac_config.Principal.Set(ids=ids))


def ip_rbac(rules: IpRules | None, cert: ClientCertRule | None = None) -> rbac_filter.RBAC:
    """A DENY RBAC: ``client-cert:not-allowed`` without a verified certificate the route
    admits, ``ip:denied`` for a client in ``deny``, ``ip:not-allowed`` for one
    outside a non-empty ``allow``. ``remote_ip`` is the client address the listener
    determined (the TCP peer unless trusted proxies say otherwise)."""
    policies: dict[str, rbac_config.Policy] = {}
    every = [rbac_config.Permission(any=True)]
    if cert is not None:
        policies[DENIED_CERT + "not-allowed"] = rbac_config.Policy(
            permissions=every, principals=[rbac_config.Principal(not_id=_certified(cert))]
        )
    if rules is not None and rules.deny:
        policies[DENIED_IP + "denied"] = rbac_config.Policy(
            permissions=every, principals=[_remote_in(rules.deny)]
        )
    if rules is not None and rules.allow:
        policies[DENIED_IP + "not-allowed"] = rbac_config.Policy(
            permissions=every,
            principals=[rbac_config.Principal(not_id=_remote_in(rules.allow))],
        )
    return rbac_filter.RBAC(
        rules=rbac_config.RBAC(action=rbac_config.RBAC.DENY, policies=policies),
        rules_stat_prefix="client_ip.",
    )


def _certified(cert: ClientCertRule) -> rbac_config.Principal:
    """A verified client certificate, with one of the names if any are given."""
    Authenticated = rbac_config.Principal.Authenticated
    if not cert.names:
        return rbac_config.Principal(authenticated=Authenticated())
    ids = [
        rbac_config.Principal(
            authenticated=Authenticated(principal_name=string_pb2.StringMatcher(exact=n))
        )
        for n in cert.names
    ]
    return (
        ids[0]
        if len(ids) == 1
        else rbac_config.Principal(or_ids=rbac_config.Principal.Set(ids=ids))
    )


def gateway_ip_filter(view: GatewayView) -> rbac_filter.RBAC | None:
    rules = view.gateway.ip_rules
    return ip_rbac(rules) if rules is not None else None


def route_ip_filter() -> rbac_filter.RBAC:
    """Allows everything: routes with rules carry their own."""
    return rbac_filter.RBAC(rules_stat_prefix="route_client_ip.")


# -- body limit -------------------------------------------------------------------------


def body_limit(route: Route, context: RouteContext) -> int | None:
    if route.cluster is None and route.backends is None and route.aggregate is None:
        return None  # redirects and direct responses read no body
    if route.websocket:
        return None  # an upgraded stream is no request body: buffering it would stall it
    own = route.max_request_body
    return own if own is not None else context.max_request_body


def body_limit_filter() -> buffer_pb2.Buffer:
    """Off in the chain; a limited route's request without Content-Length turns it on."""
    return buffer_pb2.Buffer(max_request_bytes=wrappers_pb2.UInt32Value(value=1_048_576))


def body_limit_variants(
    variants: list[rc.Route], route: Route, context: RouteContext
) -> list[rc.Route]:
    """Each variant as three: a declared length over the limit -> 413 (after the same
    per-route checks: credentials, IP rules); a declared length within it -> as is; no
    length -> through the buffer filter, which answers 413 past the limit."""
    limit = body_limit(route, context)
    if limit is None:
        return variants
    out = []
    for variant in variants:
        too_big = rc.Route()
        too_big.CopyFrom(variant)
        too_big.name = variant.name + ":too-large" if variant.name else ""
        too_big.ClearField("route")
        for per_route in list(too_big.typed_per_filter_config):
            if per_route.startswith(EXT_AUTHZ_PREFIX):
                del too_big.typed_per_filter_config[per_route]  # no need to ask about it
        too_big.direct_response.status = 413
        too_big.direct_response.body.inline_string = "request body too large\n"
        too_big.match.headers.append(
            rc.HeaderMatcher(
                name="content-length",
                range_match=range_pb2.Int64Range(start=limit + 1, end=2**63 - 1),
            )
        )
        sized = rc.Route()
        sized.CopyFrom(variant)
        sized.match.headers.append(rc.HeaderMatcher(name="content-length", present_match=True))
        unsized = variant
        unsized.typed_per_filter_config[BODY_LIMIT_FILTER].CopyFrom(
            pack(
                buffer_pb2.BufferPerRoute(
                    buffer=buffer_pb2.Buffer(
                        max_request_bytes=wrappers_pb2.UInt32Value(value=min(limit, BODY_MAX))
                    )
                )
            )
        )
        out += [too_big, sized, unsized]
    return out


# -- ext_authz --------------------------------------------------------------------------


def ext_authz_name(authz: ExtAuthz) -> str:
    """The filter instance of this configuration: equal settings share one."""
    digest = hashlib.sha256(authz.model_dump_json().encode()).hexdigest()[:12]
    return f"{EXT_AUTHZ_PREFIX}{authz.cluster}.{digest}"


def _matchers(names: list[str]) -> string_pb2.ListStringMatcher:
    return string_pb2.ListStringMatcher(
        patterns=[string_pb2.StringMatcher(exact=n, ignore_case=True) for n in names]
    )


def ext_authz_config(authz: ExtAuthz) -> ext_authz_pb2.ExtAuthz:
    out = ext_authz_pb2.ExtAuthz(
        transport_api_version=config_source_pb2.ApiVersion.V3,
        failure_mode_allow=authz.failure_mode == "open",
        failure_mode_allow_header_add=authz.failure_mode == "open",
        stat_prefix=authz.cluster,
    )
    if authz.protocol == "grpc":
        out.grpc_service.CopyFrom(
            grpc_service_pb2.GrpcService(
                envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=authz.cluster),
                timeout=duration(authz.timeout),
            )
        )
    else:
        service = ext_authz_pb2.HttpService(
            server_uri=http_uri_pb2.HttpUri(
                uri=f"http://{authz.cluster}",
                cluster=authz.cluster,
                timeout=duration(authz.timeout),
            ),
            path_prefix=authz.path_prefix or "",
        )
        if authz.upstream_headers:
            service.authorization_response.allowed_upstream_headers.CopyFrom(
                _matchers(authz.upstream_headers)
            )
        out.http_service.CopyFrom(service)
    if authz.headers:
        out.allowed_headers.CopyFrom(_matchers(authz.headers))
    if authz.body is not None:
        out.with_request_body.CopyFrom(
            ext_authz_pb2.BufferSettings(
                max_request_bytes=authz.body.max_bytes,
                allow_partial_message=authz.body.allow_partial,
            )
        )
    return out


def ext_authz_filters(view: GatewayView, features: Mapping[str, int]) -> list[tuple[str, Message]]:
    """The instances the gateway's routes use, by name (routes are scanned only when some
    route has ext_authz)."""
    if not any(n.startswith(EXT_AUTHZ_PREFIX) and c > 0 for n, c in features.items()):
        return []
    found: dict[str, ExtAuthz] = {}
    for route in view.routes.values():
        if route.ext_authz is not None:
            found.setdefault(ext_authz_name(route.ext_authz), route.ext_authz)
    return [(name, ext_authz_config(found[name])) for name in sorted(found)]


# -- per route --------------------------------------------------------------------------

_ON = ext_authz_pb2.ExtAuthzPerRoute(check_settings=ext_authz_pb2.CheckSettings())


def configure_route(message: rc.Route, route: Route) -> None:
    """The route's IP rules and authorization service (per-filter settings)."""
    per = message.typed_per_filter_config
    if route.ip_rules is not None or route.client_cert is not None:
        rules = ip_rbac(route.ip_rules, route.client_cert)
        per[ROUTE_IP_FILTER].CopyFrom(pack(rbac_filter.RBACPerRoute(rbac=rules)))
    if route.ext_authz is not None:
        per[ext_authz_name(route.ext_authz)].CopyFrom(pack(_ON))


def edge_features(route: Route, context: RouteContext) -> Iterator[str]:
    """The filters of this module a route needs (counted per gateway by the RouteTable)."""
    if route.ip_rules is not None or route.client_cert is not None:
        yield ROUTE_IP_FILTER
    if body_limit(route, context) is not None:
        yield BODY_LIMIT_FILTER
    if route.ext_authz is not None:
        yield ext_authz_name(route.ext_authz)


def edge_clusters(route: Route) -> list[str]:
    """Clusters the route needs besides those it forwards to (its authorization service)."""
    if route.ext_authz is None or route.ext_authz.cluster in route.clusters():
        return []
    return [route.ext_authz.cluster]


# -- client certificates (mutual TLS) ---------------------------------------------------


def client_ca_name(gateway: Gateway) -> str:
    """The SDS secret of the gateway's client CA bundle (outside the policy name space)."""
    return f"client-ca:{gateway.name}"


def client_ca_secret(gateway: Gateway) -> secret_pb2.Secret | None:
    """The CA bundle as its own SDS secret: replacing it (rotation) updates the secret,
    not the listener, so open connections stay."""
    auth = gateway.tls.client_auth if gateway.tls is not None else None
    if auth is None:
        return None
    return secret_pb2.Secret(
        name=client_ca_name(gateway),
        validation_context=common_pb2.CertificateValidationContext(
            trusted_ca=base_pb2.DataSource(inline_string=auth.ca)
        ),
    )


def apply_client_auth(listener: listener_pb2.Listener, gateway: Gateway) -> None:
    """Every HTTPS filter chain asks for (or requires) a client certificate verified against
    the CA secret, and its HTTP connection manager forwards the verified certificate's
    subject and SANs in x-forwarded-client-cert, replacing whatever the client sent."""
    auth = gateway.tls.client_auth if gateway.tls is not None else None
    if auth is None:
        return
    chains = list(listener.filter_chains)
    if listener.HasField("default_filter_chain"):
        chains.append(listener.default_filter_chain)
    for chain in chains:
        if not chain.HasField("transport_socket"):
            continue
        context = tls_pb2.DownstreamTlsContext()
        chain.transport_socket.typed_config.Unpack(context)
        context.require_client_certificate.value = auth.mode == "required"
        context.common_tls_context.validation_context_sds_secret_config.CopyFrom(
            secret_pb2.SdsSecretConfig(name=client_ca_name(gateway), sds_config=ads_source())
        )
        chain.transport_socket.typed_config.CopyFrom(pack(context))
        for flt in chain.filters:
            hcm = hcm_pb2.HttpConnectionManager()
            if not flt.typed_config.Unpack(hcm):
                continue
            hcm.forward_client_cert_details = hcm_pb2.HttpConnectionManager.SANITIZE_SET
            hcm.set_current_client_cert_details.CopyFrom(
                hcm_pb2.HttpConnectionManager.SetCurrentClientCertDetails(
                    subject=wrappers_pb2.BoolValue(value=True), uri=True, dns=True
                )
            )
            flt.typed_config.CopyFrom(pack(hcm))


#: sets x-consumer-id from the verified client certificate (translate/filters.py)
CERT_CONSUMER_FILTER = "gateway.cert_consumer"

_CERT_CONSUMER_LUA = """
local consumers = {MAP}
function envoy_on_request(handle)
  local headers = handle:headers()
  if headers:get("x-consumer-id") ~= nil then
    return
  end
  local ssl = handle:streamInfo():downstreamSslConnection()
  if ssl == nil or not ssl:peerCertificateValidated() then
    return
  end
  local found = nil
  for _, name in ipairs(ssl:uriSanPeerCertificate()) do
    found = found or consumers[name]
  end
  for _, name in ipairs(ssl:dnsSansPeerCertificate()) do
    found = found or consumers[name]
  end
  found = found or consumers[ssl:subjectPeerCertificate()]
  if found ~= nil then
    headers:replace("x-consumer-id", found)
  end
end
"""


def lua_string(text: str) -> str:
    """A Lua string literal: letters and digits as they are, everything else as \\ddd."""
    return (
        '"'
        + "".join(
            c if c.isascii() and c.isalnum() else "".join(f"\\{b:03d}" for b in c.encode())
            for c in text
        )
        + '"'
    )


def cert_consumer_filter(view: GatewayView) -> lua_pb2.Lua | None:
    """On a gateway asking for client certificates, a request no credential identified
    (no x-consumer-id after JWT and API key) gets the consumer whose ``certificates`` name
    the verified certificate (URI SAN, then DNS SAN, then subject): plans, rules on
    consumers and analytics then work as for keys and tokens. A name claimed by two
    consumers goes to the first by name."""
    gateway = view.gateway
    if gateway.tls is None or gateway.tls.client_auth is None:
        return None
    consumers = view.objects.get("consumer", {})
    mapping: dict[str, str] = {}
    for name in sorted(consumers):
        for cert_name in getattr(consumers[name], "certificates", ()):
            mapping.setdefault(cert_name, name)
    if not mapping:
        return None
    table = (
        "{"
        + ", ".join(f"[{lua_string(k)}] = {lua_string(v)}" for k, v in sorted(mapping.items()))
        + "}"
    )
    return lua_pb2.Lua(
        default_source_code=base_pb2.DataSource(
            inline_string=_CERT_CONSUMER_LUA.replace("{MAP}", table)
        )
    )

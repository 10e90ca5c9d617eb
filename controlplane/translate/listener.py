"""Gateway policy -> Envoy Listener with an HTTP connection manager fed by RDS (or scoped
RDS for a sharded gateway)."""

from __future__ import annotations

from envoy.config.accesslog.v3 import accesslog_pb2 as access_log_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, protocol_pb2, substitution_format_string_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import struct_pb2

from ..policy import Gateway
from .accesslog import access_logs
from .auth import DENIED_CLAIM, DENIED_CONSUMER, DENIED_SCOPE
from .common import ads_source, pack
from .edge import DENIED_CERT, DENIED_IP, apply_client_address, apply_limits
from .shard import early_mutation, scoped_routes
from .tracing import tracing
from .view import GatewayView

__all__ = ["listener_resource", "request_hygiene"]

HCM = "envoy.filters.network.http_connection_manager"

_ESCAPED_SLASHES = {
    "redirect": hcm_pb2.HttpConnectionManager.UNESCAPE_AND_REDIRECT,
    "reject": hcm_pb2.HttpConnectionManager.REJECT_REQUEST,
}
_UNDERSCORES = {
    "drop": protocol_pb2.HttpProtocolOptions.DROP_HEADER,
    "reject": protocol_pb2.HttpProtocolOptions.REJECT_REQUEST,
}


def request_hygiene(gateway: Gateway, hcm: hcm_pb2.HttpConnectionManager) -> None:
    """Make the request Envoy routes on the request the backend reads (ADR 0022).

    * Paths are normalised (RFC 3986 dot segments, %2e and unreserved escapes decoded,
      backslashes as slashes) and repeated slashes merged before routing, and that path is
      the one forwarded, so ``/public/%2e%2e/private`` is routed (and authenticated) as
      ``/private``.
    * Encoded slashes (%2F, %5C) are not decoded by normalisation, yet most backends decode
      them: they are redirected to the decoded path (which is then routed like any request)
      or refused, per gateway.
    * Requests with header names with underscores are refused (or the headers dropped):
      CGI/WSGI backends merge ``x_consumer_id`` into ``x-consumer-id``, past the
      identity-header strip.
    """
    hcm.normalize_path.value = True
    hcm.merge_slashes = True
    hcm.path_with_escaped_slashes_action = _ESCAPED_SLASHES[gateway.escaped_slashes]
    hcm.common_http_protocol_options.headers_with_underscores_action = _UNDERSCORES[
        gateway.underscore_headers
    ]


def listener_resource(
    view: GatewayView, filters: list[hcm_pb2.HttpFilter], shard_length: int | None = None
) -> listener_pb2.Listener:
    """``shard_length``: the gateway's routes are sharded by that many path characters
    (translate/shard.py): scoped RDS instead of one RouteConfiguration."""
    gateway = view.gateway
    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix=gateway.name,
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        http_filters=filters,
        local_reply_config=local_replies(),
        # Hosts are matched without the port, so "api.example.com" matches on any port.
        strip_any_host_port=True,
        access_log=access_logs(gateway),
    )
    apply_client_address(gateway, hcm)
    apply_limits(gateway, hcm)
    request_hygiene(gateway, hcm)
    traced = tracing(gateway)
    if traced is not None:
        hcm.tracing.CopyFrom(traced)
    if shard_length is None:
        hcm.rds.CopyFrom(hcm_pb2.Rds(config_source=ads_source(), route_config_name=gateway.name))
    else:
        hcm.scoped_routes.CopyFrom(scoped_routes(gateway.name))
        hcm.early_header_mutation_extensions.append(early_mutation(shard_length))
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


def local_replies() -> hcm_pb2.LocalReplyConfig:
    """How the gateway's own 401s and 403s read (the first matching mapper applies)."""
    return hcm_pb2.LocalReplyConfig(mappers=[_challenge_on_401(), *forbidden_replies()])


#: the local reply detail Envoy's RBAC filter gives a refusal: this + the policy name + "]"
RBAC_DENIED = "rbac_access_denied_matched_policy["
CEL_FILTER = "envoy.access_loggers.extension_filters.cel"
#: what each kind of route rule (translate/auth.py: one RBAC policy per rule, named
#: ``scope:NAME``, ``claim:NAME`` or ``consumer``) tells the caller
_FORBIDDEN = (
    (DENIED_SCOPE, "missing scope: the token lacks a scope this route requires"),
    (DENIED_CLAIM, "claim not accepted: a claim of the token lacks a value this route accepts"),
    (DENIED_CONSUMER, "consumer not allowed: not among this route's consumers or groups"),
    (DENIED_IP, "client address not allowed: refused by the IP rules of this gateway or route"),
    (DENIED_CERT, "client certificate required: none verified, or not one this route allows"),
)


def forbidden_replies() -> list[hcm_pb2.ResponseMapper]:
    """A route rule's 403 as JSON naming the unmet requirement, e.g.
    ``{"error": "forbidden", "message": "missing scope: ...",
    "requirement": "rbac_access_denied_matched_policy[scope:read:users]"}``.

    The requirement is the name of the RBAC policy that refused the request, i.e. the
    route's own configuration (a scope or claim *name*, or ``consumer``); nothing from the
    token, and neither the claim values nor the consumers a route accepts, is echoed.
    Envoy's response code detail is the only place the policy name is known when the reply
    is formatted (the RBAC filter writes its dynamic metadata after sending the 403), and a
    CEL filter on it picks the message. Other 403s (jwt_authn's wrong audience) keep
    Envoy's text.
    """
    out = []
    for prefix, message in _FORBIDDEN:
        body = struct_pb2.Struct()
        body.update(
            {"error": "forbidden", "message": message, "requirement": "%RESPONSE_CODE_DETAILS%"}
        )
        expression = cel_pb2.ExpressionFilter(
            expression=f"response.code_details.startsWith('{RBAC_DENIED}{prefix}')"
        )
        out.append(
            hcm_pb2.ResponseMapper(
                filter=access_log_pb2.AccessLogFilter(
                    extension_filter=access_log_pb2.ExtensionFilter(
                        name=CEL_FILTER, typed_config=pack(expression)
                    )
                ),
                body_format_override=substitution_format_string_pb2.SubstitutionFormatString(
                    json_format=body
                ),
            )
        )
    return out


def _challenge_on_401() -> hcm_pb2.ResponseMapper:
    """Every 401 the gateway sends carries a challenge (JWT's own has a more precise one)."""
    return hcm_pb2.ResponseMapper(
        filter=access_log_pb2.AccessLogFilter(
            status_code_filter=access_log_pb2.StatusCodeFilter(
                comparison=access_log_pb2.ComparisonFilter(
                    op=access_log_pb2.ComparisonFilter.EQ,
                    value=base_pb2.RuntimeUInt32(default_value=401, runtime_key="gw_401"),
                )
            )
        ),
        headers_to_add=[
            base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(
                    key="www-authenticate", value='Bearer realm="gateway", ApiKey'
                ),
                append_action=base_pb2.HeaderValueOption.ADD_IF_ABSENT,
            )
        ],
    )

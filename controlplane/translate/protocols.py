"""Protocol translation on a route: gRPC deadlines, JSON -> gRPC transcoding, gRPC-Web,
WebSocket upgrades.

* ``grpc_timeout_max`` -> ``RouteAction.max_stream_duration.grpc_timeout_header_max``:
  Envoy then takes the request's ``grpc-timeout`` header (capped at this value) as the
  route's timeout, instead of the route timeout.
* ``transcoding`` -> Envoy's ``grpc_json_transcoder``, configured on the route. The filter
  sits in the chain disabled (``HttpFilter.disabled``) with an empty config, so it only acts
  on routes that carry a config of their own, and it is in a gateway's chain only while
  some route of the gateway transcodes. Settings, the same for every route:

  - every method is also ``POST /package.Service/Method`` with a JSON body, besides its
    ``google.api.http`` bindings: Envoy's ``auto_mapping`` covers methods without
    annotations, and the translator adds that binding to annotated methods
    (``additional_bindings``) in the descriptor set it sends;
  - ``match_incoming_request_route``: the route matched by the REST path stays the route
    after the path becomes ``/package.Service/Method`` (routing on the REST path);
  - ``request_validation_options.reject_unknown_method``: a path/method that maps to no
    method is answered 404 by Envoy instead of being sent to the gRPC server as JSON;
  - ``convert_grpc_status``: a gRPC error becomes its HTTP status (NOT_FOUND -> 404) with
    the ``google.rpc.Status`` as the JSON body;
  - print options: ``always_print_primitive_fields`` (zero values are written, so a client
    sees ``"active": false`` rather than a missing key); enums as names; field names in the
    proto3 JSON form (lowerCamelCase), as any proto3 JSON client expects; no whitespace.

  Requests with ``content-type: application/grpc`` pass the transcoder untouched, so one
  route serves JSON, native gRPC and (after the gRPC-Web filter) gRPC-Web.
* ``grpc_web`` -> Envoy's ``grpc_web`` filter, disabled in the chain and enabled on the
  route with a ``FilterConfig`` whose ``config`` is an empty Any; in the chain only while
  some route enables it.
* ``websocket`` -> ``RouteAction.upgrade_configs [{upgrade_type: websocket}]``. The route's
  ``idle_timeout`` (stream idle timeout) closes idle upgraded connections. Upgraded
  connections live on the listener, so route pushes (RDS) leave them open.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.grpc_json_transcoder.v3 import transcoder_pb2
from envoy.extensions.filters.http.grpc_web.v3 import grpc_web_pb2
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

from ..policy import Proto, Route
from .common import duration, pack, switch_on_config

if TYPE_CHECKING:
    from .auth import RouteContext
    from .route import RouteTable
    from .view import GatewayView

__all__ = [
    "GRPC_WEB_FILTER",
    "TRANSCODER_FILTER",
    "apply_protocols",
    "grpc_web_filter",
    "proto_context",
    "protocol_features",
    "transcoder_config",
    "transcoder_filter",
]

TRANSCODER_FILTER = "envoy.filters.http.grpc_json_transcoder"
GRPC_WEB_FILTER = "envoy.filters.http.grpc_web"

#: feature names counted per gateway by the route table
TRANSCODING = "transcoding"
GRPC_WEB = "grpc_web"

Protos = tuple[tuple[str, Proto], ...]

_ENABLE = switch_on_config()


def protocol_features(route: Route) -> list[str]:
    """The chain filters this route needs (the table counts them per gateway)."""
    out = []
    if route.transcoding is not None:
        out.append(TRANSCODING)
    if route.grpc_web:
        out.append(GRPC_WEB)
    return out


# -- gateway-level (the chain) ---------------------------------------------------------------


def transcoder_filter(table: RouteTable) -> transcoder_pb2.GrpcJsonTranscoder | None:
    """An empty, inert config: a transcoder without services passes every request; routes
    bring the real one. None (no filter) when no route of the gateway transcodes."""
    if table.protocols[TRANSCODING] <= 0:
        return None
    return transcoder_pb2.GrpcJsonTranscoder(proto_descriptor_bin=b"")


def grpc_web_filter(table: RouteTable) -> grpc_web_pb2.GrpcWeb | None:
    if table.protocols[GRPC_WEB] <= 0:
        return None
    return grpc_web_pb2.GrpcWeb()


# -- per route --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _with_post_bindings(descriptor_set: str, services: tuple[str, ...]) -> bytes:
    """The descriptor set with ``POST /package.Service/Method`` (body ``*``) bound to every
    method of ``services`` that has ``google.api.http`` rules but not that one."""
    fds = descriptor_pb2.FileDescriptorSet.FromString(Proto.decode(descriptor_set))
    for f in fds.file:
        for service in f.service:
            full = f"{f.package}.{service.name}" if f.package else service.name
            if full not in services:
                continue
            for method in service.method:
                if not method.options.HasExtension(annotations_pb2.http):
                    continue  # auto_mapping serves it
                rule = method.options.Extensions[annotations_pb2.http]
                path = f"/{full}/{method.name}"
                bound = [rule, *rule.additional_bindings]
                if not any(r.post == path for r in bound):
                    rule.additional_bindings.add(post=path, body="*")
    return fds.SerializeToString(deterministic=True)


def transcoder_config(proto: Proto, services: list[str]) -> transcoder_pb2.GrpcJsonTranscoder:
    T = transcoder_pb2.GrpcJsonTranscoder
    return T(
        proto_descriptor_bin=_with_post_bindings(proto.descriptor_set, tuple(services)),
        services=services,
        auto_mapping=True,
        match_incoming_request_route=True,
        convert_grpc_status=True,
        print_options=T.PrintOptions(
            always_print_primitive_fields=True,
            always_print_enums_as_ints=False,
            preserve_proto_field_names=False,
            add_whitespace=False,
        ),
        request_validation_options=T.RequestValidationOptions(reject_unknown_method=True),
    )


def apply_protocols(message: rc.Route, route: Route, protos: Protos) -> None:
    """Add the route's protocol settings to its Envoy route (a forwarding route)."""
    if not message.HasField("route"):
        return
    action = message.route
    if route.grpc_timeout_max is not None:
        action.max_stream_duration.grpc_timeout_header_max.CopyFrom(
            duration(route.grpc_timeout_max)
        )
    if route.websocket:
        action.upgrade_configs.append(rc.RouteAction.UpgradeConfig(upgrade_type="websocket"))
    per = message.typed_per_filter_config
    if route.grpc_web:
        per[GRPC_WEB_FILTER].CopyFrom(pack(_ENABLE))
    if route.transcoding is not None:
        proto = dict(protos).get(route.transcoding.proto)
        if proto is not None:  # the store refuses routes naming a missing proto
            per[TRANSCODER_FILTER].CopyFrom(
                pack(transcoder_config(proto, list(route.transcoding.services)))
            )


def proto_context(
    context: RouteContext,
    routes: Mapping[str, Route],
    changed: frozenset[str] | None,
    already: bool,
    view: GatewayView,
) -> RouteContext:
    """``context`` plus the protos, only for gateways with a transcoding route: a proto
    change then re-encodes the routes of those gateways alone."""
    names = routes.keys() if changed is None else changed
    needed = already or any(getattr(routes.get(n), "transcoding", None) is not None for n in names)
    if not needed:
        return context
    protos = view.objects.get("proto", {})
    return replace(
        context,
        protos=tuple(sorted((n, p) for n, p in protos.items() if isinstance(p, Proto))),
    )

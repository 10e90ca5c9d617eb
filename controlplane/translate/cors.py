"""CORS policy -> Envoy's cors filter (per route), answering preflights at the edge."""

from __future__ import annotations

import re

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from google.protobuf import wrappers_pb2

from ..policy import Route
from ..policy.common import duration_ms
from ..policy.cors import CorsPolicy
from .auth import RouteContext
from .common import pack

__all__ = ["CORS_FILTER", "apply_cors", "cors_filter"]

CORS_FILTER = "envoy.filters.http.cors"


def cors_filter() -> cors_pb2.Cors:
    return cors_pb2.Cors()


def _origin(origin: str) -> string_pb2.StringMatcher:
    if origin == "*":
        return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=".*"))
    if "*." in origin:
        scheme, rest = origin.split("://", 1)
        pattern = "^" + re.escape(scheme + "://") + r"[a-z0-9-]+\." + re.escape(rest[2:]) + "$"
        return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=pattern))
    return string_pb2.StringMatcher(exact=origin)


def cors_policy(policy: CorsPolicy) -> cors_pb2.CorsPolicy:
    out = cors_pb2.CorsPolicy(
        allow_origin_string_match=[_origin(o) for o in policy.allow_origins],
        allow_methods=",".join(policy.allow_methods),
        allow_headers=",".join(policy.allow_headers),
        expose_headers=",".join(policy.expose_headers),
        allow_credentials=wrappers_pb2.BoolValue(value=policy.allow_credentials),
    )
    if policy.max_age is not None:
        out.max_age = str(duration_ms(policy.max_age) // 1000)
    return out


def apply_cors(message: rc.Route, route: Route, context: RouteContext) -> None:
    policy = route.cors if route.cors is not None else context.cors
    if policy is not None:
        message.typed_per_filter_config[CORS_FILTER].CopyFrom(pack(cors_policy(policy)))

"""User-facing policy models (pydantic v2), one module per kind."""

from .auth import AuthPolicy
from .bundle import (
    CONTENT_KINDS,
    KINDS,
    PLURALS,
    Bundle,
    content_errors,
    format_validation_error,
    parse_object,
    references,
)
from .certificate import Certificate, GatewayTls
from .cluster import Cluster, LbPolicy, UpstreamProtocol
from .common import PolicyModel
from .consumer import ApiKey, Consumer, new_api_key
from .gateway import Gateway
from .jwt import JwtProvider
from .oidc import OidcProvider
from .proto import Proto, Transcoding
from .ratelimit import Limit, Plan, RateLimit
from .route import Route, RouteMatch

__all__ = [
    "CONTENT_KINDS",
    "KINDS",
    "PLURALS",
    "ApiKey",
    "AuthPolicy",
    "Bundle",
    "Certificate",
    "Cluster",
    "Consumer",
    "Gateway",
    "GatewayTls",
    "JwtProvider",
    "LbPolicy",
    "Limit",
    "OidcProvider",
    "Plan",
    "PolicyModel",
    "Proto",
    "RateLimit",
    "Route",
    "RouteMatch",
    "Transcoding",
    "UpstreamProtocol",
    "content_errors",
    "format_validation_error",
    "new_api_key",
    "parse_object",
    "references",
]

"""User-facing policy models (pydantic v2), one module per kind."""

from .bundle import KINDS, PLURALS, Bundle, format_validation_error, parse_object, references
from .cluster import Cluster, LbPolicy, UpstreamProtocol
from .common import PolicyModel
from .gateway import Gateway
from .route import Route, RouteMatch

__all__ = [
    "KINDS",
    "PLURALS",
    "Bundle",
    "Cluster",
    "Gateway",
    "LbPolicy",
    "PolicyModel",
    "Route",
    "RouteMatch",
    "UpstreamProtocol",
    "format_validation_error",
    "parse_object",
    "references",
]

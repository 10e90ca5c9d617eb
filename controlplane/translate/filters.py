"""The HTTP filter chain of every gateway, in one ordered table.

A feature that needs an HTTP filter (JWT, API keys, rate limits, CORS...) adds one entry
here: a name and a function that returns the filter's config for a gateway (from its
``GatewayView``), or None when the gateway does not need it. The order of the table is the
order in Envoy: what answers without authentication (CORS preflight) comes before
authentication, authentication before authorisation, and the router last. Per-route
settings go in each route's ``typed_per_filter_config`` under the same filter name.
"""

from __future__ import annotations

from collections.abc import Callable

from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf.message import Message

from .common import pack
from .view import GatewayView

__all__ = ["ORDER", "http_filters"]

FilterFactory = Callable[[GatewayView], Message | None]

#: (filter name, factory); the router must stay last.
ORDER: list[tuple[str, FilterFactory]] = [
    ("envoy.filters.http.router", lambda _view: router_pb2.Router()),
]


def http_filters(view: GatewayView) -> list[hcm_pb2.HttpFilter]:
    out = []
    for name, factory in ORDER:
        config = factory(view)
        if config is not None:
            out.append(hcm_pb2.HttpFilter(name=name, typed_config=pack(config)))
    return out

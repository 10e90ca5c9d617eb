"""The HTTP filter chain of every gateway, in one ordered table.

A feature that needs an HTTP filter (JWT, API keys, rate limits, CORS...) adds one entry
here: a name and a function that returns the filter's config for a gateway, or None when no
route of the gateway uses the feature. The order of the table is the order in Envoy.
"""

from __future__ import annotations

from collections.abc import Callable

from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf.message import Message

from ..policy import Gateway
from .common import pack

__all__ = ["ORDER", "http_filters"]

FilterFactory = Callable[[Gateway], Message | None]

#: (filter name, factory); the router must stay last.
ORDER: list[tuple[str, FilterFactory]] = [
    ("envoy.filters.http.router", lambda _gateway: router_pb2.Router()),
]


def http_filters(gateway: Gateway) -> list[hcm_pb2.HttpFilter]:
    out = []
    for name, factory in ORDER:
        config = factory(gateway)
        if config is not None:
            out.append(hcm_pb2.HttpFilter(name=name, typed_config=pack(config)))
    return out

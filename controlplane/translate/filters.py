"""The HTTP filter chain of every gateway, in one ordered table.

A feature that needs an HTTP filter (JWT, API keys, rate limits, CORS...) adds one entry
here: a name and a function that returns the filter's config for a gateway (from its
``GatewayView``), or None when the gateway does not need it. The order of the table is the
order in Envoy: what answers without authentication (CORS preflight) comes before
authentication, authentication before authorisation, and the router last. Per-route
settings go in each route's ``typed_per_filter_config`` under the same filter name.

A request pays only for the filters its route uses (ADR 0045). A filter whose absence
could let a request through unchecked (identity strip, JWT, API keys, rules) is listed
whenever the gateway could need it, *disabled*, and switched on by the per-filter config
of the routes (or virtual hosts) that need it: Envoy does not even create a disabled filter
for a request whose route does not switch it on, and the first route that needs it arrives
with its switch in the same RouteConfiguration, so no listener changes and no connection
opened before the change can reach that route through a chain without the filter. Other
filters (CORS, rate limits, traffic policy) are listed only while some route uses them:
their first use is a listener change, safe because their absence refuses nothing that
should be refused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from envoy.config.core.v3 import config_source_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf.message import Message

from ..policy import OidcProvider
from ..policy.ratelimit import QUOTA_UNITS, Per
from ..policy.traffic import CompressionAlgorithm
from ..quota.budgets import next_quota_boundary, shared_units
from . import auth, edge, quota
from .common import ads_source, pack
from .cors import CORS_FILTER, cors_filter
from .oidc import OIDC_PREFIX, ORIGIN_FILTER, oidc_filters, origin_filter, used_providers
from .protocols import GRPC_WEB_FILTER, TRANSCODER_FILTER, grpc_web_filter, transcoder_filter
from .quota import QUOTA_PREFIX, quota_filter
from .ratelimit import RATE_LIMIT_FILTER, plans_of, rate_limit_config
from .shard import FALLBACK_FILTER, fallback_filter
from .traffic import (
    BODY_FILTER,
    CACHE_FILTER,
    CACHE_KEY_FILTER,
    COMPRESS_PREFIX,
    FAULT_FILTER,
    MUTATION_FILTER,
    body_filter,
    cache_filter,
    cache_key_filter,
    compressor,
    fault_filter,
    mutation_filter,
)
from .view import GatewayView

__all__ = [
    "CHAIN_DISABLED",
    "ORDER",
    "FilterSpec",
    "chain_disabled",
    "http_filters",
    "quota_units_in_use",
]

if TYPE_CHECKING:
    from .route import RouteTable


@dataclass(frozen=True)
class FilterSpec:
    """One HTTP filter: its name (also its ECDS resource name and per-route config key)."""

    name: str
    config: Callable[[GatewayView, RouteTable], Message | None]
    #: delivered over ECDS: its config changes without touching the listener
    dynamic: bool = True
    #: off unless a route's per-filter config turns it on (routes without it pay nothing);
    #: a function: disabled only for some gateways
    disabled: bool | Callable[[GatewayView, RouteTable], bool] = False
    #: several instances (name, config) in place of this one (``config`` unused), each
    #: listed disabled and switched on by the routes that use it
    instances: Callable[[GatewayView, RouteTable], list[tuple[str, Message]]] | None = None

    def disabled_for(self, view: GatewayView, table: RouteTable) -> bool:
        return self.disabled(view, table) if callable(self.disabled) else self.disabled


def _used(table: RouteTable, feature: str, config: Callable[[], Message]) -> Message | None:
    return config() if table.features[feature] > 0 else None


def _rate_limits(view: GatewayView, table: RouteTable) -> Message | None:
    """Rebuilt only when the routes' limits, the plans or the consumer count change."""
    plans = plans_of(view.objects) if table.uses_plans else ()
    consumers = len(view.objects.get("consumer", {}))
    remote = shared_units(view.gateway)
    key = (table.rate_limit_version, consumers, plans, remote)
    cached = table.rate_limit_cache
    if cached is None or cached[0] != key:
        cached = (key, rate_limit_config(table.rate_limits, plans, consumers, remote))
        table.rate_limit_cache = cached
    return cached[1]  # type: ignore[return-value]


def _quota(view: GatewayView, table: RouteTable, unit: Per) -> Message | None:
    """Rebuilt when the routes' limits, the plans, the consumers or the mode change, and at
    each calendar boundary (the reset time of refusals)."""
    if not table.rate_limits or unit not in shared_units(view.gateway):
        return None
    # the next midnight of any zone in use: a new day, week or month in one of them
    boundary = next_quota_boundary(view.objects, quota.clock()) if unit in QUOTA_UNITS else 0
    key = (
        table.rate_limit_version,
        plans_of(view.objects) if table.uses_plans else (),
        view.gateway.rate_limit_mode,
        boundary,
    )
    cached = table.quota_cache.get(unit)
    if cached is None or cached[0] != key:
        cached = (key, quota_filter(view.gateway, unit, table.rate_limits, view.objects))
        table.quota_cache[unit] = cached
    return cached[1]  # type: ignore[return-value]


_QUOTA_UNITS = (Per.minute, Per.hour, Per.day, Per.week, Per.month)


def quota_units_in_use(view: GatewayView, table: RouteTable) -> frozenset[Per]:
    """Units with a quota filter in the chain: the filters a limited route switches on."""
    return frozenset(u for u in _QUOTA_UNITS if _quota(view, table, u) is not None)


def _fallback(table: RouteTable) -> Message | None:
    length = table.shard_length
    return None if length is None else fallback_filter(length)


def _origins_used(view: GatewayView, table: RouteTable) -> bool:
    providers = cast(Mapping[str, OidcProvider], view.objects.get("oidc_provider", {}))
    return any(
        providers[n].redirect_origin for n in used_providers(table.features) if n in providers
    )


def _jwt(view: GatewayView, table: RouteTable) -> Message:
    return auth.jwt_filter(view, sorted(table.jwt_requirements))


#: The filter chain, in order; the router must stay last.
ORDER: list[FilterSpec] = [
    # a sharded gateway's re-keying of requests that found no virtual host (translate/
    # shard.py): first, so every other filter sees the route finally selected
    FilterSpec(FALLBACK_FILTER, lambda _v, t: _fallback(t), dynamic=False),
    # then the client address: a refused address costs nothing further (translate/edge.py)
    FilterSpec(edge.GATEWAY_IP_FILTER, lambda view, _t: edge.gateway_ip_filter(view)),
    FilterSpec(
        edge.ROUTE_IP_FILTER,
        lambda _v, t: _used(t, edge.ROUTE_IP_FILTER, edge.route_ip_filter),
        dynamic=False,
        disabled=True,
    ),
    # switched on by every virtual host of a gateway whose routes use identity (translate/
    # route.py); always on in a sharded gateway, whose re-keyed requests get no filter the
    # chain lists disabled (translate/shard.py), and where client certificates name
    # consumers (that filter keeps an x-consumer-id it finds: it must be the gateway's)
    FilterSpec(
        auth.STRIP_FILTER,
        lambda view, _t: auth.strip_filter(view),
        disabled=lambda v, t: t.shard_length is None and edge.cert_consumer_filter(v) is None,
    ),
    # before authentication: a preflight is answered without credentials
    FilterSpec(CORS_FILTER, lambda _v, t: cors_filter() if t.cors_routes else None, False),
    # browser login (translate/oidc.py): the origin a login returns to, then one instance
    # per provider, each on only where a route logs in with it
    FilterSpec(
        ORIGIN_FILTER,
        lambda v, t: origin_filter() if _origins_used(v, t) else None,
        dynamic=False,
        disabled=True,
    ),
    FilterSpec(
        OIDC_PREFIX,
        lambda _v, _t: None,
        dynamic=False,
        disabled=True,
        instances=lambda v, t: oidc_filters(
            cast(Mapping[str, OidcProvider], v.objects.get("oidc_provider", {})), t.features
        ),
    ),
    # on only where a route requires a JWT (not on API-key or public routes)
    FilterSpec(auth.JWT_FILTER, _jwt, disabled=True),
    # off unless a route asks for keys: a request no route matches (e.g. outside every
    # shard of a sharded gateway) gets 404, not 401
    FilterSpec(auth.API_KEY_FILTER, lambda view, _t: auth.api_key_filter(view), disabled=True),
    # right after the key check, before anything reads x-consumer-id (rules, rate limits);
    # on only where a route accepts keys
    FilterSpec(
        auth.KEY_EXPIRY_FILTER,
        lambda _v, _t: auth.key_expiry_filter(),
        dynamic=False,
        disabled=True,
    ),
    # after the credentials (which win), before anything reads x-consumer-id
    FilterSpec(edge.CERT_CONSUMER_FILTER, lambda view, _t: edge.cert_consumer_filter(view)),
    # on only where a route has rules
    FilterSpec(auth.RBAC_FILTER, lambda view, _t: auth.rbac_filter_config(view), disabled=True),
    # after authentication and the route's rules: the service sees x-consumer-id
    FilterSpec(
        edge.EXT_AUTHZ_PREFIX,
        lambda _v, _t: None,
        dynamic=False,
        disabled=True,
        instances=lambda v, t: edge.ext_authz_filters(v, t.features),
    ),
    # bodies without Content-Length on limited routes, once the caller is authenticated
    FilterSpec(
        edge.BODY_LIMIT_FILTER,
        lambda _v, t: _used(t, edge.BODY_LIMIT_FILTER, edge.body_limit_filter),
        dynamic=False,
        disabled=True,
    ),
    # after authentication and authorisation: x-consumer-id is set, refused calls not counted
    FilterSpec(RATE_LIMIT_FILTER, _rate_limits),
    # budgets counted by the controller's quota service (translate/quota.py): the route's
    # name where their matchers read it, then one filter per unit, each only while some
    # route counts that unit there; all listed disabled, which only the limited routes
    # route and switch on (translate/route.py, :func:`quota_units_in_use`)
    FilterSpec(
        quota.ROUTE_FILTER,
        lambda v, t: quota.route_filter() if quota_units_in_use(v, t) else None,
        dynamic=False,
        disabled=True,
    ),
    *[
        FilterSpec(QUOTA_PREFIX + u.value, lambda v, t, u=u: _quota(v, t, u), disabled=True)  # type: ignore[misc]
        for u in _QUOTA_UNITS
    ],
    # traffic policy (translate/traffic.py): each only where a route uses it
    FilterSpec(FAULT_FILTER, lambda _v, t: _used(t, FAULT_FILTER, fault_filter), False, True),
    # before the cache: query changes and the cache-key header are part of the key
    FilterSpec(MUTATION_FILTER, lambda _v, t: _used(t, MUTATION_FILTER, mutation_filter), False),
    # before the cache: entries are kept uncompressed, hits compressed like misses
    *[
        FilterSpec(
            COMPRESS_PREFIX + a.value,
            lambda v, t, a=a: compressor(v.gateway, t.features["compression"] > 0, a),  # type: ignore[misc]
            dynamic=False,
        )
        for a in CompressionAlgorithm
    ],
    FilterSpec(CACHE_KEY_FILTER, lambda _v, t: _used(t, CACHE_FILTER, cache_key_filter), False),
    FilterSpec(CACHE_FILTER, lambda _v, t: _used(t, CACHE_FILTER, cache_filter), False),
    # nearest the router: the cache keeps transformed responses
    FilterSpec(BODY_FILTER, lambda _v, t: _used(t, BODY_FILTER, body_filter), False, True),
    # nearest the router: the filters above see JSON, gRPC-Web becomes gRPC first, and the
    # transcoder passes native gRPC on untouched
    FilterSpec(GRPC_WEB_FILTER, lambda _v, t: grpc_web_filter(t), dynamic=False, disabled=True),
    FilterSpec(TRANSCODER_FILTER, lambda _v, t: transcoder_filter(t), dynamic=False, disabled=True),
    FilterSpec("envoy.filters.http.router", lambda _v, _t: router_pb2.Router(), dynamic=False),
]


#: filters the chain may list disabled, switched on by a route's per-filter config (a
#: compressor is disabled when its gateway has no compression); a request's chain is made
#: from the route it finds first, which matters to re-keyed requests (translate/shard.py)
CHAIN_DISABLED = frozenset(
    spec.name for spec in ORDER if spec.disabled is True or spec.name.startswith(COMPRESS_PREFIX)
)
#: filters listed as several instances, all disabled (their names start with the spec's,
#: which ends with a dot)
_DISABLED_PREFIXES = tuple(
    spec.name if spec.name.endswith(".") else spec.name + "."
    for spec in ORDER
    if spec.instances is not None
)


def chain_disabled(name: str) -> bool:
    """Whether a per-route filter config names a filter the chain lists disabled."""
    return name in CHAIN_DISABLED or name.startswith(_DISABLED_PREFIXES)


def http_filters(
    view: GatewayView, table: RouteTable
) -> tuple[list[hcm_pb2.HttpFilter], dict[str, Message]]:
    """The listener's filter list, and the configs to serve over ECDS by name."""
    listed, dynamic = [], {}
    for spec in ORDER:
        if spec.instances is not None:
            for name, instance in spec.instances(view, table):
                listed.append(
                    hcm_pb2.HttpFilter(name=name, typed_config=pack(instance), disabled=True)
                )
            continue
        config = spec.config(view, table)
        if config is None:
            continue
        if spec.dynamic:
            dynamic[spec.name] = config
            listed.append(
                hcm_pb2.HttpFilter(
                    name=spec.name,
                    config_discovery=config_source_pb2.ExtensionConfigSource(
                        config_source=ads_source(),
                        type_urls=["type.googleapis.com/" + config.DESCRIPTOR.full_name],
                    ),
                )
            )
        else:
            listed.append(hcm_pb2.HttpFilter(name=spec.name, typed_config=pack(config)))
        if spec.disabled_for(view, table) or _disabled_compressor(spec.name, view):
            listed[-1].disabled = True
    return listed, dynamic


def _disabled_compressor(name: str, view: GatewayView) -> bool:
    """Compressors of a gateway without compression are there for routes that ask for it."""
    return name.startswith(COMPRESS_PREFIX) and view.gateway.compression is None

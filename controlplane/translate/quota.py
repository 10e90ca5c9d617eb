"""Budgets shared through the controller's quota service -> Envoy's ``rate_limit_quota``.

One filter instance per unit the gateway's routes count through the quota service
(``gateway.quota.<unit>``: day/week/month quotas always, minute/hour budgets when the
gateway's ``rate_limit_mode`` is ``shared``; :func:`controlplane.quota.budgets.shared_units`).
A request is counted in at most one bucket per filter, so a plan of 100/minute and
10,000/day is two filters, each with its own bucket for the caller.

Each filter's bucket matcher picks the route by the policy name in its route metadata
(``gateway.route``, set by the rate-limit translator), which :func:`route_filter` (a
``set_filter_state`` listed before the quota filters) copies into the filter state, with one
map lookup whatever the number of limited routes, then the caller:

* ``key: consumer``: ``x-consumer-id`` (set by authentication, earlier in the chain); with
  plans, each consumer with limits is listed (its fallback is its own budget) and the rest
  fall to the route's own limits;
* ``client_ip``: the client address; ``header:NAME``: that header; ``none``: one bucket.

The bucket id is ``{gateway, route, unit, consumer|ip|header}``: the quota service reads the
budget of that bucket from the policy it already has, so the filter carries no limits except
its fallback. A request whose key is missing (no consumer, no header) gets no bucket id and
is not limited, as with the local filter.

Envoy reports each bucket's usage every 5 s over the bootstrap's
``xds_cluster`` (the same port as ADS); the service answers with leases
(:mod:`controlplane.quota.allocator`). When an assignment expires (the service is
unreachable for :data:`ASSIGNMENT_TTL_S`) the bucket falls back to a local token bucket of
the whole budget per window on each Envoy for :data:`FALLBACK_S`. Refusals are 429; those
of a calendar quota carry ``retry-after`` (HTTP-date) and ``x-quota-reset`` (unix time) of
the window's end, which the controller refreshes at each boundary.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import cast

from envoy.config.core.v3 import (
    base_pb2,
    extension_pb2,
    grpc_service_pb2,
    substitution_format_string_pb2,
)
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.common.set_filter_state.v3 import value_pb2
from envoy.extensions.filters.http.rate_limit_quota.v3 import rate_limit_quota_pb2 as rlq
from envoy.extensions.filters.http.set_filter_state.v3 import set_filter_state_pb2
from envoy.extensions.matching.common_inputs.network.v3 import network_inputs_pb2
from envoy.type.matcher.v3 import http_inputs_pb2
from envoy.type.v3 import http_status_pb2, ratelimit_strategy_pb2, token_bucket_pb2
from google.protobuf import duration_pb2, wrappers_pb2
from xds.core.v3 import extension_pb2 as xds_extension_pb2
from xds.type.matcher.v3 import matcher_pb2

from ..policy import Consumer, Gateway
from ..policy.headers import CONSUMER_HEADER
from ..policy.ratelimit import QUOTA_UNITS, SECONDS, Per, Plan, RateLimit
from ..policy.reserved import XDS_CLUSTER
from ..quota.allocator import ASSIGNMENT_TTL_S
from ..quota.budgets import consumer_budget, shared_units, time_zone_of
from ..quota.calendar import http_date, window
from .common import pack, switch_on_config
from .ratelimit import METADATA_NAMESPACE

__all__ = [
    "ASSIGNMENT_TTL_S",
    "FALLBACK_S",
    "QUOTA_PREFIX",
    "REPORT_INTERVAL",
    "ROUTE_FILTER",
    "ROUTE_STATE",
    "clock",
    "quota_filter",
    "route_filter",
    "switch_on",
]

QUOTA_PREFIX = "gateway.quota."
#: how often Envoy should report usage (Envoy 1.40 ignores it and reports every 5 s,
#: :data:`~controlplane.quota.allocator.REPORT_INTERVAL_S`)
REPORT_INTERVAL = duration_pb2.Duration(seconds=1)
#: how long the fallback applies before the bucket reverts to admitting (no assignment)
FALLBACK_S = 30 * 86400
#: the filter state object holding the route's policy name (:func:`route_filter`)
ROUTE_STATE = "gateway.quota_route"
#: the filter that sets it, listed before the quota filters while any is
ROUTE_FILTER = "gateway.quota_route"
#: the clock of the reset times in refusals (golden tests fix it)
clock = time.time


def route_filter() -> set_filter_state_pb2.Config:
    """Copies the route's policy name from its metadata into the filter state the quota
    filters' matchers read: a route is then one lookup in a map, where a predicate per
    limited route (CEL on the route metadata) cost every request a few microseconds per
    limited route of the gateway. Filter state, unlike a header, cannot come from the
    client."""
    return set_filter_state_pb2.Config(
        on_request_headers=[
            value_pb2.FilterStateValue(
                object_key=ROUTE_STATE,
                factory_key="envoy.string",
                format_string=substitution_format_string_pb2.SubstitutionFormatString(
                    text_format_source=base_pb2.DataSource(
                        inline_string=f"%METADATA(ROUTE:{METADATA_NAMESPACE}:route)%"
                    )
                ),
                skip_if_empty=True,
            )
        ]
    )


_ON = pack(switch_on_config())


def switch_on(message: rc.Route, units: frozenset[Per]) -> None:
    """Turn on, for a limited route, the route filter and the quota filters of ``units``
    (those some route of the gateway counts through the service): the chain lists them
    disabled, so a request on a route without limits creates none of them (ADR 0045)."""
    if not units:
        return
    message.typed_per_filter_config[ROUTE_FILTER].CopyFrom(_ON)
    for unit in units:
        message.typed_per_filter_config[QUOTA_PREFIX + unit.value].CopyFrom(_ON)


def _header_input(name: str) -> extension_pb2.TypedExtensionConfig:
    return extension_pb2.TypedExtensionConfig(
        name=f"header.{name}",
        typed_config=pack(http_inputs_pb2.HttpRequestHeaderMatchInput(header_name=name)),
    )


def _key_input(policy: RateLimit) -> tuple[str, extension_pb2.TypedExtensionConfig] | None:
    """The bucket-id entry naming the caller (None: one bucket for the route)."""
    if policy.key == "consumer":
        return "consumer", _header_input(CONSUMER_HEADER)
    if policy.key == "client_ip":
        return "ip", extension_pb2.TypedExtensionConfig(
            name="client_ip", typed_config=pack(network_inputs_pb2.SourceIPInput())
        )
    header = policy.header
    return ("header", _header_input(header)) if header is not None else None


def _token_bucket(requests: int, unit: Per) -> token_bucket_pb2.TokenBucket:
    return token_bucket_pb2.TokenBucket(
        max_tokens=requests,
        tokens_per_fill=wrappers_pb2.UInt32Value(value=requests),
        fill_interval=duration_pb2.Duration(seconds=SECONDS[unit]),
    )


def _deny(
    unit: Per, time_zone: str, now: float
) -> rlq.RateLimitQuotaBucketSettings.DenyResponseSettings:
    out = rlq.RateLimitQuotaBucketSettings.DenyResponseSettings(
        http_status=http_status_pb2.HttpStatus(code=http_status_pb2.TooManyRequests),
        http_body=wrappers_pb2.BytesValue(value=b"rate limited\n"),
    )
    if unit in QUOTA_UNITS:
        end = window(unit, now, time_zone)[1]
        for key, value in (("retry-after", http_date(end)), ("x-quota-reset", str(end))):
            out.response_headers_to_add.append(
                base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=key, value=value))
            )
    return out


def _settings(
    gateway: str,
    route: str,
    unit: Per,
    key: tuple[str, extension_pb2.TypedExtensionConfig | str] | None,
    fallback: int | None,
    time_zone: str,
    now: float,
) -> xds_extension_pb2.TypedExtensionConfig:
    S = rlq.RateLimitQuotaBucketSettings
    ids = {
        "gateway": S.BucketIdBuilder.ValueBuilder(string_value=gateway),
        "route": S.BucketIdBuilder.ValueBuilder(string_value=route),
        "unit": S.BucketIdBuilder.ValueBuilder(string_value=str(unit)),
    }
    if key is not None:
        name, value = key
        ids[name] = (
            S.BucketIdBuilder.ValueBuilder(string_value=value)
            if isinstance(value, str)
            else S.BucketIdBuilder.ValueBuilder(custom_value=value)
        )
    settings = S(
        bucket_id_builder=S.BucketIdBuilder(bucket_id_builder=ids),
        reporting_interval=REPORT_INTERVAL,
        deny_response_settings=_deny(unit, time_zone, now),
    )
    if fallback is not None:
        settings.expired_assignment_behavior.CopyFrom(
            S.ExpiredAssignmentBehavior(
                expired_assignment_behavior_timeout=duration_pb2.Duration(seconds=FALLBACK_S),
                fallback_rate_limit=ratelimit_strategy_pb2.RateLimitStrategy(
                    token_bucket=_token_bucket(fallback, unit)
                ),
            )
        )
    return xds_extension_pb2.TypedExtensionConfig(
        name="gateway.bucket", typed_config=pack(settings)
    )


def _xds(config: extension_pb2.TypedExtensionConfig) -> xds_extension_pb2.TypedExtensionConfig:
    return xds_extension_pb2.TypedExtensionConfig(
        name=config.name, typed_config=config.typed_config
    )


def _on_match(action: xds_extension_pb2.TypedExtensionConfig) -> matcher_pb2.Matcher.OnMatch:
    return matcher_pb2.Matcher.OnMatch(action=action)


def quota_filter(
    gateway: Gateway,
    unit: Per,
    policies: Mapping[str, RateLimit],
    objects: Mapping[str, Mapping[str, object]],
    now: float | None = None,
) -> rlq.RateLimitQuotaFilterConfig | None:
    """The gateway's filter of ``unit`` for its limited routes (``policies``: effective rate
    limit by route policy name), or None when nothing counts ``unit`` through the service."""
    if unit not in shared_units(gateway):
        return None
    at = clock() if now is None else now
    consumers = cast(Mapping[str, Consumer], objects.get("consumer", {}))
    plans = cast(Mapping[str, Plan], objects.get("plan", {}))
    M = matcher_pb2.Matcher
    entries: dict[str, matcher_pb2.Matcher.OnMatch] = {}
    for route in sorted(policies):
        policy = policies[route]
        key = _key_input(policy)
        own = next((x for x in policy.limits if x.per == unit), None)
        tz = time_zone_of(policy)
        default = (
            None if own is None else _settings(gateway.name, route, unit, key, own.requests, tz, at)
        )
        listed: dict[str, xds_extension_pb2.TypedExtensionConfig] = {}
        if policy.use_plans and key is not None and key[0] == "consumer":
            limited = {
                name: consumer_budget(consumers[name], plans, unit) for name in sorted(consumers)
            }
            if not any(b is not None for _, b in limited.values()) and own is None:
                continue
            for name, (has, budget) in limited.items():
                if not has:
                    continue
                # the map matched this consumer's name: the bucket id names it statically
                # (the same id as read from the header), no input read per request
                listed[name] = _settings(
                    gateway.name,
                    route,
                    unit,
                    (key[0], name),
                    None if budget is None else budget.limit,
                    "UTC" if budget is None else budget.time_zone,
                    at,
                )
        if default is None and not listed:
            continue
        if listed:
            inner = M(
                matcher_tree=M.MatcherTree(
                    input=_xds(_header_input(CONSUMER_HEADER)),
                    exact_match_map=M.MatcherTree.MatchMap(
                        map={n: _on_match(a) for n, a in listed.items()}
                    ),
                )
            )
            if default is not None:
                inner.on_no_match.CopyFrom(_on_match(default))
            on_match = M.OnMatch(matcher=inner)
        else:
            assert default is not None
            on_match = _on_match(default)
        entries[route] = on_match
    if not entries:
        return None
    return rlq.RateLimitQuotaFilterConfig(
        rlqs_server=grpc_service_pb2.GrpcService(
            envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=XDS_CLUSTER)
        ),
        domain=f"{gateway.name}/{unit}",
        bucket_matchers=M(
            matcher_tree=M.MatcherTree(
                input=xds_extension_pb2.TypedExtensionConfig(
                    name="gateway.route",
                    typed_config=pack(network_inputs_pb2.FilterStateInput(key=ROUTE_STATE)),
                ),
                exact_match_map=M.MatcherTree.MatchMap(map=entries),
            )
        ),
    )

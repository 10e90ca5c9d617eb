"""Rate limits and plans -> Envoy's local_ratelimit filter, configured per route.

Every request is counted inside Envoy; nothing calls into Python. A route's limit becomes a
``LocalRateLimit`` in its ``typed_per_filter_config``:

* one rate-limit action list per unit (second, minute...): ``[limit=<unit>, <key>]``, where
  the key entry is ``x-consumer-id`` (set by authentication, which runs earlier), the
  client address or a header;
* consumers with a plan (or their own limits) are listed with explicit descriptors, so
  their buckets are never evicted; a unit their plan lacks gets an unlimited bucket, so the
  route's default never applies to them;
* the route's own limits are descriptors with an empty key value: one bucket per distinct
  caller, in an LRU of ``max_dynamic_descriptors`` sized from the consumer count (at least
  twice it), so a consumer still calling keeps its bucket;
* a request matching no descriptor (no consumer, no such header) meets the default bucket,
  which is unlimited.

Refused requests get 429, ``X-RateLimit-Limit/Remaining/Reset`` (draft 03) and
``Retry-After``: the longest time any of the route's buckets takes to regain one token (one
value per route; ``X-RateLimit-Reset`` is exact for the caller).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import cast

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2 as lrl
from envoy.type.v3 import http_status_pb2, percent_pb2, token_bucket_pb2
from google.protobuf import duration_pb2, wrappers_pb2

from ..policy import Consumer, Route
from ..policy.ratelimit import SECONDS, Limit, Per, Plan, RateLimit
from .auth import RouteContext
from .common import pack

__all__ = [
    "RATE_LIMIT_FILTER",
    "apply_rate_limit",
    "consumer_limits",
    "descriptor_capacity",
    "effective_rate_limit",
    "rate_limit_config",
    "rate_limit_context",
    "rate_limit_filter",
    "uses_consumers",
]

RATE_LIMIT_FILTER = "gateway.local_ratelimit"
CONSUMER_HEADER = "x-consumer-id"
#: the default bucket and the filler of units a plan does not limit
UNLIMITED = 1_000_000_000
#: LRU size of per-IP / per-header-value buckets
DYNAMIC_KEYS = 65_536
_STAT_PREFIX = "rate_limit"

ConsumerLimits = tuple[tuple[str, tuple[Limit, ...]], ...]


def rate_limit_filter() -> lrl.LocalRateLimit:
    """The filter itself does nothing: routes carry their limits."""
    return lrl.LocalRateLimit(stat_prefix=_STAT_PREFIX)


def consumer_limits(consumers: Mapping[str, Consumer], plans: Mapping[str, Plan]) -> ConsumerLimits:
    """Consumers with limits of their own or from their plan, sorted by name."""
    out = []
    for name in sorted(consumers):
        consumer = consumers[name]
        if consumer.limits:
            out.append((name, tuple(consumer.limits)))
        elif consumer.plan is not None and consumer.plan in plans:
            out.append((name, tuple(plans[consumer.plan].limits)))
    return tuple(out)


def descriptor_capacity(consumers: int) -> int:
    """At least twice the consumer count, rounded up to a power of two (so adding a consumer
    rarely changes it), and never under 1024."""
    return max(1024, 1 << (2 * consumers).bit_length())


def effective_rate_limit(route: Route, default: RateLimit | None) -> RateLimit | None:
    return route.rate_limit if route.rate_limit is not None else default


def uses_consumers(policy: RateLimit | None) -> bool:
    return policy is not None and policy.key == "consumer"


def _bucket(limit: Limit | None) -> token_bucket_pb2.TokenBucket:
    if limit is None:
        return token_bucket_pb2.TokenBucket(
            max_tokens=UNLIMITED,
            tokens_per_fill=wrappers_pb2.UInt32Value(value=UNLIMITED),
            fill_interval=duration_pb2.Duration(seconds=1),
        )
    return token_bucket_pb2.TokenBucket(
        max_tokens=limit.burst or limit.requests,
        tokens_per_fill=wrappers_pb2.UInt32Value(value=limit.requests),
        fill_interval=duration_pb2.Duration(seconds=SECONDS[limit.per]),
    )


def _key_action(policy: RateLimit) -> tuple[str, rc.RateLimit.Action] | None:
    A = rc.RateLimit.Action
    if policy.key == "consumer":
        return "consumer", A(
            request_headers=A.RequestHeaders(header_name=CONSUMER_HEADER, descriptor_key="consumer")
        )
    if policy.key == "client_ip":
        return "remote_address", A(remote_address=A.RemoteAddress())
    header = policy.header
    if header is not None:
        return "header", A(
            request_headers=A.RequestHeaders(header_name=header, descriptor_key="header")
        )
    return None  # key none: one bucket for the route


def _entries(
    unit: Per, key: str | None, value: str
) -> list[ratelimit_pb2.RateLimitDescriptor.Entry]:
    Entry = ratelimit_pb2.RateLimitDescriptor.Entry
    out = [Entry(key="limit", value=str(unit))]
    if key is not None:
        out.append(Entry(key=key, value=value))
    return out


def _percent(runtime_key: str) -> base_pb2.RuntimeFractionalPercent:
    return base_pb2.RuntimeFractionalPercent(
        default_value=percent_pb2.FractionalPercent(
            numerator=100, denominator=percent_pb2.FractionalPercent.HUNDRED
        ),
        runtime_key=runtime_key,
    )


def _retry_after(limits: Iterable[Limit]) -> int:
    """Seconds for the slowest bucket to regain one token (buckets refill continuously)."""
    return max((math.ceil(SECONDS[x.per] / x.requests) for x in limits), default=1) or 1


def rate_limit_config(
    policy: RateLimit, plans: ConsumerLimits, capacity: int
) -> lrl.LocalRateLimit | None:
    """The per-route config, or None when nothing is limited."""
    listed = plans if policy.use_plans else ()
    limited = list(policy.limits) + [x for _, limits in listed for x in limits]
    if not limited:
        return None
    units = sorted({x.per for x in limited}, key=lambda u: SECONDS[u])
    key = _key_action(policy)
    key_name = key[0] if key is not None else None
    out = lrl.LocalRateLimit(
        stat_prefix=_STAT_PREFIX,
        status=http_status_pb2.HttpStatus(code=http_status_pb2.TooManyRequests),
        token_bucket=_bucket(None),
        always_consume_default_token_bucket=wrappers_pb2.BoolValue(value=False),
        filter_enabled=_percent("gateway.rate_limit.enabled"),
        filter_enforced=_percent("gateway.rate_limit.enforced"),
        enable_x_ratelimit_headers=ratelimit_pb2.DRAFT_VERSION_03,
        response_headers_to_add=[
            base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key="retry-after", value=str(_retry_after(limited))),
                append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
            )
        ],
    )
    A = rc.RateLimit.Action
    for unit in units:
        actions = [A(generic_key=A.GenericKey(descriptor_key="limit", descriptor_value=str(unit)))]
        if key is not None:
            actions.append(key[1])
        out.rate_limits.append(rc.RateLimit(actions=actions))
    for name, limits in listed:
        by_unit = {x.per: x for x in limits}
        for unit in units:
            out.descriptors.append(
                ratelimit_pb2.LocalRateLimitDescriptor(
                    entries=_entries(unit, key_name, name), token_bucket=_bucket(by_unit.get(unit))
                )
            )
    for limit in policy.limits:
        out.descriptors.append(
            ratelimit_pb2.LocalRateLimitDescriptor(
                entries=_entries(limit.per, key_name, ""), token_bucket=_bucket(limit)
            )
        )
    if key is not None and policy.limits:
        dynamic = capacity if policy.key == "consumer" else DYNAMIC_KEYS
        out.max_dynamic_descriptors.value = dynamic
    return out


def apply_rate_limit(
    message: rc.Route,
    route: Route,
    default: RateLimit | None,
    plans: ConsumerLimits,
    capacity: int,
) -> None:
    policy = effective_rate_limit(route, default)
    if policy is None:
        return
    config = rate_limit_config(policy, plans, capacity)
    if config is not None:
        message.typed_per_filter_config[RATE_LIMIT_FILTER].CopyFrom(pack(config))


def plans_of(objects: Mapping[str, Mapping[str, object]]) -> ConsumerLimits:
    return consumer_limits(
        cast(Mapping[str, Consumer], objects.get("consumer", {})),
        cast(Mapping[str, Plan], objects.get("plan", {})),
    )


def rate_limit_context(
    context: RouteContext,
    gateway_default: RateLimit | None,
    routes: Mapping[str, Route],
    changed: Iterable[str] | None,
    already: bool,
    objects: Mapping[str, Mapping[str, object]],
) -> RouteContext:
    """``context`` plus the gateway's default limit and, only when some route of the gateway
    limits by consumer, the consumers' plans: a plan or consumer change then re-encodes the
    routes of those gateways alone."""
    names = routes.keys() if changed is None else changed
    needed = (
        already
        or uses_consumers(gateway_default)
        or any(uses_consumers(getattr(routes.get(n), "rate_limit", None)) for n in names)
    )
    if not needed:
        return replace(context, rate_limit=gateway_default)
    return replace(
        context,
        rate_limit=gateway_default,
        consumer_limits=plans_of(objects),
        descriptor_capacity=descriptor_capacity(len(objects.get("consumer", {}))),
    )

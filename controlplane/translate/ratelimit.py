"""Rate limits and plans -> Envoy's local_ratelimit filter, one config per gateway.

Every request is counted inside Envoy; nothing calls into Python. The gateway's routes
with a limit carry their policy name in route metadata; the filter's one config (served
over ECDS) holds every bucket of the gateway:

* one rate-limit action list per (unit, key): ``[route=<name>, limit=<unit>, <key>]``,
  where the key entry is ``x-consumer-id`` (set by authentication, which runs earlier),
  the client address or a header;
* consumers with a plan (or their own limits) are listed with explicit descriptors, so
  their buckets are never evicted; a unit their plan lacks gets an unlimited bucket, so the
  route's default never applies to them;
* the route's own limits are descriptors with an empty key value: one bucket per distinct
  caller, in an LRU of ``max_dynamic_descriptors`` sized from the consumer count (at least
  twice it per bucket kind), so a consumer still calling keeps its bucket;
* a request matching no descriptor (a route without limits, no consumer, no such header)
  is not limited and gets no X-RateLimit headers (the filter has no default bucket).

Because the buckets live in the filter config and not in the RouteConfiguration, a change
to routes that does not touch limits leaves every counter as it is, and the two Envoy routes
of a route that accepts either credential share one budget. The config also asks Envoy to
divide every budget by the number of replicas serving the gateway (``local_cluster_rate_limit``:
the controller publishes the connected replicas as the members of the bootstrap's local
cluster, see :func:`replica_assignment`), so a limit holds for the gateway as a whole.

Refused requests get 429, ``X-RateLimit-Limit/Remaining/Reset`` (draft 03) and
``Retry-After``: the longest time any of the gateway's buckets takes to regain one token
(``X-RateLimit-Reset`` is exact for the caller).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import cast

from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2 as lrl
from envoy.type.metadata.v3 import metadata_pb2
from envoy.type.v3 import http_status_pb2, percent_pb2, token_bucket_pb2
from google.protobuf import duration_pb2, wrappers_pb2

from ..policy import Consumer, Route
from ..policy.headers import CONSUMER_HEADER
from ..policy.ratelimit import SECONDS, Limit, Per, Plan, RateLimit
from ..policy.reserved import REPLICAS_ASSIGNMENT
from .auth import RouteContext

__all__ = [
    "RATE_LIMIT_FILTER",
    "REPLICAS",
    "apply_rate_limit",
    "consumer_limits",
    "descriptor_capacity",
    "effective_rate_limit",
    "rate_limit_config",
    "rate_limit_context",
    "replica_assignment",
    "uses_consumers",
]

RATE_LIMIT_FILTER = "gateway.local_ratelimit"
#: the bootstrap's local cluster: its members are the Envoys serving the gateway
REPLICAS = REPLICAS_ASSIGNMENT
#: route metadata namespace holding the route's policy name
METADATA_NAMESPACE = "gateway"
#: the default bucket and the filler of units a plan does not limit
UNLIMITED = 1_000_000_000
#: LRU size of per-IP / per-header-value buckets, per bucket kind
DYNAMIC_KEYS = 65_536
#: upper bound of the whole LRU (entries are created only as callers appear)
MAX_DYNAMIC = 1 << 22
_STAT_PREFIX = "rate_limit"

ConsumerLimits = tuple[tuple[str, tuple[Limit, ...]], ...]


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


def limits_anything(policy: RateLimit | None) -> bool:
    """Whether a route under ``policy`` may be limited (by its own limits or by plans)."""
    return policy is not None and bool(policy.limits or policy.use_plans)


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


def _key_name(policy: RateLimit) -> str | None:
    """The descriptor key of the caller's identity; distinct per header name, so a request
    carrying two limited headers never matches another route's buckets."""
    if policy.key == "consumer":
        return "consumer"
    if policy.key == "client_ip":
        return "remote_address"
    header = policy.header
    return f"header.{header}" if header is not None else None  # none: one bucket per route


def _key_action(policy: RateLimit) -> rc.RateLimit.Action | None:
    A = rc.RateLimit.Action
    if policy.key == "consumer":
        return A(
            request_headers=A.RequestHeaders(header_name=CONSUMER_HEADER, descriptor_key="consumer")
        )
    if policy.key == "client_ip":
        return A(remote_address=A.RemoteAddress())
    header = policy.header
    if header is not None:
        return A(
            request_headers=A.RequestHeaders(header_name=header, descriptor_key=f"header.{header}")
        )
    return None


def _route_action() -> rc.RateLimit.Action:
    """The route's policy name, from the metadata :func:`apply_rate_limit` puts on it."""
    A = rc.RateLimit.Action
    return A(
        metadata=A.MetaData(
            descriptor_key="route",
            metadata_key=metadata_pb2.MetadataKey(
                key=METADATA_NAMESPACE,
                path=[metadata_pb2.MetadataKey.PathSegment(key="route")],
            ),
            source=A.MetaData.ROUTE_ENTRY,
        )
    )


def _entries(
    route: str, unit: Per, key: str | None, value: str
) -> list[ratelimit_pb2.RateLimitDescriptor.Entry]:
    Entry = ratelimit_pb2.RateLimitDescriptor.Entry
    out = [Entry(key="route", value=route), Entry(key="limit", value=str(unit))]
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
    policies: Mapping[str, RateLimit],
    plans: ConsumerLimits,
    consumers: int,
    remote: frozenset[Per] = frozenset(),
) -> lrl.LocalRateLimit | None:
    """The gateway's filter config for routes (by policy name) and their effective limits,
    or None when nothing is limited. Limits of a unit in ``remote`` are counted by the quota
    service instead (translate/quota.py) and left out."""
    if remote:
        policies = {
            n: p.model_copy(update={"limits": [x for x in p.limits if x.per not in remote]})
            for n, p in policies.items()
        }
        # a consumer whose plan has only remote units stays listed: the route's own limits
        # must not apply to it (a unit its plan lacks gets an unlimited bucket)
        plans = tuple((n, tuple(x for x in limits if x.per not in remote)) for n, limits in plans)
    A = rc.RateLimit.Action
    out = lrl.LocalRateLimit(
        stat_prefix=_STAT_PREFIX,
        status=http_status_pb2.HttpStatus(code=http_status_pb2.TooManyRequests),
        # no default bucket: a request matching no descriptor (an unlimited route, no
        # consumer) is neither limited nor given X-RateLimit headers
        always_consume_default_token_bucket=wrappers_pb2.BoolValue(value=False),
        filter_enabled=_percent("gateway.rate_limit.enabled"),
        filter_enforced=_percent("gateway.rate_limit.enforced"),
        enable_x_ratelimit_headers=ratelimit_pb2.DRAFT_VERSION_03,
    )
    actions: dict[tuple[Per, str | None], rc.RateLimit] = {}
    every_limit: list[Limit] = []
    dynamic = 0
    for route in sorted(policies):
        policy = policies[route]
        listed = plans if policy.use_plans else ()
        limited = list(policy.limits) + [x for _, limits in listed for x in limits]
        if not limited:
            continue
        every_limit += limited
        units = sorted({x.per for x in limited}, key=lambda u: SECONDS[u])
        key_name, key_action = _key_name(policy), _key_action(policy)
        for unit in units:
            if (unit, key_name) not in actions:
                generic = A.GenericKey(descriptor_key="limit", descriptor_value=str(unit))
                chain = [_route_action(), A(generic_key=generic)]
                actions[(unit, key_name)] = rc.RateLimit(
                    actions=chain + ([key_action] if key_action is not None else [])
                )
        own_units = {x.per for x in policy.limits}
        for name, limits in listed:
            by_unit = {x.per: x for x in limits}
            for unit in units:
                if unit not in by_unit and unit not in own_units:
                    # no route default to escape: an unlimited bucket would only add
                    # meaningless X-RateLimit headers to the consumer's responses
                    continue
                out.descriptors.append(
                    ratelimit_pb2.LocalRateLimitDescriptor(
                        entries=_entries(route, unit, key_name, name),
                        token_bucket=_bucket(by_unit.get(unit)),
                    )
                )
        for limit in policy.limits:
            out.descriptors.append(
                ratelimit_pb2.LocalRateLimitDescriptor(
                    entries=_entries(route, limit.per, key_name, ""), token_bucket=_bucket(limit)
                )
            )
            if key_name == "consumer":
                dynamic += descriptor_capacity(consumers)
            elif key_name is not None:
                dynamic += DYNAMIC_KEYS
    if not actions:
        return None
    out.rate_limits.extend(actions[k] for k in sorted(actions, key=lambda k: (k[0], k[1] or "")))
    if dynamic:
        out.max_dynamic_descriptors.value = min(dynamic, MAX_DYNAMIC)
    out.local_cluster_rate_limit.SetInParent()
    out.response_headers_to_add.append(
        base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key="retry-after", value=str(_retry_after(every_limit))),
            append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
        )
    )
    return out


def apply_rate_limit(
    message: rc.Route, route: Route, default: RateLimit | None
) -> RateLimit | None:
    """Name the route's policy in its metadata when it may be limited; the effective policy."""
    policy = effective_rate_limit(route, default)
    if not limits_anything(policy):
        return None
    message.metadata.filter_metadata[METADATA_NAMESPACE].update({"route": route.name})
    return policy


def plans_of(objects: Mapping[str, Mapping[str, object]]) -> ConsumerLimits:
    return consumer_limits(
        cast(Mapping[str, Consumer], objects.get("consumer", {})),
        cast(Mapping[str, Plan], objects.get("plan", {})),
    )


def rate_limit_context(context: RouteContext, gateway_default: RateLimit | None) -> RouteContext:
    """``context`` plus the gateway's default limit (which routes inherit)."""
    return replace(context, rate_limit=gateway_default)


def replica_assignment(replicas: int) -> endpoint_pb2.ClusterLoadAssignment:
    """The members of the local cluster: one placeholder endpoint per connected Envoy of the
    gateway. Envoy only counts them (the local rate limit's share is 1/members); no traffic
    is sent to these addresses."""
    out = endpoint_pb2.ClusterLoadAssignment(cluster_name=REPLICAS)
    group = out.endpoints.add()
    for i in range(max(1, replicas)):
        group.lb_endpoints.append(
            endpoint_components_pb2.LbEndpoint(
                endpoint=endpoint_components_pb2.Endpoint(
                    address=address_pb2.Address(
                        socket_address=address_pb2.SocketAddress(
                            address="127.0.0.1", port_value=i + 1
                        )
                    )
                )
            )
        )
    return out

"""Which budget applies to a bucket, from the current policy (shared by the translator and
the quota service, so what Envoy reports and what the service allocates agree)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

from ..policy import Consumer, Gateway, Route
from ..policy.ratelimit import QUOTA_UNITS, Limit, Per, Plan, RateLimit
from .allocator import BucketKey, Budget
from .calendar import window

__all__ = [
    "RATE_LIMIT_MODES",
    "budget_of",
    "next_quota_boundary",
    "shared_units",
    "time_zone_of",
]

#: ``local``: Envoy's local_ratelimit divided by the replicas (ADR 0016); ``shared``: minute
#: and hour budgets leased by the quota service (ADR 0051)
RATE_LIMIT_MODES = ("local", "shared")


def time_zone_of(obj: object) -> str:
    """The time zone of the calendar windows of ``obj``'s limits (a plan, a consumer or a
    route's rate limit); UTC unless it names one."""
    return getattr(obj, "time_zone", None) or "UTC"


def mode_of(gateway: Gateway) -> str:
    return getattr(gateway, "rate_limit_mode", "local") or "local"


def shared_units(gateway: Gateway) -> frozenset[Per]:
    """Units the quota service counts for ``gateway``: calendar quotas always (they must
    survive restarts), minute and hour budgets in shared mode. Per-second limits stay in
    Envoy's local filter: a report every second cannot share a one-second budget."""
    if mode_of(gateway) == "shared":
        return frozenset(QUOTA_UNITS | {Per.minute, Per.hour})
    return frozenset(QUOTA_UNITS)


def _pick(limits: list[Limit], unit: Per) -> Limit | None:
    return next((x for x in limits if x.per == unit), None)


def consumer_budget(
    consumer: Consumer, plans: Mapping[str, Plan], unit: Per
) -> tuple[bool, Budget | None]:
    """(has limits of its own or from a plan, its budget of ``unit`` or None)."""
    if consumer.limits:
        hit = _pick(list(consumer.limits), unit)
        return True, None if hit is None else Budget(hit.requests, time_zone_of(consumer))
    plan = plans.get(consumer.plan) if consumer.plan is not None else None
    if plan is None:
        return False, None
    hit = _pick(list(plan.limits), unit)
    return True, None if hit is None else Budget(hit.requests, time_zone_of(plan))


def budget_of(objects: Mapping[str, Mapping[str, object]], bucket: BucketKey) -> Budget | None:
    """The budget of ``bucket`` under the policy ``objects`` (by kind and name), None when
    nothing limits it (the service then allows the bucket outright)."""
    routes = cast(Mapping[str, Route], objects.get("route", {}))
    gateways = cast(Mapping[str, Gateway], objects.get("gateway", {}))
    route = routes.get(bucket.route)
    gateway = gateways.get(bucket.gateway)
    if route is None or gateway is None or bucket.gateway not in route.gateways:
        return None
    if bucket.unit not in shared_units(gateway):
        return None
    policy: RateLimit | None = (
        route.rate_limit if route.rate_limit is not None else gateway.rate_limit
    )
    if policy is None:
        return None
    if policy.use_plans and bucket.key.startswith("consumer:"):
        consumers = cast(Mapping[str, Consumer], objects.get("consumer", {}))
        consumer = consumers.get(bucket.key[len("consumer:") :])
        if consumer is not None:
            listed, budget = consumer_budget(
                consumer, cast(Mapping[str, Plan], objects.get("plan", {})), bucket.unit
            )
            if listed:
                return budget
    hit = _pick(list(policy.limits), bucket.unit)
    return None if hit is None else Budget(hit.requests, time_zone_of(policy))


def next_quota_boundary(objects: Mapping[str, Mapping[str, object]], now: float) -> float:
    """The next midnight after ``now`` in any time zone quotas use (UTC at least): where a
    day, week or month window may end."""
    zones = {"UTC"}
    for kind in ("plan", "consumer", "route", "gateway"):
        for obj in objects.get(kind, {}).values():
            zones.add(time_zone_of(obj))
            policy = getattr(obj, "rate_limit", None)
            if policy is not None:
                zones.add(time_zone_of(policy))
    return float(min(window(Per.day, now, z)[1] for z in zones))

"""What ``gatewayctl quota show|reset`` and ``analytics usage`` say about day/week/month quotas.

One module for the CLI on the database and the admin API (``GET /v1/quotas``, ``POST
/v1/quotas/reset``), so both answer the same for the same data. The LIMIT of a quota comes
from policy, resolved as the edge resolves it: on a route counting per consumer, a consumer's
own limits, else its plan's (when the route lets plans apply), else the route's (or its
gateway's default) limits for callers without a plan. The USED count comes from the quota
counters (:class:`~controlplane.quota.counters.QuotaCounters`), the admitted requests of the
calendar window open now, per gateway x route x key x unit - never from the analytics
rollups, which may be off or behind.

The calendar window of each quota is computed in the time zone of the object its limit comes
from: the plan's ``time_zone`` for a plan's limits, the consumer's for its own limits, the
rate limit's (route or gateway) for the limits of callers without a plan.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from ..errors import Forbidden, PolicyInvalid
from ..policy.ratelimit import QUOTA_UNITS, Limit, Per
from .calendar import window, zone

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ..policy import Consumer, Gateway, Route
    from ..policy.ratelimit import Plan, RateLimit
    from ..store import Store
    from .counters import CounterRow, QuotaCounters

__all__ = ["EVENT_KIND", "Quota", "quotas_of", "reset", "show"]

#: the event kind (``gatewayctl events``) recording an operator's reset, with its actor
EVENT_KIND = "quota_reset"


@dataclass(frozen=True)
class Quota:
    """One day/week/month limit that applies on one gateway x route to one key.

    ``key`` is the counter key (``consumer:NAME``, ``all``); None for a route counting per
    client IP or header value, whose keys are only known from the counters."""

    gateway: str
    route: str
    key: str | None
    consumer: str | None
    unit: str
    limit: int
    source: str  # "plan NAME", "consumer NAME", "route NAME", "gateway NAME"
    time_zone: str


def _calendar(limits: Iterable[Limit]) -> list[Limit]:
    return [x for x in limits if x.per in QUOTA_UNITS]


def quotas_of(
    store: Store,
    *,
    consumer: str | None = None,
    gateway: str | None = None,
    route: str | None = None,
    every_consumer: bool = True,
) -> list[Quota]:
    """The day/week/month quotas the policy defines, filtered.

    ``every_consumer`` False: on routes counting per consumer, only the consumers whose
    quota is their own or their plan's (a route's quota for callers without a plan applies
    to every such consumer: listing them all says nothing; their counters show who used it).
    """
    gateways = {g.name: g for g in cast("list[Gateway]", store.list_objects("gateway"))}
    plans = {p.name: p for p in cast("list[Plan]", store.list_objects("plan"))}
    consumers = cast("list[Consumer]", store.list_objects("consumer"))
    if consumer is not None:
        consumers = [c for c in consumers if c.name == consumer]
    out: list[Quota] = []
    for r in cast("list[Route]", store.list_objects("route")):
        if route is not None and r.name != route:
            continue
        for gw_name in r.gateways:
            gw = gateways.get(gw_name)
            if gw is None or (gateway is not None and gw_name != gateway):
                continue
            policy = r.rate_limit if r.rate_limit is not None else gw.rate_limit
            if policy is None:
                continue
            origin = f"route {r.name}" if r.rate_limit is not None else f"gateway {gw_name}"
            out.extend(
                _route_quotas(
                    gw_name, r.name, policy, origin, consumers, plans, consumer, every_consumer
                )
            )
    return out


def _route_quotas(
    gateway: str,
    route: str,
    policy: RateLimit,
    origin: str,
    consumers: list[Consumer],
    plans: dict[str, Plan],
    consumer: str | None,
    every_consumer: bool,
) -> list[Quota]:
    own = _calendar(policy.limits)
    if policy.key != "consumer":
        if consumer is not None:  # a consumer's quotas: not the per-IP / per-header ones
            return []
        key = "all" if policy.key == "none" else None
        return [
            Quota(gateway, route, key, None, str(x.per), x.requests, origin, policy.time_zone)
            for x in own
        ]
    out: list[Quota] = []
    for c in consumers:
        limits: list[Limit] = own
        source, tz = origin, policy.time_zone
        if policy.use_plans and c.limits:
            limits, source, tz = _calendar(c.limits), f"consumer {c.name}", c.time_zone
        elif policy.use_plans and c.plan is not None and c.plan in plans:
            plan = plans[c.plan]
            limits, source, tz = _calendar(plan.limits), f"plan {plan.name}", plan.time_zone
        elif not every_consumer:
            continue
        out.extend(
            Quota(gateway, route, f"consumer:{c.name}", c.name, str(x.per), x.requests, source, tz)
            for x in limits
        )
    return out


def _iso(at: int, time_zone: str) -> str:
    return datetime.fromtimestamp(at, zone(time_zone)).isoformat()


def _in(seconds: int) -> str:
    """``3d 4h``, ``2h 5m``, ``40s``: how long until a reset, to the two largest units."""
    seconds = max(0, seconds)
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size or (unit == "s" and not parts):
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return " ".join(parts[:2])


def _entry(
    quota: Quota, key: str, now: int, rows: dict[tuple[str, str, str, str], CounterRow]
) -> dict[str, Any]:
    start, end = window(Per(quota.unit), now, quota.time_zone)
    row = rows.pop((quota.gateway, quota.route, key, quota.unit), None)
    used = row.used if row is not None else 0
    if row is not None and (row.window_start, row.window_end) != (start, end):
        start, end = row.window_start, row.window_end  # the zone changed mid-window
    return _shape(
        quota.gateway,
        quota.route,
        key,
        quota.consumer,
        quota.unit,
        quota.limit,
        used,
        quota.source,
        quota.time_zone,
        start,
        end,
        now,
    )


def _shape(
    gateway: str,
    route: str,
    key: str,
    consumer: str | None,
    unit: str,
    limit: int | None,
    used: int,
    source: str | None,
    time_zone: str,
    start: int,
    end: int,
    now: int,
) -> dict[str, Any]:
    return {
        "gateway": gateway,
        "route": route,
        "key": key,
        "consumer": consumer,
        "unit": unit,
        "used": used,
        "limit": limit,
        "remaining": None if limit is None else max(0, limit - used),
        "source": source,
        "time_zone": time_zone,
        "window_start": _iso(start, time_zone),
        "window_end": _iso(end, time_zone),
        "resets_at": end,
        "resets_in": _in(end - now),
    }


def _check_scope(scope: frozenset[str], gateway: str | None, who: str) -> None:
    if scope and gateway is not None and gateway not in scope:
        raise Forbidden(
            f"token {who!r} is limited to gateways {', '.join(sorted(scope))}: "
            f"gateway {gateway!r} is outside its scope"
        )


def _check_names(
    store: Store,
    consumer: str | None,
    gateway: str | None,
    route: str | None,
    scope: frozenset[str],
    who: str,
) -> None:
    """An unknown consumer, gateway or route named as a filter: NotFound (exit 3). A
    gateway-scoped caller naming a route of other gateways only: Forbidden, as for a
    gateway outside its scope (it does not see such routes)."""
    for kind, name in (("consumer", consumer), ("gateway", gateway), ("route", route)):
        if name is None:
            continue
        obj = store.get(kind, name)
        if kind == "route" and scope and not set(getattr(obj, "gateways", ())) & scope:
            raise Forbidden(
                f"token {who!r} is limited to gateways {', '.join(sorted(scope))}: "
                f"route {name!r} serves none of them"
            )


def show(
    store: Store,
    counters: QuotaCounters,
    *,
    consumer: str | None = None,
    gateway: str | None = None,
    route: str | None = None,
    scope: frozenset[str] = frozenset(),
    who: str = "",
    now: float | None = None,
) -> list[dict[str, Any]]:
    """Every day/week/month quota (filtered) with its use in the window open at ``now``.

    With ``consumer``: every quota that applies to it, used or not. Without: the quotas of
    consumers who have their own or their plan's, whole-route quotas, and every counter of
    an open window (callers counted per IP or header, consumers under a route's quota for
    callers without a plan, counters whose quota the policy no longer has: limit null).
    ``scope``: a gateway-scoped token's gateways; nothing outside them is shown."""
    _check_scope(scope, gateway, who)
    _check_names(store, consumer, gateway, route, scope, who)
    at = int(time.time() if now is None else now)
    quotas = quotas_of(
        store, consumer=consumer, gateway=gateway, route=route, every_consumer=consumer is not None
    )
    key = f"consumer:{consumer}" if consumer is not None else None
    found = counters.rows(at=at, gateway=gateway, route=route, key=key)
    rows = {(r.gateway, r.route, r.key, r.unit): r for r in found}
    out = [_entry(q, q.key, at, rows) for q in quotas if q.key is not None]
    if rows:  # counters no listed quota claimed: per-IP/header keys, consumers under a
        # route's quota for callers without a plan, quotas the policy no longer has
        every = quotas_of(store, consumer=consumer, gateway=gateway, route=route)
        by_key = {(q.gateway, q.route, q.key, q.unit): q for q in every}
        for (gw, rt, k, unit), row in sorted(rows.items()):
            q = by_key.get((gw, rt, k, unit)) or by_key.get((gw, rt, None, unit))
            who_of = k.removeprefix("consumer:") if k.startswith("consumer:") else None
            out.append(
                _shape(
                    gw,
                    rt,
                    k,
                    who_of,
                    unit,
                    q.limit if q else None,
                    row.used,
                    q.source if q else None,
                    q.time_zone if q else "UTC",
                    row.window_start,
                    row.window_end,
                    at,
                )
            )
    out = [e for e in out if not scope or e["gateway"] in scope]
    order = {"day": 0, "week": 1, "month": 2}
    return sorted(out, key=lambda e: (e["gateway"], e["route"], e["key"], order[e["unit"]]))


def reset(
    store: Store,
    counters: QuotaCounters,
    *,
    consumer: str,
    gateway: str | None = None,
    route: str | None = None,
    unit: str | None = None,
    scope: frozenset[str] = frozenset(),
    actor: str,
    now: float | None = None,
) -> dict[str, Any]:
    """Forget what ``consumer`` has used in the open windows (filtered): its next requests
    count from 0. Recorded as a ``quota_reset`` event with ``actor``. A gateway-scoped
    caller resets on its gateways only."""
    if unit is not None and unit not in QUOTA_UNITS:
        raise PolicyInvalid(f"unit: {unit!r} is not day, week or month")
    _check_scope(scope, gateway, actor)
    _check_names(store, consumer, gateway, route, scope, actor)
    at = int(time.time() if now is None else now)
    key = f"consumer:{consumer}"
    targets = [gateway] if gateway is not None or not scope else sorted(scope)
    before: list[CounterRow] = []
    count = 0
    for gw in targets:
        before += [
            r
            for r in counters.rows(at=at, gateway=gw, route=route, key=key)
            if unit is None or r.unit == unit
        ]
        count += counters.reset(at=at, gateway=gw, route=route, key=key, unit=unit)
    what = ", ".join(
        f"{label} {value}"
        for label, value in (("gateway", gateway), ("route", route), ("unit", unit))
        if value is not None
    )
    detail = f"consumer {consumer}{' (' + what + ')' if what else ''}: {count} counter(s) reset" + (
        " (" + ", ".join(f"{r.gateway}/{r.route} {r.unit} {r.used}" for r in before[:20]) + ")"
        if before
        else ""
    )
    _record(store, gateway or "", actor, detail)
    return {
        "consumer": consumer,
        "reset": count,
        "counters": [
            {"gateway": r.gateway, "route": r.route, "unit": r.unit, "used": r.used} for r in before
        ],
        "detail": detail,
    }


def _record(store: Store, gateway: str, actor: str, detail: str) -> None:
    """The reset among the events, with who did it (as token changes are recorded)."""
    from sqlalchemy import insert

    from ..store.tables import EventRow

    with store._writer.begin() as conn:
        conn.execute(
            insert(EventRow).values(
                at=time.time(),
                kind=EVENT_KIND,
                gateway=gateway,
                node=actor,
                revision=None,
                detail=detail[:2000],
            )
        )

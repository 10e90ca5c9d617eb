"""Consumers' requests in the current period of each of their limits (``analytics usage``).

One function for the CLI on the database and the admin API (``GET /v1/analytics/usage``),
so both print the same entries for the same rollups. A limit is compared with the requests
it let through (``used``: admitted plus upstream errors, see
:func:`~controlplane.analytics.rollup.usage_class`); requests the gateway throttled or
refused as unauthenticated are reported beside it, never counted as used.

Day/week/month quotas are the exception: their ``used`` is what the quota counters hold
for the calendar window open now (controlplane/quota/report.py), per route the quota
applies on, since that count (not the rollups, which may be off) is what the edge enforces;
the throttled requests beside it still come from the rollups.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from ..errors import NotFound

if TYPE_CHECKING:
    from ..store import Store
    from .rollup import RollupReader

__all__ = ["usage"]

_PERIOD_WORD = {"minute": "this minute", "hour": "this hour", "day": "today"}


def usage(
    store: Store, reader: RollupReader, consumer: str | None, now: float | None = None
) -> dict[str, Any]:
    """``{"items": [...], "warnings": [...]}``: one item per consumer and limit (its own,
    else its plan's), every unit included, and a warning for each reason the figures can
    be short (gateways with analytics off).

    Rollups are per minute, so a per-second limit is shown against the requests of the
    current minute (at most ``60 x requests`` can have been let through)."""
    from ..policy import Consumer, Gateway
    from ..policy.ratelimit import QUOTA_UNITS, SECONDS, Plan
    from .rollup import Filter

    consumers = cast(list[Consumer], store.list_objects("consumer"))
    if consumer is not None:
        consumers = [x for x in consumers if x.name == consumer]
        if not consumers:
            raise NotFound(f"consumer {consumer!r} does not exist")
    plans = {p.name: p for p in cast(list[Plan], store.list_objects("plan"))}
    gateways = cast(list[Gateway], store.list_objects("gateway"))
    now = time.time() if now is None else now
    items = []
    for who in consumers:
        limits = who.limits or (plans[who.plan].limits if who.plan in plans else [])
        quotas: list[dict[str, Any]] | None = None
        for limit in limits:
            per = str(limit.per)
            if limit.per in QUOTA_UNITS:
                if quotas is None:
                    quotas = _quotas(store, who.name, now)
                items += _quota_items(reader, who, limit.requests, per, quotas, now)
                continue
            period = max(SECONDS[limit.per], 60)  # the rollups' granularity
            start = now // period * period
            counts = reader.usage_counts(Filter(start, now + 60, consumer=who.name))
            used = counts["admitted"] + counts["upstream_errors"]
            if per == "second":
                text = (
                    f"{who.name}: {used:,} this minute against {limit.requests:,} per second "
                    f"(at most {limit.requests * 60:,} a minute)"
                )
            else:
                word = _PERIOD_WORD.get(per, f"this {per}")
                text = f"{who.name}: {used:,} of {limit.requests:,} {word}"
            if counts["throttled"]:
                text += f", {counts['throttled']:,} throttled"
            items.append(
                {
                    "consumer": who.name,
                    "plan": who.plan if not who.limits else None,
                    "per": per,
                    "limit": limit.requests,
                    "period_start": datetime.fromtimestamp(start, UTC).isoformat(),
                    "used": used,
                    "admitted": counts["admitted"],
                    "upstream_errors": counts["upstream_errors"],
                    "throttled": counts["throttled"],
                    "gateway": None,
                    "route": None,
                    "resets_at": None,
                    "text": text,
                }
            )
    return {"items": items, "warnings": _warnings(gateways)}


def _quotas(store: Store, consumer: str, now: float) -> list[dict[str, Any]]:
    """The consumer's day/week/month quotas with their counters (``quota show``)."""
    from ..quota.counters import QuotaCounters
    from ..quota.report import show

    return show(store, QuotaCounters(store._reader), consumer=consumer, now=now)


def _quota_items(
    reader: RollupReader,
    who: Any,
    limit: int,
    per: str,
    quotas: list[dict[str, Any]],
    now: float,
) -> list[dict[str, Any]]:
    """One item per route the quota applies on: used from the counters, throttled from the
    rollups of the same window and route. No route applying it: one item at 0 saying so."""
    from .rollup import Filter

    word = _PERIOD_WORD.get(per, f"this {per}")
    plan = who.plan if not who.limits else None
    source = f"plan {who.plan}" if plan else f"consumer {who.name}"
    mine = [q for q in quotas if q["unit"] == per and q["source"] == source]
    if not mine:
        return [
            {
                "consumer": who.name,
                "plan": plan,
                "per": per,
                "limit": limit,
                "period_start": None,
                "used": 0,
                "admitted": 0,
                "upstream_errors": 0,
                "throttled": 0,
                "gateway": None,
                "route": None,
                "resets_at": None,
                "text": f"{who.name}: 0 of {limit:,} {word} (no route applies it)",
            }
        ]
    out = []
    for q in mine:
        start = datetime.fromisoformat(q["window_start"]).timestamp()
        counts = reader.usage_counts(
            Filter(start, now + 60, gateway=q["gateway"], route=q["route"], consumer=who.name)
        )
        text = (
            f"{who.name}: {q['used']:,} of {limit:,} {word} on {q['gateway']}/{q['route']} "
            f"(since {q['window_start'][:16].replace('T', ' ')} {q['time_zone']}), "
            f"resets in {q['resets_in']}"
        )
        if counts["throttled"]:
            text += f", {counts['throttled']:,} throttled"
        out.append(
            {
                "consumer": who.name,
                "plan": plan,
                "per": per,
                "limit": limit,
                "period_start": datetime.fromtimestamp(start, UTC).isoformat(),
                "used": q["used"],
                "admitted": q["used"],
                "upstream_errors": 0,
                "throttled": counts["throttled"],
                "gateway": q["gateway"],
                "route": q["route"],
                "resets_at": q["resets_at"],
                "text": text,
            }
        )
    return out


def _warnings(gateways: list[Any]) -> list[str]:
    off = sorted(g.name for g in gateways if g.analytics is None or not g.analytics.enabled)
    if not off:
        return []
    if len(off) == len(gateways):
        return [
            "analytics is off on every gateway: no request is counted "
            "(set analytics: {enabled: true} on the gateway)"
        ]
    return [f"analytics is off on gateway {', '.join(off)}: its requests are not counted"]

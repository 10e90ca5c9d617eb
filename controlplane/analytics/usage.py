"""Consumers' requests in the current period of each of their limits (``analytics usage``).

One function for the CLI on the database and the admin API (``GET /v1/analytics/usage``),
so both print the same entries for the same rollups. A limit is compared with the requests
it let through (``used``: admitted plus upstream errors, see
:func:`~controlplane.analytics.rollup.usage_class`); requests the gateway throttled or
refused as unauthenticated are reported beside it, never counted as used.
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
    from ..policy.ratelimit import SECONDS, Plan
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
        for limit in limits:
            per = str(limit.per)
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
                    "text": text,
                }
            )
    return {"items": items, "warnings": _warnings(gateways)}


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

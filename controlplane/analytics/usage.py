"""Consumers' requests in the current period of each of their limits (``analytics usage``).

One function for the CLI on the database and the admin API (``GET /v1/analytics/usage``),
so both print the same entries for the same rollups.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, cast

from ..errors import NotFound

if TYPE_CHECKING:
    from ..store import Store
    from .rollup import RollupReader

__all__ = ["usage"]

_PERIOD_WORD = {"minute": "this minute", "hour": "this hour", "day": "today"}


def usage(
    store: Store, reader: RollupReader, consumer: str | None, now: float | None = None
) -> list[dict[str, Any]]:
    """One entry per consumer and minute/hour/day limit (its own, else its plan's): the
    requests counted since the period began. Per-second limits are skipped: rollups are
    per minute."""
    from ..policy import Consumer
    from ..policy.ratelimit import SECONDS, Plan
    from .rollup import Filter

    consumers = cast(list[Consumer], store.list_objects("consumer"))
    if consumer is not None:
        consumers = [x for x in consumers if x.name == consumer]
        if not consumers:
            raise NotFound(f"consumer {consumer!r} does not exist")
    plans = {p.name: p for p in cast(list[Plan], store.list_objects("plan"))}
    now = time.time() if now is None else now
    out = []
    for who in consumers:
        limits = who.limits or (plans[who.plan].limits if who.plan in plans else [])
        for limit in limits:
            per = str(limit.per)
            if per == "second":
                continue
            start = now // SECONDS[limit.per] * SECONDS[limit.per]
            used = reader.total_requests(Filter(start, now + 60, consumer=who.name))
            out.append(
                {
                    "consumer": who.name,
                    "plan": who.plan if not who.limits else None,
                    "per": per,
                    "used": used,
                    "limit": limit.requests,
                    "text": f"{who.name}: {used:,} of {limit.requests:,} {_PERIOD_WORD[per]}",
                }
            )
    return out

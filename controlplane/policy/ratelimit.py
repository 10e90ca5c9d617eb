"""Rate limits and usage plans: how many requests a caller may make per second/minute/hour/day.

Limits are enforced by Envoy (``local_ratelimit``), never by a call into Python. A ``plan``
is a named set of limits that consumers subscribe to; a consumer may override its plan with
its own ``limits``. A route (or a gateway, as the default of its routes) says how callers
are told apart (``key``) and what applies to callers without a plan (``limits``).
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, Field, field_validator, model_validator

from .bounds import IntRange
from .common import Name, PolicyModel

__all__ = [
    "QUOTA_UNITS",
    "Limit",
    "Per",
    "Plan",
    "RateLimit",
    "TimeZone",
    "check_limits",
    "parse_limit",
]

_HEADER_NAME_RE = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]+$")
_LIMIT_RE = re.compile(r"^\s*(-?\d+)\s*/\s*([a-z]+)\s*$")


class Per(StrEnum):
    second = "second"
    minute = "minute"
    hour = "hour"
    day = "day"
    week = "week"
    month = "month"


#: seconds in each unit (a month counted as 31 days), also the order of units (shortest first)
SECONDS = {
    Per.second: 1,
    Per.minute: 60,
    Per.hour: 3600,
    Per.day: 86400,
    Per.week: 7 * 86400,
    Per.month: 31 * 86400,
}
#: units counted in calendar windows (midnight, Monday, the 1st) that survive restarts
QUOTA_UNITS = frozenset({Per.day, Per.week, Per.month})


def _time_zone(value: str) -> str:
    from ..quota.calendar import check_time_zone  # imports this module: imported when used

    return check_time_zone(value)


#: the zone whose calendar (midnight, Monday, the 1st) bounds day/week/month quotas
TimeZone = Annotated[
    str,
    AfterValidator(_time_zone),
    Field(
        max_length=64,
        description="IANA time zone of the day/week/month quotas' calendar windows "
        "(e.g. Europe/Paris); UTC by default",
    ),
]


class Limit(PolicyModel):
    """``requests`` per ``per``; ``burst`` (at least ``requests``) lets a quiet caller save up."""

    requests: Annotated[int, IntRange(1, 1_000_000_000)]  # tokens: uint32
    per: Per
    burst: Annotated[int, IntRange(1, 1_000_000_000)] | None = None

    @model_validator(mode="after")
    def _burst(self) -> Limit:
        if self.burst is not None and self.per in QUOTA_UNITS:
            raise ValueError(
                f"burst: a per-{self.per} quota has no burst (its count starts again at the "
                "calendar boundary)"
            )
        if self.burst is not None and self.burst < self.requests:
            raise ValueError(f"burst: must be at least requests ({self.requests})")
        return self


def check_limits(value: list[Limit]) -> list[Limit]:
    units = [limit.per for limit in value]
    if len(set(units)) != len(units):
        raise ValueError("at most one limit per unit (second, minute, hour, day, week, month)")
    return sorted(value, key=lambda limit: SECONDS[limit.per])


def parse_limit(text: str, burst: int | None = None) -> dict[str, Any]:
    """``60/minute`` (also ``60/min``, ``10/s``, ``1000/h``, ``5/d``, ``5000/w``, ``5000/wk``,
    ``100000/mo``; the plural ``100000/months`` too) as a limit's fields."""
    m = _LIMIT_RE.match(text.lower())
    units = {
        "s": "second",
        "sec": "second",
        "m": "minute",
        "min": "minute",
        "h": "hour",
        "hr": "hour",
        "d": "day",
        "w": "week",
        "wk": "week",
        "mo": "month",
    }
    if not m:
        raise ValueError(f"{text!r} is not a limit like 60/minute")
    word = m.group(2)
    per = units.get(word, word)
    if per not in SECONDS and per.endswith("s") and per[:-1] in SECONDS:
        per = per[:-1]  # 5/days
    out: dict[str, Any] = {"requests": int(m.group(1)), "per": per}
    if burst is not None:
        out["burst"] = burst
    return out


class Plan(PolicyModel):
    """A usage plan, e.g. free (60/minute) or pro (6000/minute, 100/second)."""

    kind: ClassVar[str] = "plan"

    name: Name
    limits: list[Limit] = Field(min_length=1)
    description: str | None = Field(None, max_length=200)
    time_zone: TimeZone = "UTC"

    _limits = field_validator("limits")(classmethod(lambda cls, v: check_limits(v)))


class RateLimit(PolicyModel):
    """How a route counts requests.

    ``key``: ``consumer`` (the authenticated caller, x-consumer-id), ``client_ip``,
    ``header:NAME`` (one bucket per value of that header) or ``none`` (one bucket for the
    whole route). With ``key: consumer`` and ``use_plans`` (the default), a consumer with a
    plan (or its own limits) gets those; others get ``limits``, or no limit when empty.
    Requests without a value for the key (no consumer, no such header) are not limited.
    """

    key: str = Field("consumer", description="consumer, client_ip, header:NAME or none")
    limits: list[Limit] = Field(default_factory=list, description="for callers without a plan")
    # default True so that ``export`` writes ``use_plans: false`` whenever it is off
    use_plans: bool = Field(True, description="consumers' plans apply (key consumer only)")
    #: the calendar of ``limits``' day/week/month quotas (a plan's own ``time_zone`` for its)
    time_zone: TimeZone = "UTC"

    @model_validator(mode="before")
    @classmethod
    def _plans_by_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and "use_plans" not in data:
            data = {**data, "use_plans": data.get("key", "consumer") == "consumer"}
        return data

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        value = value.strip()
        if value in ("consumer", "client_ip", "none"):
            return value
        if value.startswith("header:"):
            name = value[len("header:") :].strip().lower()
            if not name:
                raise ValueError("header: name the header, e.g. header:x-tenant")
            if not _HEADER_NAME_RE.match(name):
                raise ValueError(f"{name!r} is not a valid HTTP header name")
            return f"header:{name}"
        raise ValueError(f"{value!r} is not a key; use consumer, client_ip, header:NAME or none")

    _limits = field_validator("limits")(classmethod(lambda cls, v: check_limits(v)))

    @model_validator(mode="after")
    def _consistent(self) -> RateLimit:
        if self.use_plans and self.key != "consumer":
            raise ValueError("use_plans: plans belong to consumers; needs key consumer")
        return self

    @property
    def header(self) -> str | None:
        return self.key[len("header:") :] if self.key.startswith("header:") else None

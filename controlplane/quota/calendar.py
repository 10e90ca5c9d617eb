"""Calendar windows of day/week/month quotas in a time zone.

A quota counts admitted requests from one boundary to the next: local midnight (day),
Monday 00:00 (week, ISO weeks), the 1st at 00:00 (month). Windows are computed from the
zone's rules with :mod:`zoneinfo`, so a day across a daylight-saving change lasts 23 or
25 hours and the boundary stays at local midnight. Where a zone skips midnight itself
(a few zones move their clocks at 00:00), the window starts at the first instant of that
local day that exists.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..policy.ratelimit import QUOTA_UNITS, Per

__all__ = ["Window", "check_time_zone", "http_date", "window", "zone"]

Window = tuple[int, int]  # [start, end) in unix seconds


@lru_cache(maxsize=64)
def zone(name: str) -> ZoneInfo:
    """The zone named ``name`` (an IANA name such as ``Europe/Paris``, or ``UTC``)."""
    return ZoneInfo(name)


def check_time_zone(name: str) -> str:
    """``name`` if it is a time zone this machine knows, else a ValueError saying so."""
    if not name or name != name.strip() or name.startswith(("/", ".")) or ".." in name:
        raise ValueError(f"{name!r} is not a time zone name such as UTC or Europe/Paris")
    try:
        zone(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(
            f"{name!r} is not a known time zone (IANA names such as UTC, Europe/Paris, "
            "America/New_York)"
        ) from None
    return name


def _local_midnight(day: datetime, tz: ZoneInfo) -> int:
    """Unix time of 00:00 on ``day``'s date in ``tz`` (the first existing instant)."""
    naive = datetime(day.year, day.month, day.day)
    aware = naive.replace(tzinfo=tz)
    start = int(aware.timestamp())
    # a skipped midnight: zoneinfo maps it with the offset before the gap, which can land
    # on the previous day; step forward to the first instant whose local date is ``day``
    while datetime.fromtimestamp(start, tz).date() < naive.date():
        start += 900
    return start


def _start_date(per: Per, local: datetime) -> datetime:
    if per is Per.day:
        return local
    if per is Per.week:
        return local - timedelta(days=local.weekday())
    if per is Per.month:
        return local.replace(day=1)
    raise ValueError(f"{per} is not a calendar unit ({', '.join(sorted(QUOTA_UNITS))})")


def _next_date(per: Per, start: datetime) -> datetime:
    if per is Per.day:
        return start + timedelta(days=1)
    if per is Per.week:
        return start + timedelta(days=7)
    year, month = (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
    return start.replace(year=year, month=month, day=1)


def window(per: Per, at: float, time_zone: str = "UTC") -> Window:
    """The calendar window of unit ``per`` containing unix time ``at`` in ``time_zone``."""
    tz = zone(time_zone)
    local = datetime.fromtimestamp(at, tz)
    first = _start_date(per, local)
    start = _local_midnight(first, tz)
    if start > at:  # ``at`` lies in a skipped stretch of the day before: cannot happen
        start = int(at)
    end = _local_midnight(_next_date(per, first), tz)
    return start, end


def http_date(at: int) -> str:
    """``at`` as an HTTP-date (RFC 9110), the form of an absolute Retry-After."""
    return datetime.fromtimestamp(at, UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")

"""The one duration grammar of the project, shared by policy fields and command-line options.

A duration is one or more ``<number><unit>`` parts with units ``ms``, ``s``, ``m``, ``h``,
``d``, ``w`` (``250ms``, ``1.5s``, ``2m``, ``1h30m``, ``7d``), or a bare number of seconds;
blanks around it, or between a number and its unit (``5 s``), are ignored. Policy fields
(timeouts, intervals, TTLs),
``--wait``, ``--since``/``--until``/``--step``/``--retention`` of ``analytics``,
``consumer key add --expires`` all read it through this module,
which needs only the standard library (the CLI imports it at start-up).
"""

from __future__ import annotations

import re
import time

__all__ = [
    "DURATION_GRAMMAR",
    "DURATION_PATTERN",
    "MAX_DURATION_MS",
    "duration_text",
    "expiry",
    "parse_duration_ms",
    "parse_duration_seconds",
    "since",
]

#: the longest duration any policy field takes: a year is far inside google.protobuf.Duration
#: and inside the millisecond timers Envoy converts durations to
MAX_DURATION_MS = 365 * 24 * 3_600_000

#: one part of a duration: a number (at most 15 digits, 9 decimals: no float overflow) and
#: its unit; a duration is one or more parts (``1h30m``) or a bare number of seconds
_PART = r"\d{1,15}(?:\.\d{1,9})?[ \t]*(?:ms|s|m|h|d|w)"
_DURATION_RE = re.compile(rf"^(?:(?:{_PART}){{1,6}}|\d{{1,15}}(?:\.\d{{1,9}})?)$")
_PART_RE = re.compile(r"(\d{1,15}(?:\.\d{1,9})?)[ \t]*(ms|s|m|h|d|w)")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
#: the grammar, as error messages and the JSON Schema state it
DURATION_GRAMMAR = "e.g. '250ms', '1.5s', '2m', '1h30m', '7d' or a number of seconds"
#: the same grammar as a JSON Schema pattern (surrounding blanks are allowed)
DURATION_PATTERN = r"^\s*((\d+(\.\d+)?[ \t]*(ms|s|m|h|d|w)){1,6}|\d+(\.\d+)?)\s*$"


def duration_text(ms: int) -> str:
    """``ms`` in the largest unit that divides it (``90m``, ``1500ms``), for messages."""
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def parse_duration_ms(text: str) -> float | None:
    """The one duration grammar of the project (policy fields, ``--wait``, ``--since``,
    ``--step``, ``--retention``, ``--expires``): one or more
    ``<number><unit>`` parts with units ``ms``, ``s``, ``m``, ``h``, ``d``, ``w``
    (``250ms``, ``1.5s``, ``1h30m``, ``7d``), or a bare number of seconds; blanks around
    it and between a number and its unit are ignored. Returns the exact milliseconds, or
    None when ``text`` is not a duration."""
    text = text.strip()
    if not _DURATION_RE.fullmatch(text):
        return None
    if text[-1].isdigit():
        return float(text) * 1000
    return sum(float(n) * _UNIT_MS[u] for n, u in _PART_RE.findall(text))


def parse_duration_seconds(
    value: str, option: str, min_s: float = 0.001, max_s: float = MAX_DURATION_MS / 1000
) -> float:
    """A duration given on the command line, in seconds; ValueError naming ``option`` and
    the allowed range otherwise (callers turn it into their own error class)."""
    ms = parse_duration_ms(value)
    allowed = f"from {duration_text(round(min_s * 1000))} to {duration_text(round(max_s * 1000))}"
    if ms is None:
        raise ValueError(f"{option}: {repr(value)[:40]} is not a duration; use {DURATION_GRAMMAR}")
    if not min_s * 1000 <= ms <= max_s * 1000:
        raise ValueError(f"{option}: {repr(value)[:40]} is out of range: must be {allowed}")
    return ms / 1000


#: the furthest expiry a credential may be given (a hundred years: datetime stays in range)
MAX_EXPIRY_S = 100 * 365 * 86_400


def expiry(value: str, option: str, now: float | None = None) -> float:
    """When something given ``--expires VALUE`` expires, as epoch seconds: a duration from
    now in the grammar above (``90d``, ``12h``, ``1h30m``; from 1m to 36500d), or an ISO 8601
    date/time in the future (UTC unless it names a zone). ValueError naming ``option``."""
    from datetime import UTC, datetime

    now = time.time() if now is None else now
    ms = parse_duration_ms(value)
    if ms is not None:
        if not 60_000 <= ms <= MAX_EXPIRY_S * 1000:
            raise ValueError(f"{option}: {value[:24]!r} must be from 1m to 36500d from now")
        return now + ms / 1000
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{option}: {value[:40]!r} is neither a duration ({DURATION_GRAMMAR}) nor an ISO time"
        ) from None
    at = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    if at <= now:
        raise ValueError(f"{option}: {value[:40]!r} is in the past")
    return at


def since(value: str, option: str, now: float | None = None) -> float:
    """The start of a ``--since VALUE`` window, as epoch seconds: a duration ago in the
    grammar above (``30m``, ``2h``, ``7d``) or an ISO 8601 date/time. ValueError naming
    ``option``."""
    from datetime import UTC, datetime

    now = time.time() if now is None else now
    ms = parse_duration_ms(value)
    if ms is not None:
        return now - ms / 1000
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(
            f"{option}: {value[:32]!r} is neither a duration ago ({DURATION_GRAMMAR}) "
            "nor an ISO time"
        ) from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()

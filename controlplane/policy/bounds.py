"""Every number and duration of the policy format, with the bounds of the Envoy field it becomes.

A value outside what Envoy's protobuf field can hold (``UInt32Value``, ``FractionalPercent``,
``google.protobuf.Duration``) or what Envoy itself accepts (a port, a status from 200 to 599)
used to be accepted on input and then fail translation (``ValueError: Value out of range``)
or be rejected by every proxy. Every model takes its numeric fields from here, so the bounds
are stated once, the error names the allowed range, and the JSON Schema says the same.

The types are strict: ``true`` is not 1, ``1.5`` is not an integer, ``"80"`` is not a
number, and NaN or infinity are never a value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic_core import core_schema

from ..durations import (
    DURATION_GRAMMAR,
    DURATION_PATTERN,
    MAX_DURATION_MS,
    parse_duration_ms,
    parse_duration_seconds,
)
from ..durations import (
    duration_text as _ms_text,
)

__all__ = [
    "DURATION_GRAMMAR",
    "INT64_MAX",
    "MAX_DURATION_MS",
    "UINT32_MAX",
    "ByteCount",
    "Count",
    "CountOrZero",
    "Duration",
    "DurationRange",
    "HttpStatus",
    "IntRange",
    "NumberRange",
    "Percent",
    "Port",
    "ResponseStatus",
    "Threshold",
    "Weight",
    "WholePercent",
    "duration_ms",
    "parse_duration",
    "parse_duration_ms",
    "parse_duration_seconds",
]

#: largest value of a protobuf uint32 (``UInt32Value``, ``FractionalPercent.numerator``)
UINT32_MAX = 2**32 - 1
#: largest value of a protobuf int64
INT64_MAX = 2**63 - 1


def _shown(value: Any) -> str:
    """The offending value, unless it is too long to be useful in a one-line error."""
    text = repr(value)
    return text if len(text) <= 24 else f"{text[:21]}..."


def _kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, float):
        return "a fraction" if math.isfinite(value) else "not a finite number"
    return type(value).__name__


@dataclass(frozen=True)
class IntRange:
    """Field metadata: an integer from ``lo`` to ``hi`` inclusive, e.g.
    ``Annotated[int, IntRange(1, 10)]``."""

    lo: int
    hi: int

    def check(self, value: Any) -> int:
        allowed = f"an integer from {self.lo} to {self.hi}"
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be {allowed}, not {_kind_of(value)} ({_shown(value)})")
        if not self.lo <= value <= self.hi:
            raise ValueError(f"{_shown(value)} is out of range: must be {allowed}")
        return value

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> Any:
        return core_schema.no_info_before_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(self, schema: Any, handler: GetJsonSchemaHandler) -> Any:
        return {"type": "integer", "minimum": self.lo, "maximum": self.hi}


@dataclass(frozen=True)
class NumberRange:
    """Field metadata: a finite number above ``lo`` (or from ``lo`` when ``lo_included``)
    and at most ``hi``."""

    lo: float
    hi: float
    lo_included: bool = False

    def check(self, value: Any) -> float:
        if self.lo_included:
            allowed = f"a number from {self.lo:g} to {self.hi:g}"
        else:
            allowed = f"a number above {self.lo:g} and at most {self.hi:g}"
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"must be {allowed}, not {_kind_of(value)} ({_shown(value)})")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"must be {allowed}, not {_shown(value)}")
        low_ok = value >= self.lo if self.lo_included else value > self.lo
        if not low_ok or value > self.hi:
            raise ValueError(f"{_shown(value)} is out of range: must be {allowed}")
        return float(value)

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> Any:
        return core_schema.no_info_before_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(self, schema: Any, handler: GetJsonSchemaHandler) -> Any:
        low = "minimum" if self.lo_included else "exclusiveMinimum"
        return {"type": "number", low: self.lo, "maximum": self.hi}


def _seconds(ms: int) -> float | int:
    return ms // 1000 if ms % 1000 == 0 else ms / 1000


def parse_duration(value: Any, min_ms: int = 1, max_ms: int = MAX_DURATION_MS) -> str:
    """A duration (``"250ms"``, ``"5s"``, ``"1m"``, ``"1h"`` or a number of seconds) as its
    normalised text; ValueError, naming the allowed range, for anything else."""
    allowed = f"a duration from {_ms_text(min_ms)} to {_ms_text(max_ms)}"
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"must be {allowed} such as '250ms', '5s', '1m'")
    if isinstance(value, str):
        parsed = parse_duration_ms(value)
        if parsed is None:
            raise ValueError(f"{_shown(value)} is not a duration; use {DURATION_GRAMMAR}")
        ms_exact = parsed
    elif isinstance(value, int):
        if abs(value) > max_ms:  # also keeps a huge integer away from float()
            raise ValueError(f"{_shown(value)} is out of range: must be {allowed}")
        ms_exact = value * 1000.0
    else:
        if not math.isfinite(value):
            raise ValueError(f"must be {allowed}, not {_shown(value)}")
        ms_exact = value * 1000.0
    if not math.isfinite(ms_exact) or not min_ms <= ms_exact <= max_ms:
        raise ValueError(f"{_shown(value)} is out of range: must be {allowed}")
    ms = round(ms_exact)
    if abs(ms_exact - ms) > 1e-6:
        raise ValueError("has a resolution of 1ms")
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


@dataclass(frozen=True)
class DurationRange:
    """Field metadata of a duration, normalised to text (``"250ms"``/``"5s"``) so that
    what a user applies and what ``export`` writes are the same."""

    min_ms: int = 1
    max_ms: int = MAX_DURATION_MS

    def check(self, value: Any) -> str:
        return parse_duration(value, self.min_ms, self.max_ms)

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> Any:
        return core_schema.no_info_before_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(self, schema: Any, handler: GetJsonSchemaHandler) -> Any:
        # the validator takes a number of seconds or a string with a unit; the schema says so
        lo, hi = _ms_text(self.min_ms), _ms_text(self.max_ms)
        return {
            "anyOf": [
                {"type": "string", "pattern": DURATION_PATTERN},
                {
                    "type": "number",
                    "minimum": _seconds(self.min_ms),
                    "maximum": _seconds(self.max_ms),
                },
            ],
            "description": f"a duration from {lo} to {hi}: {DURATION_GRAMMAR}",
            "examples": ["250ms", "5s", 0.25],
        }


def duration_ms(value: str) -> int:
    """Milliseconds of a normalised duration string."""
    return int(value[:-2]) if value.endswith("ms") else int(value[:-1]) * 1000


# -- the named ranges the models use -------------------------------------------------------

#: every timeout, interval and TTL (google.protobuf.Duration, > 0)
Duration = Annotated[str, DurationRange()]
#: SocketAddress.port_value of a listener or an upstream
Port = Annotated[int, IntRange(1, 65535)]
#: a status an upstream may answer with (health checks, retriable status codes)
HttpStatus = Annotated[int, IntRange(100, 599)]
#: a status Envoy itself answers with (direct responses, injected aborts): Envoy takes 200-599
ResponseStatus = Annotated[int, IntRange(200, 599)]
#: a share of requests: FractionalPercent / Percent, above 0 and at most 100
Percent = Annotated[float, NumberRange(0, 100)]
#: a count held in a protobuf UInt32Value that must be at least 1 (circuit breakers, ...)
Count = Annotated[int, IntRange(1, UINT32_MAX)]
#: the same, where 0 is meaningful
CountOrZero = Annotated[int, IntRange(0, UINT32_MAX)]
#: a whole-number percentage (UInt32Value capped at 100 by Envoy)
WholePercent = Annotated[int, IntRange(1, 100)]
#: a weight of a weighted cluster (UInt32Value; the sum must fit too, see Route)
Weight = Annotated[int, IntRange(0, 1_000_000)]
#: a byte size Envoy holds as uint32
ByteCount = Annotated[int, IntRange(0, UINT32_MAX)]
#: a health-check threshold (UInt32Value; more than 100 probes is never meant)
Threshold = Annotated[int, IntRange(1, 100)]

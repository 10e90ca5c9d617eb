"""Shared field types of the policy models.

Values are normalised on input (durations become ``"250ms"``/``"5s"``) so that what a user
applies, what the store keeps and what ``export`` writes are the same text: that is what
makes ``apply -f $(export)`` a no-op.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, ClassVar

import re2
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from .bounds import Duration, duration_ms, parse_duration
from .reserved import reserved_problem

__all__ = [
    "Duration",
    "Hostname",
    "Name",
    "PolicyModel",
    "Regex",
    "duration_ms",
    "is_loopback_host",
    "parse_duration",
    "parse_hostport",
]

_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
_HOST_RE = re.compile(
    r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
)


#: one set per distinct combination of fields set (ADR 0055); bounded so that input with
#: ever new combinations cannot grow it without limit
_FIELDS_SETS: dict[frozenset[str], set[str]] = {}
_FIELDS_SETS_MAX = 4096


class PolicyModel(BaseModel):
    """Base of every policy object: strict about unknown fields, immutable once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: ClassVar[str] = ""

    def model_post_init(self, context: Any, /) -> None:
        """Share the set of names of the fields given (pydantic keeps one per instance, 216
        bytes: a fifth of a route's memory, 21 MiB of a 50,000-route apply; ADR 0055).
        Sharing is safe because the models are frozen: pydantic changes that set only on
        assignment, which a frozen model refuses first, and ``model_copy`` copies it before
        adding the updated names."""
        fs = self.__pydantic_fields_set__
        key = frozenset(fs)
        shared = _FIELDS_SETS.get(key)
        if shared is None:
            if len(_FIELDS_SETS) < _FIELDS_SETS_MAX:
                _FIELDS_SETS[key] = fs
        elif shared is not fs:
            object.__setattr__(self, "__pydantic_fields_set__", shared)

    def spec(self) -> dict[str, Any]:
        """The canonical JSON form stored in the database and written by ``export``."""
        return self.model_dump(mode="json", exclude_defaults=True)


def _check_name(value: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError(
            "must be 1-63 lower-case letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )
    problem = reserved_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _check_hostname(value: str) -> str:
    value = value.lower()
    if len(value) > 253 or not _HOST_RE.match(value):
        raise ValueError(f"{value!r} is not a valid host name (a '*.' prefix is allowed)")
    return value


def _re2_options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # the error is reported to the user, not to stderr
    return options


#: Envoy refuses regexes whose compiled RE2 program is larger than this (its default
#: ``re2.max_program_size.error_level``); checking here turns a proxy-side rejection into
#: an input error.
MAX_REGEX_PROGRAM_SIZE = 100


def _check_regex(value: str) -> str:
    try:
        compiled = re2.compile(value, _re2_options())
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode(errors="replace")
        raise ValueError(f"invalid RE2 regex {value!r}: {reason}") from None
    if compiled.programsize > MAX_REGEX_PROGRAM_SIZE:
        raise ValueError(
            f"regex {value!r} is too complex for Envoy (RE2 program size "
            f"{compiled.programsize} > {MAX_REGEX_PROGRAM_SIZE}); simplify it"
        )
    return value


def parse_hostport(value: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` for IPv6) and check both halves."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{value!r} must be host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{value!r}: {host!r} is not an IPv6 address") from None
    else:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            _check_hostname(host)
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{value!r}: port must be a number from 1 to 65535")
    return host.lower(), int(port_text)


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


Name = Annotated[str, AfterValidator(_check_name), Field(examples=["users-api"])]
Hostname = Annotated[str, AfterValidator(_check_hostname)]
Regex = Annotated[str, AfterValidator(_check_regex)]


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback IP address (a host name may resolve to anything: no)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

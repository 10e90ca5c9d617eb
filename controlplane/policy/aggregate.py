"""An aggregate: one client request answered by several backend calls made in parallel.

The composite route's answer is one JSON object with a member per part
(``{"user": ..., "orders": ...}``). Each part has its own timeout; ``on_error`` declares
what a failed or late part does to the whole: ``fail`` answers 502 naming the part,
``partial`` answers 200 with the parts that did answer plus ``errors: {part: reason}``.

Part paths may use ``{name}`` placeholders filled from the named groups of the route's
``match.path_regex`` (``^/profile/(?P<id>[0-9]+)$`` -> ``/users/{id}``), so one route
serves every profile. The calls are made by the aggregation service (``gatewayctl
aggregator``), through the gateway's own Envoy, so each part gets the cluster's load
balancing, health checks and circuit breakers.
"""

from __future__ import annotations

import re
from enum import StrEnum

import re2
from pydantic import Field, field_validator, model_validator

from .common import Duration, Name, PolicyModel

__all__ = ["Aggregate", "AggregatePart", "OnError", "placeholders"]

#: a part's name is a JSON member of the answer: keep it a plain identifier
_PART_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,62}$")
_PLACEHOLDER_RE = re.compile(r"\{([^{}]*)\}")
_HEADER_RE = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]+$")
#: member of a partial answer that lists failed parts, so no part may take the name
ERRORS_MEMBER = "errors"
#: headers the aggregation service sets itself on part requests
_RESERVED_HEADERS = {"host", "content-length", "transfer-encoding", "connection"}


class OnError(StrEnum):
    fail = "fail"
    partial = "partial"


def placeholders(path: str) -> list[str]:
    """Names of the ``{name}`` placeholders in a part path."""
    return _PLACEHOLDER_RE.findall(path)


class AggregatePart(PolicyModel):
    """One backend call: its member name in the answer, its cluster, path and timeout."""

    name: str = Field(description="member name in the JSON answer")
    cluster: Name
    path: str = Field(
        pattern=r"^/",
        max_length=1024,
        description="path (and optional query) on the cluster; {name} = a path_regex group",
    )
    timeout: Duration = Field("1s", description="the part counts as failed after this")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _PART_NAME_RE.match(value):
            raise ValueError(
                f"{value!r}: a part name is 1-63 letters, digits, '_' or '-', "
                "starting with a letter or '_'"
            )
        if value == ERRORS_MEMBER:
            raise ValueError(f"{value!r} is reserved for the failed parts of a partial answer")
        return value

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if any(c in value for c in " \r\n\0#"):
            raise ValueError("must not contain spaces, CR, LF, NUL or '#'")
        stripped = _PLACEHOLDER_RE.sub("", value)
        if "{" in stripped or "}" in stripped:
            raise ValueError(f"{value!r}: unbalanced '{{' or '}}' (placeholders are {{name}})")
        for name in placeholders(value):
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
                raise ValueError(f"{value!r}: {{{name}}} is not a placeholder name")
        return value


class Aggregate(PolicyModel):
    """Parts called in parallel and merged into one JSON object."""

    parts: list[AggregatePart] = Field(min_length=1, max_length=16)
    on_error: OnError = Field(
        OnError.fail,
        description="fail: 502 naming the failed part; partial: 200 with an errors member",
    )
    forward_query: bool = Field(False, description="append the client's query to every part")
    forward_headers: list[str] = Field(
        default_factory=lambda: ["authorization", "x-consumer-id"],
        description="client request headers passed on to every part",
    )

    @field_validator("forward_headers")
    @classmethod
    def _headers(cls, value: list[str]) -> list[str]:
        out = []
        for name in value:
            name = name.lower()
            if not _HEADER_RE.match(name):
                raise ValueError(f"{name!r} is not a valid HTTP header name")
            if name in _RESERVED_HEADERS:
                raise ValueError(f"{name!r} is set by the aggregation service itself")
            if name not in out:
                out.append(name)
        return out

    @model_validator(mode="after")
    def _unique_parts(self) -> Aggregate:
        seen: set[str] = set()
        for i, part in enumerate(self.parts):
            if part.name in seen:
                raise ValueError(f"parts[{i}]: part name {part.name!r} is used twice")
            seen.add(part.name)
        return self

    def clusters(self) -> list[str]:
        """The clusters the parts call, each once, in part order."""
        return list(dict.fromkeys(p.cluster for p in self.parts))

    def check_placeholders(self, path_regex: str | None) -> None:
        """Every placeholder must be a named group of the route's path regex."""
        groups: set[str] = set()
        if path_regex is not None:
            groups = set(re2.compile(path_regex).groupindex)
        for i, part in enumerate(self.parts):
            for name in placeholders(part.path):
                if name not in groups:
                    where = (
                        "match.path_regex has no group (?P<" + name + ">...)"
                        if path_regex is not None
                        else "needs a match.path_regex with a group (?P<" + name + ">...)"
                    )
                    raise ValueError(f"aggregate.parts[{i}].path: {{{name}}} {where}")

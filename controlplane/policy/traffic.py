"""Traffic policy of a route beyond match and action: how requests are spread, delayed,
rewritten, cached and compressed.

* ``hash_on``: consistent-hash keys (header, cookie, client IP, query parameter) for
  clusters balanced with ``ring_hash`` or ``maglev``: one client keeps reaching one endpoint.
* ``fault``: injected delays and aborts, a percentage of requests each, to test clients.
* ``request_query``: query parameters added or removed before the request is forwarded.
* ``request_body`` / ``response_body``: JSON bodies with top-level fields renamed or removed,
  or the whole body wrapped in an object.
* ``cache``: responses to GET/HEAD kept by the gateway, per consumer if asked.
* ``compression`` (route and gateway): gzip, brotli or zstd responses.

Header values may draw on the request: ``%consumer%``, ``%claim.NAME%``, ``%header.NAME%``;
``%%`` is a literal ``%`` (see :func:`header_template`).
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from .bounds import UINT32_MAX, ByteCount, IntRange, Percent, ResponseStatus
from .common import Duration, PolicyModel

__all__ = [
    "BodyTransform",
    "CachePolicy",
    "Compression",
    "CompressionAlgorithm",
    "Fault",
    "FaultAbort",
    "FaultDelay",
    "HashCookie",
    "HashKey",
    "QueryOps",
    "check_cache_combination",
    "header_template",
]

_HEADER = re.compile(r"^[a-z0-9!#$&'*+.^_`|~-]+$")
_CLAIM = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
_PLACEHOLDER = re.compile(r"%([^%\s]*)%")
_QUERY_NAME = re.compile(r"^[A-Za-z0-9._~-]+$")
_JSON_KEY = re.compile(r'^[^"\\\x00-\x1f]+$')


def header_template(value: str) -> list[tuple[str, str]]:
    """Split a header value into ``("text", s)`` and ``(kind, name)`` parts.

    Kinds are ``consumer``, ``claim`` (a JWT claim; dots name nested claims) and ``header``
    (a request header). Anything else between ``%`` signs is refused, so a typo cannot
    reach Envoy as a formatter it would reject (or, worse, accept with another meaning).
    """
    parts: list[tuple[str, str]] = []
    i = 0
    text = ""
    while i < len(value):
        c = value[i]
        if c != "%":
            text += c
            i += 1
            continue
        if value.startswith("%%", i):
            text += "%"
            i += 2
            continue
        m = _PLACEHOLDER.match(value, i)
        if m is None:
            raise ValueError(
                f"{value!r}: a '%' must start %consumer%, %claim.NAME% or %header.NAME% "
                "(write %% for a literal %)"
            )
        token = m.group(1)
        if token == "consumer":
            part = ("consumer", "")
        elif token.startswith("claim.") and _CLAIM.match(token[6:]):
            part = ("claim", token[6:])
        elif token.startswith("header.") and _HEADER.match(token[7:].lower()):
            part = ("header", token[7:].lower())
        else:
            raise ValueError(
                f"{value!r}: unknown placeholder %{token}% (use %consumer%, %claim.NAME%, "
                "%header.NAME%, or %% for a literal %)"
            )
        if text:
            parts.append(("text", text))
            text = ""
        parts.append(part)
        i = m.end()
    if text:
        parts.append(("text", text))
    return parts


class HashCookie(PolicyModel):
    """Hash on a cookie; with ``ttl`` Envoy sets it when the client has none (sticky)."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
    ttl: Duration | None = None
    path: str | None = Field(None, pattern=r"^/")


class HashKey(PolicyModel):
    """One consistent-hash key; the first one a request has decides (``header`` ...)."""

    header: str | None = None
    cookie: HashCookie | None = None
    source_ip: bool | None = None
    query_parameter: str | None = Field(None, min_length=1)

    @field_validator("header")
    @classmethod
    def _header(cls, value: str | None) -> str | None:
        if value is not None and not _HEADER.match(value.lower()):
            raise ValueError(f"{value!r} is not a valid HTTP header name")
        return value.lower() if value is not None else None

    @model_validator(mode="after")
    def _one(self) -> HashKey:
        given = [
            f for f in ("header", "cookie", "source_ip", "query_parameter") if getattr(self, f)
        ]
        if len(given) != 1:
            raise ValueError(
                f"set exactly one of header, cookie, source_ip, query_parameter (got {len(given)})"
            )
        return self


class FaultDelay(PolicyModel):
    duration: Duration
    percent: Percent = 100


class FaultAbort(PolicyModel):
    status: ResponseStatus = 503
    percent: Percent = 100


class Fault(PolicyModel):
    """Injected faults: a delay and/or an abort, each for a percentage of requests."""

    delay: FaultDelay | None = None
    abort: FaultAbort | None = None

    @model_validator(mode="after")
    def _some(self) -> Fault:
        if self.delay is None and self.abort is None:
            raise ValueError("set delay, abort or both")
        return self


class QueryOps(PolicyModel):
    """Query parameters: ``set`` replaces (or adds), ``add`` appends, ``remove`` deletes."""

    set: dict[str, str] = Field(default_factory=dict)
    add: dict[str, str] = Field(default_factory=dict)
    remove: list[str] = Field(default_factory=list)

    @field_validator("set", "add")
    @classmethod
    def _pairs(cls, value: dict[str, str]) -> dict[str, str]:
        for key, item in value.items():
            _query_name(key)
            if any(c in item for c in "&#\r\n\0 "):
                raise ValueError(f"value of {key!r} cannot contain '&', '#', spaces or controls")
        return value

    @field_validator("remove")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        return [_query_name(v) for v in value]


def _query_name(name: str) -> str:
    if not _QUERY_NAME.match(name):
        raise ValueError(f"{name!r} is not a plain query parameter name (letters, digits, ._~-)")
    return name


class BodyTransform(PolicyModel):
    """A JSON object body changed at its top level: ``rename`` and ``remove`` fields, then
    ``wrap`` the result as ``{WRAP: body}``. Bodies that are not a JSON object pass as they
    are, except for ``wrap`` which applies to any JSON value."""

    rename: dict[str, str] = Field(default_factory=dict)
    remove: list[str] = Field(default_factory=list)
    wrap: str | None = None
    max_bytes: Annotated[int, IntRange(1, 16 * 1_048_576)] = Field(
        1_048_576, description="larger bodies pass unchanged"
    )

    @field_validator("rename")
    @classmethod
    def _rename(cls, value: dict[str, str]) -> dict[str, str]:
        for key, new in value.items():
            _json_key(key)
            _json_key(new)
        if len(set(value.values())) != len(value):
            raise ValueError("two fields cannot be renamed to the same name")
        return value

    @field_validator("remove")
    @classmethod
    def _remove(cls, value: list[str]) -> list[str]:
        return [_json_key(v) for v in value]

    @field_validator("wrap")
    @classmethod
    def _wrap(cls, value: str | None) -> str | None:
        return _json_key(value) if value is not None else None

    @model_validator(mode="after")
    def _some(self) -> BodyTransform:
        if not self.rename and not self.remove and self.wrap is None:
            raise ValueError("set rename, remove or wrap")
        both = set(self.rename) & set(self.remove)
        if both:
            raise ValueError(f"{sorted(both)[0]!r} is both renamed and removed")
        return self


def _json_key(name: str) -> str:
    if not name or not _JSON_KEY.match(name):
        raise ValueError(f"{name!r}: field names must be non-empty, without quotes or backslashes")
    return name


class CachePolicy(PolicyModel):
    """Responses to GET and HEAD kept by each Envoy, in memory.

    Without ``ttl`` only responses the backend marks cacheable (``Cache-Control: max-age``,
    ``Expires``) are kept; ``ttl`` gives responses without Cache-Control that lifetime
    (``override`` applies it to every response). ``per_consumer`` keys entries by the caller
    (``x-consumer-id``) so one customer never sees another's response. ``generation`` is
    part of every key: raising it (``gatewayctl cache purge``) makes earlier entries
    unreachable.
    """

    ttl: Duration | None = None
    override: bool = False
    per_consumer: bool = False
    generation: Annotated[int, IntRange(0, UINT32_MAX)] = 0

    @model_validator(mode="after")
    def _override_needs_ttl(self) -> CachePolicy:
        if self.override and self.ttl is None:
            raise ValueError("override: needs a ttl")
        return self


#: route settings a cache fill would skip: Envoy's cache fetches a miss itself, past the
#: router's per-route changes, so a cached GET and an uncached POST would differ
_NOT_WITH_CACHE = (
    "prefix_rewrite",
    "regex_rewrite",
    "host_rewrite",
    "retries",
    "request_headers",
    "response_headers",
    "request_body",
    "response_body",
)


def check_cache_combination(route: object) -> None:
    """Refuse a cache policy together with settings its cache fills would not apply."""
    if getattr(route, "cache", None) is None:
        return
    for field in _NOT_WITH_CACHE:
        if getattr(route, field, None) is not None:
            raise ValueError(
                f"cache: cannot be combined with {field} (a cache miss is fetched by Envoy's "
                "cache itself, which skips the route's own changes)"
            )


class CompressionAlgorithm(StrEnum):
    gzip = "gzip"
    brotli = "brotli"
    zstd = "zstd"


class Compression(PolicyModel):
    """Responses compressed with the first algorithm (in this order) the client accepts."""

    algorithms: list[CompressionAlgorithm] = Field(
        default_factory=lambda: [CompressionAlgorithm.gzip]
    )
    min_length: ByteCount = Field(1024, description="smaller responses are sent as they are")
    content_types: list[str] = Field(
        default_factory=list, description="empty: Envoy's list of text and JSON types"
    )

    @field_validator("algorithms")
    @classmethod
    def _algorithms(cls, value: list[CompressionAlgorithm]) -> list[CompressionAlgorithm]:
        if not value:
            raise ValueError("name at least one algorithm")
        if len(set(value)) != len(value):
            raise ValueError("each algorithm may appear once")
        return value

    @field_validator("content_types")
    @classmethod
    def _types(cls, value: list[str]) -> list[str]:
        for item in value:
            if not re.match(r"^[a-z0-9.+-]+/[a-z0-9.+*-]+$", item):
                raise ValueError(f"{item!r} is not a media type such as application/json")
        return value

"""A route: which requests (match) go where (action), and what happens on the way.

Order is predictable: higher ``priority`` first; within a priority, exact paths before
regexes before prefixes, longer paths before shorter ones, then the route with more header
and query conditions, then the name. See :func:`controlplane.translate.route.sort_key`.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, ClassVar

from pydantic import Field, field_validator, model_validator

from .aggregate import Aggregate
from .auth import AuthPolicy
from .bounds import UINT32_MAX, HttpStatus, IntRange, Port, ResponseStatus, Weight
from .common import Duration, Hostname, Name, PolicyModel, Regex
from .cors import CorsPolicy
from .edge import BodyLimit, ClientCertRule, ExtAuthz, IpRules
from .headers import (
    check_no_controls,
    host_value,
    path_value,
    request_header_target,
    response_header_target,
)
from .proto import Proto, Transcoding
from .ratelimit import RateLimit
from .traffic import (
    BodyTransform,
    CachePolicy,
    Fault,
    HashKey,
    QueryOps,
    check_cache_combination,
    header_template,
)

__all__ = [
    "DirectResponse",
    "HeaderMatch",
    "HeaderOps",
    "Method",
    "QueryMatch",
    "Redirect",
    "RegexRewrite",
    "RequestHeaderOps",
    "Retry",
    "Route",
    "RouteMatch",
    "WeightedBackend",
]

_HEADER_NAME_RE = re.compile(r"^:?[a-z0-9!#$%&'*+.^_`|~-]+$")
_RETRY_ON = {
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "envoy-ratelimited",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
}


def _header_name(value: str) -> str:
    value = value.lower()
    if not _HEADER_NAME_RE.match(value):
        raise ValueError(f"{value!r} is not a valid HTTP header name")
    return value


def _mutable_header(value: str) -> str:
    """A header a route may remove: Envoy refuses edits of pseudo-headers and ``host``."""
    return response_header_target(value)


#: Envoy refuses a header value longer than this (HeaderValue.value, max_bytes)
HEADER_VALUE_MAX_BYTES = 16384


def _header_value(value: str) -> str:
    check_no_controls(value, "header value")
    if len(value.encode()) > HEADER_VALUE_MAX_BYTES:
        raise ValueError(
            f"a header value may be at most {HEADER_VALUE_MAX_BYTES} bytes (Envoy's limit)"
        )
    header_template(value)  # placeholders are known, a literal % is written %%
    return value


class Method(StrEnum):
    GET = "GET"
    HEAD = "HEAD"
    POST = "POST"
    PUT = "PUT"
    PATCH = "PATCH"
    DELETE = "DELETE"
    OPTIONS = "OPTIONS"
    CONNECT = "CONNECT"
    TRACE = "TRACE"


def _exactly_one(model: PolicyModel, fields: tuple[str, ...], what: str) -> str:
    given = [f for f in fields if getattr(model, f) is not None]
    if len(given) != 1:
        names = ", ".join(fields)
        raise ValueError(f"{what}: set exactly one of {names} (got {len(given)})")
    return given[0]


class HeaderMatch(PolicyModel):
    """A request header condition: exact value, prefix, RE2 regex, or mere presence."""

    name: str
    exact: str | None = None
    prefix: str | None = Field(None, min_length=1)
    regex: Regex | None = None
    present: bool | None = None
    invert: bool = False

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _header_name(value)

    @model_validator(mode="after")
    def _one(self) -> HeaderMatch:
        _exactly_one(self, ("exact", "prefix", "regex", "present"), f"header {self.name!r}")
        return self


class QueryMatch(PolicyModel):
    """A query-parameter condition: exact value, RE2 regex, or mere presence."""

    name: str = Field(min_length=1)
    exact: str | None = None
    regex: Regex | None = None
    present: bool | None = None

    @model_validator(mode="after")
    def _one(self) -> QueryMatch:
        _exactly_one(self, ("exact", "regex", "present"), f"query parameter {self.name!r}")
        return self


class RouteMatch(PolicyModel):
    """What a request must look like; one path condition plus optional method/header/query."""

    path: str | None = Field(None, description="exact path")
    path_prefix: str | None = None
    path_regex: Regex | None = Field(None, description="RE2 regex over the whole path")
    methods: list[Method] = Field(default_factory=list)
    headers: list[HeaderMatch] = Field(default_factory=list)
    query: list[QueryMatch] = Field(default_factory=list)

    @field_validator("path", "path_prefix")
    @classmethod
    def _starts_with_slash(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError(f"{value!r} must start with '/'")
        return path_value(value)

    @field_validator("methods")
    @classmethod
    def _unique_methods(cls, value: list[Method]) -> list[Method]:
        return sorted(set(value))

    @model_validator(mode="before")
    @classmethod
    def _default_prefix(cls, data: Any) -> Any:
        if isinstance(data, dict) and not any(
            data.get(k) is not None for k in ("path", "path_prefix", "path_regex")
        ):
            data = {**data, "path_prefix": "/"}
        return data

    @model_validator(mode="after")
    def _one_path(self) -> RouteMatch:
        _exactly_one(self, ("path", "path_prefix", "path_regex"), "match")
        return self


class WeightedBackend(PolicyModel):
    cluster: Name
    weight: Weight


class RegexRewrite(PolicyModel):
    pattern: Regex
    substitution: str


class Retry(PolicyModel):
    """Retries on the conditions named in ``retry_on`` (Envoy's x-envoy-retry-on values)."""

    attempts: Annotated[int, IntRange(1, 10)] = 1
    retry_on: list[str] = Field(default_factory=lambda: ["5xx", "connect-failure", "reset"])
    per_try_timeout: Duration | None = None
    retriable_status_codes: list[HttpStatus] = Field(default_factory=list)

    @field_validator("retry_on")
    @classmethod
    def _conditions(cls, value: list[str]) -> list[str]:
        for cond in value:
            if cond not in _RETRY_ON:
                known = ", ".join(sorted(_RETRY_ON))
                raise ValueError(f"{cond!r} is not a retry condition ({known})")
        if not value:
            raise ValueError("name at least one condition")
        return value

    @model_validator(mode="after")
    def _status_codes_need_condition(self) -> Retry:
        if self.retriable_status_codes and "retriable-status-codes" not in self.retry_on:
            raise ValueError(
                "retriable_status_codes: only used when retry_on includes retriable-status-codes"
            )
        return self


class HeaderOps(PolicyModel):
    """Header changes: ``set`` overwrites, ``add`` appends, ``remove`` deletes."""

    set: dict[str, str] = Field(default_factory=dict)
    add: dict[str, str] = Field(default_factory=dict)
    remove: list[str] = Field(default_factory=list)

    @field_validator("set", "add")
    @classmethod
    def _valid_pairs(cls, value: dict[str, str]) -> dict[str, str]:
        return {cls._target(k): _header_value(v) for k, v in value.items()}

    @field_validator("remove")
    @classmethod
    def _valid_names(cls, value: list[str]) -> list[str]:
        return [_mutable_header(v) for v in value]

    @staticmethod
    def _target(name: str) -> str:
        return response_header_target(name)


class RequestHeaderOps(HeaderOps):
    """Request header changes; headers the gateway owns (the consumer identity, credentials,
    forwarding and x-envoy-/x-gateway- headers) cannot be set or added."""

    @staticmethod
    def _target(name: str) -> str:
        return request_header_target(name)


class Redirect(PolicyModel):
    scheme: str | None = Field(None, pattern=r"^(http|https)$")
    host: str | None = None
    port: Port | None = None
    path: str | None = Field(None, pattern=r"^/")
    prefix_rewrite: str | None = None
    status: ResponseStatus = Field(302, description="301, 302, 303, 307 or 308")
    strip_query: bool = False

    @field_validator("host")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        return None if value is None else host_value(value, port=False)

    @field_validator("path", "prefix_rewrite")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        return path_value(value)

    @field_validator("status")
    @classmethod
    def _status(cls, value: int) -> int:
        if value not in (301, 302, 303, 307, 308):
            raise ValueError("must be 301, 302, 303, 307 or 308")
        return value


class DirectResponse(PolicyModel):
    status: ResponseStatus
    body: str | None = Field(None, max_length=4096)


class Route(PolicyModel):
    """Match plus one action: ``cluster``, ``backends``, ``redirect``, ``direct_response``
    or ``aggregate``."""

    kind: ClassVar[str] = "route"

    name: Name
    gateways: list[Name] = Field(min_length=1)
    hosts: list[Hostname] = Field(default_factory=list)
    match: RouteMatch = Field(default_factory=lambda: RouteMatch(path_prefix="/"))
    priority: Annotated[int, IntRange(-1000, 1000)] = Field(0, description="higher wins; default 0")
    cluster: Name | None = None
    backends: list[WeightedBackend] | None = Field(
        None, min_length=1, description="weighted clusters, e.g. a 90/10 canary"
    )
    redirect: Redirect | None = None
    direct_response: DirectResponse | None = None
    aggregate: Aggregate | None = Field(
        None, description="call several clusters in parallel, answer one JSON object"
    )
    prefix_rewrite: str | None = None
    regex_rewrite: RegexRewrite | None = None
    host_rewrite: str | None = None
    timeout: Duration | None = None
    idle_timeout: Duration | None = None
    retries: Retry | None = None
    request_headers: RequestHeaderOps | None = None
    response_headers: HeaderOps | None = None
    auth: AuthPolicy | None = Field(
        None, description="who may call; unset: the gateway's default; {}: anyone"
    )
    cors: CorsPolicy | None = Field(None, description="unset: the gateway's CORS policy")
    rate_limit: RateLimit | None = Field(
        None, description="unset: the gateway's rate limit; {key: none}: no limit"
    )
    hash_on: list[HashKey] = Field(
        default_factory=list, description="consistent-hash keys (ring_hash/maglev clusters)"
    )
    fault: Fault | None = Field(None, description="injected delays and aborts, for testing")
    request_query: QueryOps | None = None
    request_body: BodyTransform | None = Field(None, description="JSON request body changes")
    response_body: BodyTransform | None = Field(None, description="JSON response body changes")
    cache: CachePolicy | None = Field(None, description="response caching for GET and HEAD")
    compression: bool | None = Field(
        None, description="unset: the gateway's setting; false: never compress this route"
    )
    grpc_timeout_max: Duration | None = Field(
        None, description="honour the client's grpc-timeout header, up to this long"
    )
    transcoding: Transcoding | None = Field(
        None, description="JSON/REST -> gRPC with the services of a proto"
    )
    grpc_web: bool = Field(False, description="accept gRPC-Web (browsers) besides native gRPC")
    websocket: bool = Field(False, description="allow WebSocket upgrades (idle_timeout applies)")
    ip_rules: IpRules | None = Field(
        None, description="client addresses allowed/denied here, besides the gateway's (403)"
    )
    max_request_body: BodyLimit | None = Field(
        None, description="request body limit in bytes (413); unset: the gateway's"
    )
    ext_authz: ExtAuthz | None = Field(
        None, description="ask an authorization service about every request (ext_authz)"
    )
    client_cert: ClientCertRule | None = Field(
        None, description="only clients with a verified certificate (these names) (403)"
    )

    @model_validator(mode="before")
    @classmethod
    def _gateway_shorthand(cls, data: Any) -> Any:
        if isinstance(data, dict) and "gateway" in data:
            data = dict(data)
            single = data.pop("gateway")
            if "gateways" in data:
                raise ValueError("set either gateway or gateways, not both")
            data["gateways"] = [single]
        return data

    @field_validator("host_rewrite")
    @classmethod
    def _host_rewrite(cls, value: str | None) -> str | None:
        return None if value is None else host_value(value)

    @field_validator("prefix_rewrite")
    @classmethod
    def _prefix_rewrite(cls, value: str | None) -> str | None:
        return path_value(value)

    @field_validator("gateways", "hosts")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("names must be unique")
        return value

    @model_validator(mode="after")
    def _action(self) -> Route:
        action = _exactly_one(
            self, ("cluster", "backends", "redirect", "direct_response", "aggregate"), "action"
        )
        forwards = action in ("cluster", "backends")
        for field in (
            *("prefix_rewrite", "regex_rewrite", "host_rewrite", "retries", "timeout"),
            *("fault", "request_query", "request_body", "response_body", "cache"),
            *("grpc_timeout_max", "transcoding"),
        ):
            if getattr(self, field) is not None and not forwards:
                raise ValueError(f"{field}: only applies to routes that forward to a cluster")
        if self.hash_on and not forwards:
            raise ValueError("hash_on: only applies to routes that forward to a cluster")
        check_cache_combination(self)
        if self.backends is not None:
            names = [b.cluster for b in self.backends]
            if len(set(names)) != len(names):
                raise ValueError("backends: each cluster may appear once")
            total = sum(b.weight for b in self.backends)
            if total <= 0:
                raise ValueError("backends: weights must add up to more than zero")
            if total > UINT32_MAX:  # Envoy adds them up in a uint32
                raise ValueError(f"backends: weights must add up to at most {UINT32_MAX}")
        if self.aggregate is not None:
            self.aggregate.check_placeholders(self.match.path_regex)
        for flag in ("grpc_web", "websocket"):
            if getattr(self, flag) and not forwards:
                raise ValueError(f"{flag}: only applies to routes that forward to a cluster")
        if self.transcoding is not None and (self.prefix_rewrite or self.regex_rewrite):
            # the transcoder has already set the path to /package.Service/Method
            raise ValueError("transcoding: cannot be combined with prefix_rewrite/regex_rewrite")
        if self.prefix_rewrite is not None and self.regex_rewrite is not None:
            raise ValueError("set either prefix_rewrite or regex_rewrite, not both")
        if self.prefix_rewrite is not None and self.match.path_regex is not None:
            raise ValueError("prefix_rewrite: needs a path or path_prefix match; use regex_rewrite")
        return self

    def clusters(self) -> list[str]:
        """Clusters this route sends traffic to."""
        if self.cluster is not None:
            return [self.cluster]
        if self.aggregate is not None:
            return self.aggregate.clusters()
        return [b.cluster for b in self.backends or []]

    def references(self) -> list[tuple[str, str]]:
        refs = [("gateway", g) for g in self.gateways] + [("cluster", c) for c in self.clusters()]
        if self.transcoding is not None:
            refs.append(("proto", self.transcoding.proto))
        if self.ext_authz is not None and self.ext_authz.cluster not in self.clusters():
            refs.append(("cluster", self.ext_authz.cluster))
        return refs + (self.auth.references() if self.auth else [])

    def reference_problem(self, kind: str, target: PolicyModel) -> str | None:
        """A problem with an object this route references beyond its existence."""
        if kind == "proto" and self.transcoding is not None and isinstance(target, Proto):
            return self.transcoding.problem_with(target)
        authz = self.ext_authz
        if (
            kind == "cluster"
            and authz is not None
            and authz.protocol == "grpc"
            and getattr(target, "name", None) == authz.cluster
            and getattr(target, "protocol", None) != "http2"
        ):
            return (
                f"ext_authz.cluster: cluster {authz.cluster!r} must have protocol "
                "http2 for a gRPC authorization service"
            )
        return None

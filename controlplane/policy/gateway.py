"""A gateway: one listener that a group of Envoys serves.

Envoys pick their gateway by ``node.cluster``, so every replica of a gateway gets the same
configuration and several gateways can reuse a port on different hosts.
"""

from __future__ import annotations

import ipaddress
import re
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from .auth import AuthPolicy
from .bounds import Port
from .certificate import GatewayTls
from .common import Hostname, Name, PolicyModel
from .cors import CorsPolicy
from .edge import BodyLimit, ClientAddress, IpRules, Limits
from .headers import API_KEY_HEADER, header_name, reserved_reason
from .observability import AccessLog, Analytics, Tracing
from .ratelimit import RateLimit
from .traffic import Compression

__all__ = ["Gateway"]

#: a query parameter name as clients write it unencoded (RFC 3986 unreserved characters)
_QUERY_NAME = re.compile(r"^[A-Za-z0-9._~-]{1,64}$")


class Gateway(PolicyModel):
    """A listener (address and port) and the host names it answers for."""

    kind: ClassVar[str] = "gateway"

    name: Name
    port: Port = Field(description="TCP port of the listener")
    address: str = Field("0.0.0.0", description="IP address the listener binds")
    hostnames: list[Hostname] = Field(
        default_factory=list,
        description="Host names this gateway answers for; empty means any host",
    )
    auth: AuthPolicy | None = Field(
        None, description="default for routes that set no auth; unset: open to anyone"
    )
    cors: CorsPolicy | None = Field(None, description="default CORS policy of its routes")
    rate_limit: RateLimit | None = Field(None, description="default rate limit of its routes")
    rate_limit_mode: Literal["local", "shared"] = Field(
        "local",
        description="how minute and hour budgets hold across the gateway's Envoys: local "
        "(each Envoy enforces budget / connected Envoys) or shared (the controller's quota "
        "service leases the budget to each Envoy from its usage reports; exact whatever the "
        "split of traffic). Per-second limits are always local; day/week/month quotas always "
        "go through the quota service",
    )
    tls: GatewayTls | None = Field(None, description="serve HTTPS on the port; unset: plain HTTP")
    compression: Compression | None = Field(
        None, description="compress responses of its routes (a route may opt out)"
    )
    access_log: AccessLog | None = Field(None, description="one line per request on stdout")
    analytics: Analytics | None = Field(None, description="usage analytics (rollups in the db)")
    tracing: Tracing | None = Field(
        None, description="OpenTelemetry tracing of a sample of requests (OTLP/gRPC)"
    )
    aggregation_port: Port = Field(
        18081,
        description="port of the internal listener aggregate routes call their parts through "
        "(opened only when the gateway has aggregate routes)",
    )
    escaped_slashes: Literal["redirect", "reject"] = Field(
        "redirect",
        description="paths with %2F or %5C (encoded / and \\): redirect to the decoded, "
        "normalised path (routed again, so it meets that path's authentication), or refuse "
        "with 400; never forwarded encoded to a route chosen on the encoded form",
    )
    path_semicolons: Literal["reject", "allow"] = Field(
        "reject",
        description="paths with ';' or %3B (path parameters, which many backends strip before "
        "routing): refused with 400, or allowed (then every backend must read them as Envoy "
        "matches them: as part of the segment)",
    )
    underscore_headers: Literal["reject", "drop"] = Field(
        "reject",
        description="request headers with '_' in their name (CGI/WSGI backends read "
        "x_consumer_id as x-consumer-id): the request refused with 400 (Envoy's edge "
        "recommendation), or the headers dropped before any filter sees them",
    )

    client_address: ClientAddress | None = Field(
        None,
        description="which address is the client's (IP rules, rate limits by client_ip, "
        "analytics); unset: the TCP peer, X-Forwarded-For never believed",
    )
    ip_rules: IpRules | None = Field(
        None, description="client addresses allowed/denied on every route (403)"
    )
    limits: Limits = Field(
        default_factory=Limits, description="request size and timeout limits (safe defaults)"
    )
    max_request_body: BodyLimit | None = Field(
        None,
        description="default request body limit of its routes in bytes (413); unset: none",
    )

    api_key_header: str = Field(
        API_KEY_HEADER,
        description="request header clients send API keys in (routes with auth.api_key); "
        "removed before the request reaches a backend",
    )
    api_key_query: str | None = Field(
        None,
        description="also accept API keys in this query parameter (for clients that cannot "
        "set headers); removed from the path before the backend, the access log and "
        "analytics see it; unset: header only",
    )

    @field_validator("api_key_header")
    @classmethod
    def _key_header(cls, value: str) -> str:
        name = header_name(value)
        reason = None if name == API_KEY_HEADER else reserved_reason(name)
        if reason:
            raise ValueError(f"{value!r} is reserved: {reason}")
        return name

    @field_validator("api_key_query")
    @classmethod
    def _key_query(cls, value: str | None) -> str | None:
        if value is not None and not _QUERY_NAME.match(value):
            raise ValueError(
                f"{value[:40]!r} is not a query parameter name: 1-64 letters, digits, "
                "'.', '_', '~' or '-'"
            )
        return value

    @field_validator("address")
    @classmethod
    def _address_is_ip(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address") from None

    @field_validator("hostnames")
    @classmethod
    def _unique_hostnames(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("host names must be unique")
        return value

    @model_validator(mode="after")
    def _redirect_port(self) -> Gateway:
        if self.tls is not None and self.tls.http_redirect_port == self.port:
            raise ValueError("tls.http_redirect_port: must differ from the gateway's port")
        if self.aggregation_port == self.port or (
            self.tls is not None and self.aggregation_port == self.tls.http_redirect_port
        ):
            raise ValueError("aggregation_port: must differ from the gateway's other ports")
        return self

    def references(self) -> list[tuple[str, str]]:
        refs = self.auth.references() if self.auth else []
        return refs + (self.tls.references() if self.tls else [])

"""JWT providers: who may issue tokens the gateway accepts, and how Envoy checks them."""

from __future__ import annotations

import ipaddress
import re
from typing import ClassVar
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from .common import Duration, Name, PolicyModel
from .headers import check_no_controls, header_name, request_header_target
from .jwks import check_jwks

__all__ = ["JwtProvider", "TokenHeader"]

#: a claim name as Envoy's claim_to_headers and the RBAC metadata path read it
_CLAIM_RE = re.compile(r"^[A-Za-z0-9_.:/-]{1,128}$")
#: a DNS name Envoy connects to (no wildcard, no '_')
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_DNS_NAME_RE = re.compile(rf"^{_LABEL}(\.{_LABEL})*\.?$")
#: query parameters and cookies the token may be read from
_TOKEN_PLACE_RE = re.compile(r"^[A-Za-z0-9!#$&'*+.^_`|~-]{1,128}$")


def _check_url(value: str, what: str, *, fetched: bool = False) -> str:
    """An http(s) URL; ``fetched`` (Envoy connects to it): its host a DNS name or an IP
    address and its port not 0 - Envoy refuses a host such as ``exa_mple.com`` ("has an
    invalid URI") when it loads the provider."""
    check_no_controls(value, f"the {what} URL")
    port = None
    try:
        parts = urlsplit(value)
        hostname = parts.hostname
        port = parts.port  # raises ValueError on a bad port
    except ValueError:
        hostname = None
    if parts.scheme not in ("http", "https") or not hostname or " " in value:
        raise ValueError(f"{value!r} is not a valid http(s) URL for the {what}")
    if fetched and (port == 0 or not _fetchable_host(hostname)):
        raise ValueError(
            f"{value!r}: the {what} URL needs a host name (letters, digits, '-' and '.') or "
            "an IP address, and a port from 1 to 65535"
        )
    return value


def _fetchable_host(hostname: str) -> bool:
    try:
        ipaddress.ip_address(hostname)
        return True
    except ValueError:
        return len(hostname) <= 253 and bool(_DNS_NAME_RE.match(hostname))


def claim_name(value: str) -> str:
    """A claim name a provider copies or a rule checks."""
    if not _CLAIM_RE.match(value):
        raise ValueError(
            f"{value!r} is not a claim name (1-128 letters, digits, '_', '-', '.', ':', '/')"
        )
    return value


class TokenHeader(PolicyModel):
    """A header carrying the token, with the prefix before it (``Bearer `` by default)."""

    name: str = Field(min_length=1)
    prefix: str = Field("Bearer ", max_length=64)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if value.startswith(":"):
            raise ValueError(f"{value!r}: a token cannot be read from a pseudo-header")
        return header_name(value)

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return check_no_controls(value, "prefix")


class JwtProvider(PolicyModel):
    """Tokens signed by ``issuer``'s keys (inline JWKS or fetched from ``jwks_uri``)."""

    kind: ClassVar[str] = "jwt_provider"

    name: Name
    issuer: str = Field(description="The iss claim tokens must carry (an http(s) URL)")
    audiences: list[str] = Field(default_factory=list, description="Any of these aud values")
    jwks: str | None = Field(None, description="The JSON Web Key Set, inline")
    jwks_uri: str | None = Field(None, description="Where Envoy fetches the JSON Web Key Set")
    jwks_cache_duration: Duration = "300s"
    jwks_fetch_timeout: Duration = "5s"
    headers: list[TokenHeader] = Field(
        default_factory=lambda: [TokenHeader(name="authorization", prefix="Bearer ")]
    )
    query_params: list[str] = Field(default_factory=list)
    cookies: list[str] = Field(default_factory=list)
    clock_skew: Duration = "60s"
    claims_to_headers: dict[str, str] = Field(
        default_factory=dict, description="claim -> request header seen by the backend"
    )
    consumer_claim: str = Field("sub", description="The claim naming the consumer")
    forward_token: bool = Field(False, description="Pass the token on to the backend")
    allow_missing_exp: bool = Field(
        False, description="Accept tokens without an exp claim (they never expire)"
    )

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, value: str) -> str:
        return _check_url(value, "issuer")

    @field_validator("jwks_uri")
    @classmethod
    def _jwks_uri(cls, value: str | None) -> str | None:
        return None if value is None else _check_url(value, "JWKS", fetched=True)

    @field_validator("jwks")
    @classmethod
    def _jwks(cls, value: str | None) -> str | None:
        return None if value is None else check_jwks(value)

    @field_validator("claims_to_headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for claim, header in value.items():
            target = request_header_target(header)
            if target in out.values():
                raise ValueError(f"{target!r} is the target of two claims")
            out[claim_name(claim)] = target
        return out

    @field_validator("consumer_claim")
    @classmethod
    def _consumer_claim(cls, value: str) -> str:
        return claim_name(value)

    @field_validator("query_params", "cookies")
    @classmethod
    def _places(cls, value: list[str]) -> list[str]:
        for item in value:
            if not _TOKEN_PLACE_RE.match(item):
                raise ValueError(f"{item!r} is not a query parameter or cookie name")
        return value

    @field_validator("audiences")
    @classmethod
    def _audiences(cls, value: list[str]) -> list[str]:
        for item in value:
            if not item:
                raise ValueError("an audience cannot be empty")
            check_no_controls(item, "audience")
        return value

    @model_validator(mode="after")
    def _one_key_source(self) -> JwtProvider:
        if (self.jwks is None) == (self.jwks_uri is None):
            raise ValueError("set exactly one of jwks (inline) or jwks_uri")
        if not (self.headers or self.query_params or self.cookies):
            raise ValueError("name at least one place to read the token from")
        return self

"""JWT providers: who may issue tokens the gateway accepts, and how Envoy checks them."""

from __future__ import annotations

import json
from typing import ClassVar
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from .common import Duration, Name, PolicyModel

__all__ = ["JwtProvider", "TokenHeader"]

_KEY_PARAMS = {"RSA": ("n", "e"), "EC": ("crv", "x", "y"), "oct": ("k",), "OKP": ("crv", "x")}


def _check_url(value: str, what: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not a valid http(s) URL for the {what}")
    return value


class TokenHeader(PolicyModel):
    """A header carrying the token, with the prefix before it (``Bearer `` by default)."""

    name: str = Field(min_length=1)
    prefix: str = "Bearer "


class JwtProvider(PolicyModel):
    """Tokens signed by ``issuer``'s keys (inline JWKS or fetched from ``jwks_uri``)."""

    kind: ClassVar[str] = "jwt_provider"

    name: Name
    issuer: str = Field(description="The iss claim tokens must carry (an http(s) URL)")
    audiences: list[str] = Field(default_factory=list, description="Any of these aud values")
    jwks: str | None = Field(None, description="The JSON Web Key Set, inline")
    jwks_uri: str | None = Field(None, description="Where Envoy fetches the JSON Web Key Set")
    jwks_cache_duration: Duration = "5m"
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

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, value: str) -> str:
        return _check_url(value, "issuer")

    @field_validator("jwks_uri")
    @classmethod
    def _jwks_uri(cls, value: str | None) -> str | None:
        return None if value is None else _check_url(value, "JWKS")

    @field_validator("jwks")
    @classmethod
    def _jwks(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            data = json.loads(value)
        except ValueError as exc:
            raise ValueError(f"is not JSON: {exc}") from None
        keys = data.get("keys") if isinstance(data, dict) else None
        if not isinstance(keys, list) or not keys:
            raise ValueError('must be a JSON Web Key Set: {"keys": [...]} with at least one key')
        for i, key in enumerate(keys):
            kty = key.get("kty") if isinstance(key, dict) else None
            if kty not in _KEY_PARAMS:
                raise ValueError(f"keys[{i}]: kty must be one of {', '.join(_KEY_PARAMS)}")
            missing = [p for p in _KEY_PARAMS[kty] if not key.get(p)]
            if missing:
                raise ValueError(f"keys[{i}]: a {kty} key needs {', '.join(missing)}")
        return value

    @field_validator("claims_to_headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        from .route import _mutable_header

        return {claim: _mutable_header(header) for claim, header in value.items()}

    @model_validator(mode="after")
    def _one_key_source(self) -> JwtProvider:
        if (self.jwks is None) == (self.jwks_uri is None):
            raise ValueError("set exactly one of jwks (inline) or jwks_uri")
        if not (self.headers or self.query_params or self.cookies):
            raise ValueError("name at least one place to read the token from")
        return self

"""CORS: which browser origins may call, answered by Envoy (preflights never reach backends)."""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from .common import Duration, PolicyModel
from .headers import header_name

__all__ = ["CorsPolicy"]

_METHOD = re.compile(r"^[A-Z]{1,20}$")
_ORIGIN = re.compile(r"^(https?)://(\*\.)?[a-z0-9.-]+(:\d{1,5})?$")


class CorsPolicy(PolicyModel):
    """Origins are exact (``https://app.example.com``) or one-level wildcards
    (``https://*.example.com``); ``*`` alone allows any origin (not with credentials)."""

    allow_origins: list[str] = Field(min_length=1)
    allow_methods: list[str] = Field(
        default_factory=lambda: ["GET", "POST", "PUT", "PATCH", "DELETE"]
    )
    allow_headers: list[str] = Field(default_factory=lambda: ["authorization", "content-type"])
    expose_headers: list[str] = Field(default_factory=list)
    allow_credentials: bool = False
    max_age: Duration | None = None

    @field_validator("allow_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        out = []
        for origin in value:
            origin = origin.lower().rstrip("/")
            if origin != "*" and not _ORIGIN.match(origin):
                raise ValueError(
                    f"{origin!r} is not an origin like https://app.example.com or "
                    "https://*.example.com"
                )
            out.append(origin)
        return out

    @field_validator("allow_methods")
    @classmethod
    def _methods(cls, value: list[str]) -> list[str]:
        out = [m.upper() for m in value]
        for method in out:
            if not _METHOD.match(method):
                raise ValueError(f"{method!r} is not an HTTP method")
        return out

    @field_validator("allow_headers", "expose_headers")
    @classmethod
    def _headers(cls, value: list[str]) -> list[str]:
        return [h if h == "*" else header_name(h) for h in value]

    @model_validator(mode="after")
    def _credentials(self) -> CorsPolicy:
        if self.allow_credentials and "*" in self.allow_origins:
            raise ValueError("allow_credentials cannot be used with the origin '*'")
        return self

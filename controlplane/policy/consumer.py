"""Consumers (who calls) and their API keys.

A caller is one consumer whichever way it authenticates: by API key (the key's consumer) or
by JWT (the provider's ``consumer_claim``, ``sub`` by default, names the consumer).
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime
from typing import Any, ClassVar

from pydantic import Field, field_validator, model_validator

from .common import Name, PolicyModel
from .edge import cert_names
from .ratelimit import Limit, TimeZone, check_limits

__all__ = ["ApiKey", "Consumer", "new_api_key"]


class Consumer(PolicyModel):
    kind: ClassVar[str] = "consumer"

    name: Name
    groups: list[Name] = Field(default_factory=list)
    plan: Name | None = Field(None, description="usage plan whose limits apply")
    limits: list[Limit] = Field(
        default_factory=list, description="own limits, replacing the plan's"
    )
    #: the calendar of the consumer's own day/week/month quotas (its plan's has its own)
    time_zone: TimeZone = "UTC"
    certificates: list[str] = Field(
        default_factory=list,
        description="client certificate names (URI SAN, DNS SAN or subject) that identify "
        "this consumer on gateways with client_auth",
    )

    @field_validator("certificates")
    @classmethod
    def _cert_names(cls, value: list[str]) -> list[str]:
        return cert_names(value)

    @field_validator("groups")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        return sorted(set(value))

    _limits = field_validator("limits")(classmethod(lambda cls, v: check_limits(v)))

    def references(self) -> list[tuple[str, str]]:
        return [("plan", self.plan)] if self.plan else []


class ApiKey(PolicyModel):
    """A secret a consumer sends in ``x-api-key`` (or the gateway's ``api_key_source``).
    Managed with ``consumer key ...`` only.

    Keys are not part of the declarative file (``apply``/``export``), so policy files never
    carry secrets; ``name`` is a public id derived from the key, shown in listings.

    A revoked key stays listed (id, consumer, prefix, when) but its secret is erased from
    the database: it is never served again and cannot be restored.
    """

    kind: ClassVar[str] = "api_key"
    #: stored encrypted (store/secrets.py) and never shown after ``consumer key add``
    secret_fields: ClassVar[tuple[str, ...]] = ("key",)

    name: str = Field(pattern=r"^ak_[0-9a-f]{12}$")
    consumer: Name
    key: str | None = Field(
        None, min_length=22, description="at least 128 bits of randomness; erased on revocation"
    )
    expires_at: datetime | None = None
    #: when the key was revoked; a revoked key has no ``key`` any more
    revoked_at: datetime | None = None
    #: the first characters of the key, kept for listings once the key is erased
    revoked_prefix: str | None = Field(None, max_length=8)

    @field_validator("expires_at", "revoked_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value

    @model_validator(mode="after")
    def _key_or_revoked(self) -> ApiKey:
        if self.revoked_at is None and self.key is None:
            raise ValueError("key: required (only a revoked key has none)")
        if self.revoked_at is not None and self.key is not None:
            raise ValueError("key: a revoked key keeps no secret")
        return self

    def references(self) -> list[tuple[str, str]]:
        # a revoked key is a record, not a credential: it does not keep its consumer alive
        return [] if self.revoked else [("consumer", self.consumer)]

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or datetime.now(UTC))

    def usable(self, now: datetime | None = None) -> bool:
        """Served to proxies: neither revoked nor expired."""
        return not self.revoked and not self.expired(now)

    def revoke(self, at: datetime) -> ApiKey:
        """This key, revoked at ``at``: the secret erased, its prefix kept for listings."""
        return self.model_copy(
            update={"key": None, "revoked_at": at, "revoked_prefix": self.prefix}
        )

    @property
    def prefix(self) -> str:
        return self.key[:8] if self.key is not None else (self.revoked_prefix or "")

    def listing(self) -> dict[str, Any]:
        """The key as ``consumer key list`` and ``GET /v1/consumers/{c}/keys`` show it: by
        id and prefix, never the key itself."""
        return {
            "id": self.name,
            "consumer": self.consumer,
            "prefix": self.prefix + "...",
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "expired": self.expired(),
            "revoked": self.revoked,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


def new_api_key(consumer: str, expires_at: datetime | None = None) -> ApiKey:
    """192 random bits, URL-safe; the id is a digest, so it reveals nothing of the key."""
    key = "gw_" + secrets.token_urlsafe(24)
    key_id = "ak_" + hashlib.sha256(key.encode()).hexdigest()[:12]
    return ApiKey(name=key_id, consumer=consumer, key=key, expires_at=expires_at)

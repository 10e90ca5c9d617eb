"""Who may call a route: authentication (JWT, API key, either; or an OpenID browser login)
and authorisation rules."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from .common import Name, PolicyModel

__all__ = ["AuthPolicy"]


class AuthPolicy(PolicyModel):
    """``{}`` means open to anyone. With both ``jwt`` and ``api_key``, either one suffices.

    Failing authentication gives 401 with ``WWW-Authenticate``; failing a rule (scopes,
    claims, consumers, groups) gives 403. Rules combine with AND; the values of one rule
    with OR (any listed consumer), except scopes, which are all required.
    """

    jwt: list[Name] = Field(default_factory=list, description="accepted JWT providers (any)")
    api_key: bool = Field(False, description="accept an API key in x-api-key")
    scopes: list[str] = Field(
        default_factory=list, description="all required, from the scope or scp claim"
    )
    claims: dict[str, list[str]] = Field(
        default_factory=dict, description="claim -> accepted values (JWT only)"
    )
    consumers: list[Name] = Field(default_factory=list, description="allowed consumers")
    groups: list[Name] = Field(default_factory=list, description="allowed consumer groups")
    oidc: Name | None = Field(
        None, description="browser login with this OpenID provider (oidc_provider)"
    )

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, value: list[str]) -> list[str]:
        for scope in value:
            if not scope or any(c.isspace() for c in scope):
                raise ValueError(f"{scope!r} is not a scope (no spaces)")
        return value

    @field_validator("claims")
    @classmethod
    def _claims(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        from .jwt import claim_name

        for claim, values in value.items():
            claim_name(claim)
            if not values:
                raise ValueError(f"{claim!r}: list at least one accepted value")
        return value

    @property
    def public(self) -> bool:
        """Open to anyone: no credential checked by the JWT or API-key filters, and no
        browser login."""
        return not self.jwt and not self.api_key and self.oidc is None

    @property
    def has_rules(self) -> bool:
        return bool(self.scopes or self.claims or self.consumers or self.groups)

    @model_validator(mode="after")
    def _consistent(self) -> AuthPolicy:
        if self.oidc is not None and (self.jwt or self.api_key or self.has_rules):
            raise ValueError(
                "oidc: a browser login stands alone; jwt, api_key and rules (scopes, claims, "
                "consumers, groups) cannot be combined with it"
            )
        if self.public and self.has_rules:
            raise ValueError("rules (scopes, claims, consumers, groups) need jwt or api_key")
        if self.claims and not self.jwt:
            raise ValueError("claims: only JWT callers carry claims; add jwt providers")
        if self.scopes and not self.jwt:
            raise ValueError("scopes: only JWT callers carry scopes; add jwt providers")
        if (self.scopes or self.claims) and self.api_key:
            raise ValueError(
                "scopes and claims cannot be checked for API-key callers; "
                "use consumers or groups, or accept only jwt"
            )
        return self

    def references(self) -> list[tuple[str, str]]:
        return (
            [("jwt_provider", p) for p in self.jwt]
            + [("consumer", c) for c in self.consumers]
            + ([("oidc_provider", self.oidc)] if self.oidc is not None else [])
        )

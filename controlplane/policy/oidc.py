"""OpenID Connect providers: browser login in front of routes (Envoy's oauth2 filter).

A route (or a gateway's default auth) naming a provider sends a browser without a session
to the provider's login page (authorization code flow with PKCE), exchanges the code for
tokens, and keeps them in cookies that Envoy signs (HMAC) and encrypts; the backend gets the
access token as ``Authorization: Bearer``. The client secret is a secret field: encrypted
at rest, never listed, served to Envoy over SDS only.
"""

from __future__ import annotations

import re
from typing import ClassVar
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from .common import Duration, Name, PolicyModel, is_loopback_host
from .headers import check_no_controls
from .jwt import _check_url

__all__ = ["OidcProvider"]

_SCOPE_RE = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]{1,128}$")  # RFC 6749 scope-token
_COOKIE_DOMAIN_RE = re.compile(r"^\.?[A-Za-z0-9-]{1,63}(\.[A-Za-z0-9-]{1,63})*$")
_PATH_RE = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$")


def _https(value: str, what: str, *, fetched: bool = False) -> str:
    """An https URL; plain http only to a loopback host (a provider on the same machine,
    as in a local setup or a test): the code, the tokens and the client secret cross it."""
    _check_url(value, what, fetched=fetched)
    parts = urlsplit(value)
    if parts.scheme != "https" and not is_loopback_host(parts.hostname or ""):
        raise ValueError(f"{value!r}: the {what} must be https (http only to a loopback host)")
    return value


class OidcProvider(PolicyModel):
    """An OpenID provider and this gateway's client registration with it.

    The endpoints are those of the provider's discovery document
    (``<issuer>/.well-known/openid-configuration``).
    """

    kind: ClassVar[str] = "oidc_provider"
    secret_fields: ClassVar[tuple[str, ...]] = ("client_secret",)

    name: Name
    issuer: str = Field(description="The provider's issuer URL (https)")
    authorization_endpoint: str = Field(description="Where browsers are sent to log in")
    token_endpoint: str = Field(description="Where Envoy exchanges the code for tokens")
    end_session_endpoint: str | None = Field(
        None, description="The provider's logout (RP-initiated logout); unset: local logout only"
    )
    client_id: str = Field(min_length=1, max_length=256)
    client_secret: str = Field(
        min_length=1, max_length=1024, description="Secret: encrypted at rest, sent over SDS"
    )
    scopes: list[str] = Field(default_factory=lambda: ["openid", "profile", "email"])
    callback_path: str = Field(
        "/oauth2/callback", description="The redirect URI's path (register it at the provider)"
    )
    logout_path: str = Field("/oauth2/logout", description="Ends the session")
    redirect_origin: str | None = Field(
        None,
        description=(
            "The scheme, host and port browsers use for the gateway (e.g. "
            "https://app.example.com:8443), the redirect URI's origin; unset: the request's "
            "scheme and host without a port (the gateway on 80/443 or behind a proxy)"
        ),
    )
    refresh: bool = Field(True, description="Renew expired tokens with the refresh token")
    forward_access_token: bool = Field(
        True, description="Send the access token to the backend as Authorization: Bearer"
    )
    session_lifetime: Duration = Field(
        "3600s", description="Session length when the provider gives no expires_in"
    )
    token_timeout: Duration = "5s"
    cookie_domain: str | None = Field(None, description="Share the session with subdomains")

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, value: str) -> str:
        return _https(value, "issuer")

    @field_validator("authorization_endpoint", "end_session_endpoint")
    @classmethod
    def _browser_endpoint(cls, value: str | None) -> str | None:
        return None if value is None else _https(value, "endpoint")

    @field_validator("token_endpoint")
    @classmethod
    def _token_endpoint(cls, value: str) -> str:
        return _https(value, "token endpoint", fetched=True)

    @field_validator("client_id", "client_secret")
    @classmethod
    def _printable(cls, value: str) -> str:
        return check_no_controls(value, "client credential")

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, value: list[str]) -> list[str]:
        for scope in value:
            if not _SCOPE_RE.match(scope):
                raise ValueError(f"{scope!r} is not a scope (no spaces, quotes or backslashes)")
        if "openid" not in value:
            raise ValueError("an OpenID Connect login needs the 'openid' scope")
        return value

    @field_validator("callback_path", "logout_path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not _PATH_RE.match(value) or "//" in value or "/../" in value + "/":
            raise ValueError(f"{value!r} is not a plain absolute path")
        return value

    @field_validator("redirect_origin")
    @classmethod
    def _origin(cls, value: str | None) -> str | None:
        if value is None:
            return None
        _check_url(value, "redirect origin")
        parts = urlsplit(value)
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"{value!r}: only scheme://host[:port], the path is callback_path")
        return value.rstrip("/")

    @field_validator("cookie_domain")
    @classmethod
    def _domain(cls, value: str | None) -> str | None:
        if value is not None and not _COOKIE_DOMAIN_RE.match(value):
            raise ValueError(f"{value!r} is not a cookie domain")
        return value

    @model_validator(mode="after")
    def _distinct_paths(self) -> OidcProvider:
        if self.callback_path == self.logout_path:
            raise ValueError("callback_path and logout_path must differ")
        return self

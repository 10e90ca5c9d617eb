"""OpenID Connect browser login: Envoy's oauth2 filter, one instance per provider.

Each provider a gateway's routes use becomes a filter instance ``gateway.oidc.<provider>``,
listed disabled and switched on by the routes that name it (as ext_authz, ADR 0045), so a
route without a login pays nothing. The filter answers its callback and logout paths itself,
but only on a request whose route switched it on: the gateway gets two generated routes per
provider (``oidc:<provider>:callback`` and ``:logout``, exact paths, above every user route)
that do. The token endpoint is a generated cluster ``oidc:<provider>``; the client secret
and the cookie-signing key are SDS secrets (never inline in a listener, so ``render`` and
config dumps do not show them).

The cookie-signing (HMAC) key is derived from the client secret (HKDF, per provider name):
every controller sharing the database derives the same key without storing another secret,
sessions survive controller and Envoy restarts, and rotating the client secret ends every
session, as rotating a signing key should. Envoy encrypts the tokens in the cookies with it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from envoy.config.core.v3 import base_pb2, http_uri_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.http.oauth2.v3 import oauth_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.type.matcher.v3 import path_pb2, string_pb2
from google.protobuf import wrappers_pb2
from google.protobuf.message import Message

from ..policy import OidcProvider, Route
from ..policy.auth import AuthPolicy
from .cluster import url_cluster
from .common import ads_source, duration, pack, switch_on_config
from .edge import lua_string

__all__ = [
    "OIDC_PREFIX",
    "ORIGIN_FILTER",
    "enable_login",
    "hmac_key",
    "login_features",
    "login_origins",
    "login_routes",
    "oauth2_filter",
    "oidc_filter_name",
    "oidc_filters",
    "origin_filter",
    "provider_cluster",
    "provider_secrets",
    "token_cluster_name",
    "used_providers",
]

OIDC_PREFIX = "gateway.oidc."
ORIGIN_FILTER = "gateway.login_origin"
#: above every user route (priorities go up to 1000): the callback and logout always win
_LOGIN_PRIORITY = 1001
_ON = switch_on_config()
_LAX = oauth_pb2.CookieConfig(same_site=oauth_pb2.CookieConfig.LAX)


def oidc_filter_name(provider: str) -> str:
    return OIDC_PREFIX + provider


def token_cluster_name(provider: str) -> str:
    """The generated cluster to the provider's token endpoint (outside the name grammar)."""
    return f"oidc:{provider}"


def _client_secret_name(provider: str) -> str:
    return f"oidc:{provider}:client-secret"


def _hmac_name(provider: str) -> str:
    return f"oidc:{provider}:cookie-key"


def hmac_key(provider: OidcProvider) -> bytes:
    """The session cookies' signing key, derived (see the module docstring)."""
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=b"gateway oidc session cookies:" + provider.name.encode(),
    ).derive(provider.client_secret.encode())


def _sds(name: str) -> secret_pb2.SdsSecretConfig:
    return secret_pb2.SdsSecretConfig(name=name, sds_config=ads_source())


def oauth2_filter(provider: OidcProvider) -> oauth_pb2.OAuth2:
    """The oauth2 filter of one provider: code flow with PKCE (Envoy always sends a code
    challenge), tokens in HMAC-signed encrypted cookies, refresh, local and provider
    logout, the access token to the backend."""
    config = oauth_pb2.OAuth2Config(
        token_endpoint=http_uri_pb2.HttpUri(
            uri=provider.token_endpoint,
            cluster=token_cluster_name(provider.name),
            timeout=duration(provider.token_timeout),
        ),
        authorization_endpoint=provider.authorization_endpoint,
        credentials=oauth_pb2.OAuth2Credentials(
            client_id=provider.client_id,
            token_secret=_sds(_client_secret_name(provider.name)),
            hmac_secret=_sds(_hmac_name(provider.name)),
            cookie_domain=provider.cookie_domain or "",
        ),
        # the listener strips the port from the host (translate/listener.py): where
        # browsers use another port, the origin is configured
        redirect_uri=(provider.redirect_origin or "%REQ(x-forwarded-proto)%://%REQ(:authority)%")
        + provider.callback_path,
        redirect_path_matcher=path_pb2.PathMatcher(
            path=string_pb2.StringMatcher(exact=provider.callback_path)
        ),
        signout_path=path_pb2.PathMatcher(
            path=string_pb2.StringMatcher(exact=provider.logout_path)
        ),
        forward_bearer_token=provider.forward_access_token,
        auth_scopes=provider.scopes,
        use_refresh_token=wrappers_pb2.BoolValue(value=provider.refresh),
        default_expires_in=duration(provider.session_lifetime),
        # the ID token is kept only where logout at the provider needs it (id_token_hint):
        # one token fewer in every request's Cookie header
        disable_id_token_set_cookie=provider.end_session_endpoint is None,
        disable_refresh_token_set_cookie=not provider.refresh,
        # Lax: the provider's redirect back is a cross-site top-level GET, which must carry
        # the nonce and the PKCE verifier cookies; no cross-site POST or sub-request does
        cookie_configs=oauth_pb2.CookieConfigs(
            bearer_token_cookie_config=_LAX,
            oauth_hmac_cookie_config=_LAX,
            oauth_expires_cookie_config=_LAX,
            id_token_cookie_config=_LAX,
            refresh_token_cookie_config=_LAX,
            oauth_nonce_cookie_config=_LAX,
            code_verifier_cookie_config=_LAX,
        ),
    )
    if provider.end_session_endpoint is not None:
        config.end_session_endpoint = provider.end_session_endpoint
    return oauth_pb2.OAuth2(config=config)


def used_providers(features: Mapping[str, int]) -> list[str]:
    """The providers some route of the gateway logs in with (counted by the route table)."""
    return sorted(
        name[len(OIDC_PREFIX) :]
        for name, count in features.items()
        if name.startswith(OIDC_PREFIX) and count > 0
    )


def oidc_filters(
    providers: Mapping[str, OidcProvider], features: Mapping[str, int]
) -> list[tuple[str, Message]]:
    """The chain's instances (a provider that does not exist is reported by the snapshot's
    consistency check through the missing cluster, not here)."""
    return [
        (oidc_filter_name(name), oauth2_filter(providers[name]))
        for name in used_providers(features)
        if name in providers
    ]


def enable_login(message: rc.Route, auth: AuthPolicy, origin: str | None = None) -> None:
    """Switch the route's provider's filter on; with a configured origin, also the filter
    that gives the request that origin's host and port first."""
    if auth.oidc is None:
        return
    per = message.typed_per_filter_config
    per[oidc_filter_name(auth.oidc)].CopyFrom(pack(_ON))
    if origin is not None:
        script = (
            "function envoy_on_request(request)\n"
            f'  request:headers():replace(":authority", {lua_string(urlsplit(origin).netloc)})\n'
            "end\n"
        )
        per[ORIGIN_FILTER].CopyFrom(
            pack(lua_pb2.LuaPerRoute(source_code=base_pb2.DataSource(inline_string=script)))
        )


def origin_filter() -> lua_pb2.Lua:
    """The listener strips the port from every request's host (translate/listener.py), and
    the oauth2 filter sends the browser back, after the login, to the scheme, host and path
    it saw: on a gateway browsers reach on another port than 80/443 that would lose the
    port. Routes whose provider names its origin set the host to it first, in Lua (a
    header mutation may not touch the host); the filter-level script does nothing, only
    those routes switch the filter on."""
    return lua_pb2.Lua(
        default_source_code=base_pb2.DataSource(inline_string="function envoy_on_request(r) end")
    )


def login_origins(providers: Mapping[str, OidcProvider]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((n, p.redirect_origin) for n, p in providers.items() if p.redirect_origin))


def login_features(auth: AuthPolicy | None) -> Iterator[str]:
    if auth is not None and auth.oidc is not None:
        yield oidc_filter_name(auth.oidc)


def login_routes(gateway: str, provider: OidcProvider) -> list[Route]:
    """The generated callback and logout routes of one provider on one gateway: the
    filter answers both before the router; their 404 is never seen."""
    out = []
    for what, path in (("callback", provider.callback_path), ("logout", provider.logout_path)):
        route = Route.model_validate(
            {
                "name": "oidc-login",
                "gateways": [gateway],
                "match": {"path": path},
                "direct_response": {"status": 404},
                "auth": {"oidc": provider.name},
                "rate_limit": {"key": "none"},
            }
        )
        out.append(
            route.model_copy(
                update={"name": f"oidc:{provider.name}:{what}", "priority": _LOGIN_PRIORITY}
            )
        )
    return out


def provider_cluster(provider: OidcProvider) -> Message:
    return url_cluster(
        token_cluster_name(provider.name), provider.token_endpoint, provider.token_timeout
    )


def provider_secrets(provider: OidcProvider) -> list[secret_pb2.Secret]:
    """The client secret and the derived cookie key, as SDS generic secrets."""
    return [
        secret_pb2.Secret(
            name=_client_secret_name(provider.name),
            generic_secret=secret_pb2.GenericSecret(
                secret=base_pb2.DataSource(inline_string=provider.client_secret)
            ),
        ),
        secret_pb2.Secret(
            name=_hmac_name(provider.name),
            generic_secret=secret_pb2.GenericSecret(
                secret=base_pb2.DataSource(inline_bytes=hmac_key(provider))
            ),
        ),
    ]

"""A real OpenID Connect provider (OP) for end-to-end tests of Envoy's oauth2 filter.

Envoy's ``envoy.filters.http.oauth2`` filter is the client (relying party) side of the
authorization code flow. Testing it against a hand-written mock would only prove that the
filter agrees with the mock's author; this process is instead assembled from Authlib's
server components (``AuthorizationServer``, ``AuthorizationCodeGrant`` with ``OpenIDCode``
and ``CodeChallenge``, ``RefreshTokenGrant``, ``UserInfoEndpoint``, ``EndSessionEndpoint``),
so protocol checks (client authentication, redirect URI matching, PKCE, single-use codes,
refresh token rotation) are those of a maintained OAuth 2.0 / OIDC implementation. What is
written here is storage (in memory, one process, one client), the login page, key
handling and an event log that tests read back from ``GET /_events``.

Run it as ``python -m tests.oidc_provider --port P --client-id ID --client-secret S
--redirect-uri URI ...``; it prints ``ready http://127.0.0.1:P`` once listening and exits
on SIGTERM.
"""

from __future__ import annotations

import argparse
import hmac
import html
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from authlib.common.security import generate_token
from authlib.integrations.flask_oauth2 import AuthorizationServer, ResourceProtector
from authlib.oauth2 import OAuth2Error, OAuth2Request
from authlib.oauth2.rfc6749 import (
    AuthorizationCodeMixin,
    ClientMixin,
    InvalidRequestError,
    TokenMixin,
)
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant, RefreshTokenGrant
from authlib.oauth2.rfc6750 import BearerTokenValidator
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from authlib.oidc.core import UserInfo, UserInfoEndpoint
from authlib.oidc.core.grants import OpenIDCode, OpenIDToken
from authlib.oidc.rpinitiated import EndSessionEndpoint, EndSessionRequest
from flask import Flask, Response, jsonify, request
from joserfc.jwk import KeySet, RSAKey
from werkzeug.serving import BaseWSGIServer, make_server

#: Name of the OP's browser session cookie. Cookies are not isolated by port, so on
#: 127.0.0.1 the browser also sends it to the gateway; the name must not collide with
#: any of Envoy's oauth2 cookies (BearerToken, OauthHMAC, OauthExpires, IdToken,
#: RefreshToken, OauthNonce, CodeVerifier).
SESSION_COOKIE = "oidc_op_session"

#: RFC 6749 section 4.1.2 recommends at most ten minutes for an authorization code.
CODE_TTL_SECONDS = 600

SCOPES_SUPPORTED = ["openid", "profile", "email", "offline_access"]
CLIENT_AUTH_METHODS = ["client_secret_post", "client_secret_basic"]


# --------------------------------------------------------------------------- storage


@dataclass
class User:
    """A resource owner who can sign in on the login form."""

    username: str
    password: str

    def get_user_id(self) -> str:
        """Authlib calls this to fill ``sub`` in JWT access tokens."""
        return self.username

    @property
    def name(self) -> str:
        return self.username.capitalize()

    @property
    def email(self) -> str:
        return f"{self.username}@example.test"


@dataclass
class Client(ClientMixin):
    """The single confidential client (the gateway), registered from the command line."""

    client_id: str
    client_secret: str
    redirect_uris: list[str]
    post_logout_redirect_uris: list[str]

    @property
    def client_metadata(self) -> dict[str, Any]:
        """Metadata read by Authlib's UserInfo and EndSession endpoints."""
        return {
            "redirect_uris": self.redirect_uris,
            "post_logout_redirect_uris": self.post_logout_redirect_uris,
        }

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        return self.redirect_uris[0] if self.redirect_uris else None

    def get_allowed_scope(self, scope: str | None) -> str | None:
        """Grant what was asked for, but only as an OpenID request.

        This provider exists to test an OIDC relying party; a request without ``openid``
        would get no ID token, and Envoy's logout needs one for ``id_token_hint``, so it is
        refused (``invalid_scope``, redirected to the client) rather than half-served.
        """
        if not scope or "openid" not in scope.split():
            return None
        return scope

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        """Exact string match, as OIDC Core 3.1.2.1 requires (no prefix or port leeway)."""
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return hmac.compare_digest(client_secret.encode(), self.client_secret.encode())

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        """Both secret methods are accepted so either Envoy ``auth_type`` works."""
        if endpoint == "token":
            return method in CLIENT_AUTH_METHODS
        return True

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in ("authorization_code", "refresh_token")


@dataclass
class AuthorizationCode(AuthorizationCodeMixin):
    """An issued code with what the token exchange must check it against."""

    code: str
    client_id: str
    redirect_uri: str
    scope: str
    user: User
    nonce: str | None
    auth_time: int
    code_challenge: str | None
    code_challenge_method: str | None
    issued_at: float = field(default_factory=time.time)

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.auth_time

    def get_acr(self) -> str | None:
        return None

    def get_amr(self) -> list[str] | None:
        return ["pwd"]

    def is_expired(self) -> bool:
        return time.time() > self.issued_at + CODE_TTL_SECONDS


@dataclass
class Token(TokenMixin):
    """An access token and its refresh token; ``auth_time`` carries over on refresh."""

    access_token: str
    refresh_token: str | None
    client: Client
    user: User
    scope: str
    expires_in: int
    auth_time: int
    issued_at: float = field(default_factory=time.time)
    revoked: bool = False
    refresh_revoked: bool = False

    def check_client(self, client: ClientMixin) -> bool:
        return client.get_client_id() == self.client.client_id

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return self.expires_in

    def is_expired(self) -> bool:
        return time.time() >= self.issued_at + self.expires_in

    def is_revoked(self) -> bool:
        return self.revoked

    def get_user(self) -> User:
        return self.user

    def get_client(self) -> Client:
        return self.client


@dataclass
class Session:
    """A signed-in browser at the OP (what the login form creates, logout ends)."""

    user: User
    auth_time: int


class Store:
    """All mutable state, behind one lock because the WSGI server is threaded.

    Consuming a code or a refresh token happens under the lock in one step, so two
    concurrent token requests cannot both redeem the same credential.
    """

    def __init__(self, client: Client, users: dict[str, User]) -> None:
        self.lock = threading.Lock()
        self.client = client
        self.users = users
        self.codes: dict[str, AuthorizationCode] = {}
        self.redeemed_codes: dict[str, list[Token]] = {}
        self.nonces: set[tuple[str, str]] = set()
        self.by_access: dict[str, Token] = {}
        self.by_refresh: dict[str, Token] = {}
        self.sessions: dict[str, Session] = {}
        self.events: list[dict[str, Any]] = []

    def event(self, **fields: Any) -> None:
        with self.lock:
            self.events.append({"time": time.time(), **fields})

    def consume_code(self, code: str, client: ClientMixin) -> AuthorizationCode | None:
        """Take a code out of the store; a second presentation revokes its tokens.

        RFC 6749 section 4.1.2: the server MUST deny a reused code and SHOULD revoke the
        tokens already issued for it.
        """
        with self.lock:
            if code in self.redeemed_codes:
                for token in self.redeemed_codes[code]:
                    token.revoked = True
                    token.refresh_revoked = True
                return None
            item = self.codes.pop(code, None)
            if item is None:
                return None
            self.redeemed_codes[code] = []
            if item.client_id != client.get_client_id() or item.is_expired():
                return None
            return item

    def consume_refresh(self, refresh_token: str) -> Token | None:
        """Return the token for a refresh token and retire that refresh token at once."""
        with self.lock:
            token = self.by_refresh.get(refresh_token)
            if token is None or token.refresh_revoked:
                return None
            token.refresh_revoked = True
            return token


# --------------------------------------------------------------------------- keys


class SigningKey:
    """One RSA key made at start: signs ID and access tokens, published at ``/jwks``."""

    def __init__(self) -> None:
        self.kid = uuid.uuid4().hex[:16]
        self.private = RSAKey.generate_key(2048, parameters={"kid": self.kid, "use": "sig"})

    def private_set(self) -> KeySet:
        return KeySet([self.private])

    def public_jwks(self) -> dict[str, Any]:
        public = self.private.as_dict(private=False)
        public["alg"] = "RS256"
        return {"keys": [public]}


# --------------------------------------------------------------------------- grants


class S256CodeChallenge(CodeChallenge):
    """PKCE with S256 only, and required of every authorization request.

    Authlib's ``CodeChallenge(required=True)`` insists on a verifier only for public
    clients; the gateway is confidential, yet it must still send PKCE, which is what
    the end-to-end tests are to prove, so a request without it is refused here.
    """

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]  # noqa: RUF012 - overrides Authlib's list

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("Missing 'code_challenge' (PKCE is required)")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("'code_challenge_method' must be S256")
        super().validate_code_challenge(grant, redirect_uri)


class CodeGrant(AuthorizationCodeGrant):
    """The authorization code grant over :class:`Store`."""

    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS
    store: Store  # set by build_app on a subclass

    def save_authorization_code(self, code: str, request: OAuth2Request) -> None:
        payload = request.payload
        item = AuthorizationCode(
            code=code,
            client_id=request.client.get_client_id(),
            redirect_uri=payload.redirect_uri or request.client.get_default_redirect_uri(),
            scope=request.scope,
            user=request.user,
            nonce=payload.data.get("nonce"),
            auth_time=getattr(request, "op_auth_time", int(time.time())),
            code_challenge=payload.data.get("code_challenge"),
            code_challenge_method=payload.data.get("code_challenge_method"),
        )
        with self.store.lock:
            self.store.codes[code] = item
            if item.nonce:
                self.store.nonces.add((item.client_id, item.nonce))

    def query_authorization_code(self, code: str, client: ClientMixin) -> AuthorizationCode | None:
        return self.store.consume_code(code, client)

    def delete_authorization_code(self, authorization_code: AuthorizationCode) -> None:
        """Nothing left to do: :meth:`Store.consume_code` already took it out."""

    def authenticate_user(self, authorization_code: AuthorizationCode) -> User:
        return authorization_code.user


class RefreshGrant(RefreshTokenGrant):
    """Refresh with rotation: every refresh issues a new refresh token, the old one dies."""

    INCLUDE_NEW_REFRESH_TOKEN = True
    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS
    store: Store

    def authenticate_refresh_token(self, refresh_token: str) -> Token | None:
        return self.store.consume_refresh(refresh_token)

    def authenticate_user(self, refresh_token: Token) -> User:
        return refresh_token.user

    def revoke_old_credential(self, refresh_token: Token) -> None:
        refresh_token.refresh_revoked = True


class IdTokenClaims:
    """What the ID token holds beyond Authlib's defaults: issuer, kid, user claims."""

    issuer: str
    key: SigningKey
    ttl: int

    def resolve_client_private_key(self, client: ClientMixin) -> KeySet:
        return self.key.private_set()

    def get_client_algorithm(self, client: ClientMixin) -> str:
        return "RS256"

    def get_encode_header(self, client: ClientMixin) -> dict[str, str]:
        return {"alg": "RS256", "kid": self.key.kid, "typ": "JWT"}

    def get_client_claims(self, client: ClientMixin) -> dict[str, Any]:
        """``aud`` is the bare client id; ``exp`` follows the access token lifetime.

        One lifetime for both tokens means a relying party that sizes a cookie from either
        one (the access token's ``expires_in`` or the ID token's ``exp``) gets the same
        expiry, so a test that waits for expiry does not depend on which one Envoy uses.
        """
        now = int(time.time())
        return {
            "iss": self.issuer,
            "aud": client.get_client_id(),
            "iat": now,
            "exp": now + self.ttl,
        }

    def generate_user_info(self, user: User, scope: str) -> UserInfo:
        return user_info(user)


class OIDCCode(IdTokenClaims, OpenIDCode):
    """ID token for the code exchange, with ``nonce`` when the request carried one."""

    store: Store

    def exists_nonce(self, nonce: str, request: OAuth2Request) -> bool:
        """Replay protection: a nonce seen in an earlier code for this client is refused."""
        with self.store.lock:
            return (request.payload.client_id, nonce) in self.store.nonces


class OIDCRefresh(IdTokenClaims, OpenIDToken):
    """A fresh ID token on refresh too (OIDC Core 12.2).

    The original ``auth_time`` is kept (12.2 requires it). ``nonce`` is not repeated: it
    answers one authentication request, and a refresh is not one.
    """

    def get_compatible_claims(self, request: OAuth2Request) -> dict[str, Any]:
        claims = super().get_compatible_claims(request)
        if request.refresh_token is not None:
            claims["auth_time"] = request.refresh_token.auth_time
        return claims


class AccessTokens(JWTBearerTokenGenerator):
    """RFC 9068 JWT access tokens (iss, sub, aud=client_id, exp, iat, jti, scope)."""

    def __init__(self, issuer: str, key: SigningKey, ttl: int) -> None:
        super().__init__(
            issuer,
            refresh_token_generator=lambda **_: generate_token(48),
            expires_generator=lambda client, grant_type: ttl,
        )
        self.key = key

    def get_jwks(self) -> KeySet:
        return self.key.private_set()


def user_info(user: User) -> UserInfo:
    """The same claims in ID tokens and at ``/userinfo``, whatever the scope, so tests
    can compare them without knowing which scopes the gateway asked for."""
    return UserInfo(sub=user.username, name=user.name, email=user.email)


class UserInfoAtOP(UserInfoEndpoint):
    """``/userinfo``: {sub, name, email} for a valid Bearer access token."""

    issuer: str
    key: SigningKey

    def get_issuer(self) -> str:
        return self.issuer

    def resolve_private_key(self) -> KeySet:
        return self.key.private_set()

    def generate_user_info(self, user: User, scope: str) -> UserInfo:
        return user_info(user)


class EndSessionAtOP(EndSessionEndpoint):
    """RP-initiated logout: verifies ``id_token_hint`` (expired is fine), ends the session."""

    key: SigningKey
    store: Store

    def get_server_jwks(self) -> dict[str, Any]:
        return self.key.public_jwks()

    def get_algorithms(self) -> list[str]:
        return ["RS256"]

    def is_post_logout_redirect_uri_legitimate(
        self, request: OAuth2Request, post_logout_redirect_uri: str, client: Any, logout_hint: Any
    ) -> bool:
        """A registered URI is enough, hint or not: a test OP, and the event log says
        whether a valid hint came (Authlib's default refuses to redirect without one)."""
        return True

    def end_session(self, end_session_request: EndSessionRequest) -> None:
        sid = request.cookies.get(SESSION_COOKIE)
        if sid:
            with self.store.lock:
                self.store.sessions.pop(sid, None)


class BearerValidator(BearerTokenValidator):
    """Looks access tokens up in the store, so revoked ones are refused too."""

    store: Store

    def authenticate_token(self, token_string: str) -> Token | None:
        with self.store.lock:
            return self.store.by_access.get(token_string)


# --------------------------------------------------------------------------- app


LOGIN_PAGE = """<!doctype html>
<html><head><title>Sign in</title></head>
<body>
<h1>Sign in to {issuer}</h1>
{error}
<form method="post" action="/authorize" id="login">
{hidden}
<label>Username <input type="text" name="username" id="username" autofocus></label>
<label>Password <input type="password" name="password" id="password"></label>
<button type="submit" id="submit">Sign in</button>
</form>
</body></html>
"""


def _bind(cls: type, **attrs: Any) -> type:
    """A per-app subclass carrying the app's store, key and settings.

    Authlib instantiates grant and endpoint classes itself (one per request), so
    configuration travels on the class rather than through constructors.
    """
    return type(cls.__name__, (cls,), attrs)


@dataclass
class Config:
    port: int
    client_id: str
    client_secret: str
    redirect_uris: list[str]
    post_logout_redirect_uris: list[str]
    access_token_ttl: int
    users: dict[str, str]

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def build_app(config: Config) -> Flask:
    """Assemble the Flask app and the Authlib authorization server behind it."""
    issuer = config.issuer
    key = SigningKey()
    client = Client(
        config.client_id,
        config.client_secret,
        list(config.redirect_uris),
        list(config.post_logout_redirect_uris),
    )
    users = {name: User(name, pw) for name, pw in config.users.items()}
    store = Store(client, users)

    def query_client(client_id: str) -> Client | None:
        return client if client_id == client.client_id else None

    def save_token(token: dict[str, Any], req: OAuth2Request) -> None:
        if req.authorization_code is not None:
            auth_time = req.authorization_code.get_auth_time()
        elif req.refresh_token is not None:
            auth_time = req.refresh_token.auth_time
        else:
            auth_time = int(time.time())
        record = Token(
            access_token=token["access_token"],
            refresh_token=token.get("refresh_token"),
            client=req.client,
            user=req.user,
            scope=token.get("scope", ""),
            expires_in=int(token["expires_in"]),
            auth_time=auth_time,
        )
        with store.lock:
            store.by_access[record.access_token] = record
            if record.refresh_token:
                store.by_refresh[record.refresh_token] = record
            if req.authorization_code is not None:
                store.redeemed_codes.setdefault(req.authorization_code.code, []).append(record)

    app = Flask(__name__)
    server = AuthorizationServer(app, query_client=query_client, save_token=save_token)
    server.register_token_generator("default", AccessTokens(issuer, key, config.access_token_ttl))
    claims = {"issuer": issuer, "key": key, "ttl": config.access_token_ttl}
    server.register_grant(
        _bind(CodeGrant, store=store),
        [
            _bind(OIDCCode, store=store, **claims)(require_nonce=False),
            S256CodeChallenge(required=True),
        ],
    )
    server.register_grant(_bind(RefreshGrant, store=store), [_bind(OIDCRefresh, **claims)()])

    protector = ResourceProtector()
    protector.register_token_validator(_bind(BearerValidator, store=store)())
    server.register_endpoint(
        _bind(UserInfoAtOP, issuer=issuer, key=key)(resource_protector=protector)
    )
    server.register_endpoint(_bind(EndSessionAtOP, key=key, store=store))

    def current_session() -> Session | None:
        sid = request.cookies.get(SESSION_COOKIE)
        if not sid:
            return None
        with store.lock:
            return store.sessions.get(sid)

    def login_page(status: int, error: str = "") -> Response:
        hidden = "\n".join(
            f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
            for k in request.values
            if k not in ("username", "password")
            for v in request.values.getlist(k)
        )
        body = LOGIN_PAGE.format(
            issuer=html.escape(issuer),
            error=f'<p class="error" id="error">{html.escape(error)}</p>' if error else "",
            hidden=hidden,
        )
        return Response(body, status=status, mimetype="text/html")

    def error_page(error: OAuth2Error) -> Response:
        """RFC 6749 4.1.2.1: a bad client or redirect_uri is shown, never redirected to."""
        text = f"{error.error}: {error.description or ''}"
        body = f"<!doctype html><html><body><h1>Error</h1><p id='error'>{html.escape(text)}</p>"
        return Response(body + "</body></html>", status=400, mimetype="text/html")

    @app.get("/.well-known/openid-configuration")
    def discovery() -> Response:
        return jsonify(
            issuer=issuer,
            authorization_endpoint=f"{issuer}/authorize",
            token_endpoint=f"{issuer}/token",
            jwks_uri=f"{issuer}/jwks",
            userinfo_endpoint=f"{issuer}/userinfo",
            end_session_endpoint=f"{issuer}/end_session",
            response_types_supported=["code"],
            response_modes_supported=["query"],
            grant_types_supported=["authorization_code", "refresh_token"],
            subject_types_supported=["public"],
            scopes_supported=SCOPES_SUPPORTED,
            claims_supported=["sub", "name", "email", "iss", "aud", "exp", "iat", "nonce"],
            code_challenge_methods_supported=["S256"],
            token_endpoint_auth_methods_supported=CLIENT_AUTH_METHODS,
            id_token_signing_alg_values_supported=["RS256"],
            userinfo_signing_alg_values_supported=["none"],
        )

    @app.get("/jwks")
    def jwks() -> Response:
        return jsonify(key.public_jwks())

    @app.route("/authorize", methods=["GET", "POST"])
    def authorize() -> Response:
        session = current_session()
        values = request.values
        event: dict[str, Any] = {
            "endpoint": "authorize",
            "method": request.method,
            "had_session": session is not None,
            "code_challenge_method": values.get("code_challenge_method"),
            "scope": values.get("scope"),
            "nonce_present": bool(values.get("nonce")),
            "redirect_uri": values.get("redirect_uri"),
        }
        user: User | None = session.user if session else None
        try:
            grant = server.get_consent_grant(end_user=user)
        except OAuth2Error as error:
            store.event(**event, outcome="error", error=error.error)
            if error.redirect_uri:
                return server.handle_error_response(None, error)
            return error_page(error)

        new_sid: str | None = None
        auth_time = session.auth_time if session else int(time.time())
        if request.method == "POST" and "username" in request.form:
            candidate = store.users.get(request.form.get("username", ""))
            password = request.form.get("password", "")
            if candidate is None or not hmac.compare_digest(
                candidate.password.encode(), password.encode()
            ):
                store.event(**event, outcome="login_failed", error="access_denied")
                return login_page(401, "Wrong username or password.")
            user, auth_time, new_sid = candidate, int(time.time()), generate_token(32)
            with store.lock:
                store.sessions[new_sid] = Session(candidate, auth_time)
        if user is None or (values.get("prompt") == "login" and new_sid is None):
            store.event(**event, outcome="login_form", error=None)
            return login_page(200)

        grant.request.op_auth_time = auth_time  # read by CodeGrant.save_authorization_code
        response = server.create_authorization_response(grant=grant, grant_user=user)
        location = response.headers.get("Location", "")
        store.event(
            **event,
            outcome="redirect",
            error=None if "code=" in location else "redirected_with_error",
            logged_in=new_sid is not None,
        )
        if new_sid:
            response.set_cookie(SESSION_COOKIE, new_sid, httponly=True, samesite="Lax", path="/")
        return response

    @app.post("/token")
    def token() -> Response:
        if request.authorization is not None and request.authorization.type == "basic":
            client_auth = "client_secret_basic"
        elif request.form.get("client_secret"):
            client_auth = "client_secret_post"
        else:
            client_auth = None
        response = server.create_token_response()
        payload = response.get_json(silent=True) or {}
        store.event(
            endpoint="token",
            grant_type=request.form.get("grant_type"),
            ok=response.status_code == 200,
            status=response.status_code,
            error=payload.get("error"),
            error_description=payload.get("error_description"),
            client_auth=client_auth,
            code_verifier_present=bool(request.form.get("code_verifier")),
            redirect_uri=request.form.get("redirect_uri"),
        )
        return response

    @app.route("/userinfo", methods=["GET", "POST"])
    def userinfo() -> Response:
        return server.create_endpoint_response("userinfo")

    @app.route("/end_session", methods=["GET", "POST"])
    def end_session() -> Response:
        values = request.values
        post_logout = values.get("post_logout_redirect_uri")
        event: dict[str, Any] = {
            "endpoint": "end_session",
            "id_token_hint_present": bool(values.get("id_token_hint")),
            "post_logout_redirect_uri": post_logout,
            "client_id": values.get("client_id"),
            "state": values.get("state"),
            "had_session": current_session() is not None,
        }
        try:
            req = server.validate_endpoint_request("end_session")
        except OAuth2Error as error:
            store.event(**event, id_token_hint_valid=False, ok=False, error=error.error)
            return error_page(error)
        event["id_token_hint_valid"] = req.id_token_claims is not None
        if req.client is None and values.get("client_id"):
            store.event(**event, ok=False, error="invalid_client")
            return error_page(InvalidRequestError("unknown 'client_id'"))
        if post_logout and req.redirect_uri is None:
            # Authlib silently skips an unregistered URI; tests want the mistake loud.
            store.event(**event, ok=False, error="invalid_post_logout_redirect_uri")
            return error_page(InvalidRequestError("'post_logout_redirect_uri' not registered"))
        response = server.create_endpoint_response("end_session", req)
        if response is None:
            response = Response(
                "<!doctype html><html><body><h1 id='signed-out'>signed out</h1></body></html>",
                mimetype="text/html",
            )
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="Lax")
        store.event(**event, ok=True, error=None)
        return response

    @app.get("/_events")
    def events() -> Response:
        with store.lock:
            return jsonify(list(store.events))

    return app


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(prog="python -m tests.oidc_provider", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--client-secret", required=True)
    parser.add_argument("--redirect-uri", action="append", required=True, dest="redirect_uris")
    parser.add_argument(
        "--post-logout-redirect-uri", action="append", default=[], dest="post_logout"
    )
    parser.add_argument("--access-token-ttl", type=int, default=300)
    parser.add_argument(
        "--user",
        action="append",
        default=[],
        metavar="NAME:PASSWORD",
        help="a user who can sign in (default alice:password)",
    )
    args = parser.parse_args(argv)
    users: dict[str, str] = {}
    for spec in args.user or ["alice:password"]:
        name, sep, password = spec.partition(":")
        if not sep or not name:
            parser.error(f"--user wants NAME:PASSWORD, got {spec!r}")
        users[name] = password
    return Config(
        port=args.port,
        client_id=args.client_id,
        client_secret=args.client_secret,
        redirect_uris=args.redirect_uris,
        post_logout_redirect_uris=args.post_logout,
        access_token_ttl=args.access_token_ttl,
        users=users,
    )


def serve(config: Config, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve until SIGTERM or SIGINT; ``on_ready`` gets the issuer once listening."""
    app = build_app(config)
    server: BaseWSGIServer = make_server("127.0.0.1", config.port, app, threaded=True)

    def stop(signum: int, frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever to return, which runs in this thread:
        # hand it to another one.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if on_ready is not None:
        on_ready(config.issuer)
    try:
        server.serve_forever()
    finally:
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)

    def announce(issuer: str) -> None:
        print(f"ready {issuer}", flush=True)

    serve(config, announce)
    return 0


if __name__ == "__main__":
    sys.exit(main())

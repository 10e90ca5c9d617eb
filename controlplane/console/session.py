"""Console sessions: a random id in an HttpOnly cookie, kept in the controller's memory.

A session stores the API token's SHA-256 digest (never the token), the token's name and a
CSRF token. Sessions live in the controller process that issued them: a restarted
controller, or another controller behind the same name, asks the user to log in again,
which costs one login and keeps no session secret in the database.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import Forbidden, Unauthorized

if TYPE_CHECKING:
    from fastapi import Request

    from ..api.auth import Principal

__all__ = [
    "CSRF_HEADER",
    "IDLE_TIMEOUT",
    "MAX_AGE",
    "SESSION_COOKIE",
    "Session",
    "Sessions",
    "session_principal",
]

SESSION_COOKIE = "gw_console"
CSRF_HEADER = "X-CSRF-Token"
#: a session ends this long after login, whatever its use
MAX_AGE = 12 * 3600.0
#: ... or after this long without a request
IDLE_TIMEOUT = 2 * 3600.0
#: at most this many live sessions; the least recently used goes first
MAX_SESSIONS = 10_000
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: the query options that make an operation answer with secrets (export, render, apply)
_SECRET_PARAMS = ("secrets", "show_secrets")


@dataclass
class Session:
    """One logged-in browser."""

    digest: str
    name: str
    csrf: str
    created: float
    last_seen: float = field(default=0.0)


class Sessions:
    """The live sessions of this controller (thread-safe: FastAPI runs sync handlers in a
    thread pool)."""

    def __init__(self, max_age: float = MAX_AGE, idle: float = IDLE_TIMEOUT) -> None:
        self._items: dict[str, Session] = {}
        self._lock = threading.Lock()
        self.max_age = max_age
        self.idle = idle

    def create(self, digest: str, name: str) -> tuple[str, Session]:
        now = time.time()
        sid = secrets.token_urlsafe(32)
        session = Session(
            digest=digest, name=name, csrf=secrets.token_urlsafe(32), created=now, last_seen=now
        )
        with self._lock:
            if len(self._items) >= MAX_SESSIONS:
                oldest = min(self._items, key=lambda k: self._items[k].last_seen)
                del self._items[oldest]
            self._items[sid] = session
        return sid, session

    def get(self, sid: str) -> Session | None:
        """The live session ``sid``, touched; None (and forgotten) when it has expired."""
        now = time.time()
        with self._lock:
            session = self._items.get(sid)
            if session is None:
                return None
            if now - session.created > self.max_age or now - session.last_seen > self.idle:
                del self._items[sid]
                return None
            session.last_seen = now
            return session

    def drop(self, sid: str) -> None:
        with self._lock:
            self._items.pop(sid, None)

    def __len__(self) -> int:
        return len(self._items)


def same_origin(request: Request) -> bool:
    """Whether the request's ``Origin`` (when the browser sends one) is the console's own."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    host = request.headers.get("host", "")
    return origin == f"{request.url.scheme}://{host}"


def session_principal(request: Request) -> Principal | None:
    """The caller of a request authenticated by the console's cookie; None without one.

    Raises :class:`Unauthorized` when the session or its token is gone (expired, revoked:
    the console then shows the login page), and :class:`Forbidden` for a write without the
    session's CSRF token or from another origin (a forged cross-site request).
    """
    sid = request.cookies.get(SESSION_COOKIE)
    if not sid:
        return None
    sessions: Sessions | None = getattr(request.app.state, "sessions", None)
    session = sessions.get(sid) if sessions is not None else None
    if session is None:
        raise Unauthorized("console session expired or unknown: log in again")
    from ..api.auth import principal_of
    from ..store.tokens import lookup_digest

    info = lookup_digest(request.app.state.store, session.digest)
    if info is None:
        assert sessions is not None
        sessions.drop(sid)
        raise Unauthorized("the session's token was revoked or has expired: log in again")
    params = request.query_params
    if any(params.get(k, "").lower() in ("true", "1", "yes", "on") for k in _SECRET_PARAMS):
        # no secret reaches a browser after its creation, whatever the session's role
        raise Forbidden(
            "the console does not read secrets (private keys, API keys): use gatewayctl "
            "with an admin token"
        )
    if request.method not in _SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER.lower(), "")
        if not same_origin(request) or not hmac.compare_digest(
            sent.encode(), session.csrf.encode()
        ):
            raise Forbidden(
                f"cross-site request refused: a console write needs the session's "
                f"{CSRF_HEADER} header and the console's own origin"
            )
    return principal_of(info)

"""The web console: static pages under ``/ui`` on the admin API's port, and the session
that lets a browser call the same ``/v1`` operations as ``gatewayctl`` (ADR 0042).

The browser never holds an API token after logging in: ``POST /ui/session`` checks the token
once and answers with a session cookie (HttpOnly, SameSite=Strict, Secure over TLS) and a
CSRF token. Every ``/v1`` call of the console then carries the cookie; a write must also
carry the CSRF token in ``X-CSRF-Token`` and, when the browser sends ``Origin``, come from
the console's own origin. The session keeps the token's digest, and every request looks it
up again, so a revoked or expired token ends the session at its next request. The role
checks are the API's own: the session only says who the caller is.
"""

from __future__ import annotations

from .session import SESSION_COOKIE, Session, Sessions, session_principal
from .web import router

__all__ = ["SESSION_COOKIE", "Session", "Sessions", "router", "session_principal"]

"""The console's pages and its session endpoints (``/ui``), kept out of the OpenAPI document.

The pages are static files of this package: the browser renders every value with
``textContent`` (never as HTML) and the Content-Security-Policy admits scripts from this
origin only, so a hostile object name cannot run as script. Data comes from the ``/v1``
operations, with the caller's own role.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from ..errors import Forbidden, Unauthorized
from .session import SESSION_COOKIE, Sessions, same_origin, session_principal

__all__ = ["router"]

router = APIRouter(prefix="/ui", include_in_schema=False)

#: every file the console serves, with its type; nothing else under static/ is reachable
_FILES = {
    "console.js": "text/javascript; charset=utf-8",
    "login.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _read(name: str) -> bytes:
    return (resources.files(__package__) / "static" / name).read_bytes()


def _sessions(request: Request) -> Sessions:
    sessions: Sessions | None = getattr(request.app.state, "sessions", None)
    if sessions is None:
        sessions = request.app.state.sessions = Sessions()
    return sessions


def _page(name: str) -> Response:
    return Response(_read(name), media_type="text/html; charset=utf-8", headers=_HEADERS)


@router.get("")
def root() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=307, headers=_HEADERS)


@router.get("/")
def index() -> Response:
    """The console's shell; its script asks ``/ui/session`` who is logged in."""
    return _page("index.html")


@router.get("/login")
def login_page() -> Response:
    return _page("login.html")


@router.get("/static/{name}")
def static(name: str) -> Response:
    media = _FILES.get(name)
    if media is None:
        return JSONResponse(
            {"error": {"code": "not_found", "message": f"no file {name!r}", "field": None}},
            status_code=404,
        )
    return Response(_read(name), media_type=media, headers=_HEADERS)


def _who(principal: Any, csrf: str) -> dict[str, Any]:
    return {
        "name": principal.name,
        "role": principal.role,
        "gateways": sorted(principal.gateways),
        "csrf": csrf,
    }


@router.get("/session")
def get_session(request: Request) -> JSONResponse:
    """Who is logged in, and the CSRF token the console sends with each write."""
    principal = session_principal(request)
    if principal is None:
        raise Unauthorized("not logged in")
    session = _sessions(request).get(request.cookies[SESSION_COOKIE])
    assert session is not None  # session_principal found it a moment ago
    return JSONResponse(_who(principal, session.csrf), headers=_HEADERS)


@router.post("/session")
async def login(request: Request) -> JSONResponse:
    """Log in with an API token (JSON ``{"token": "gw_..."}``): a session cookie and a CSRF
    token. The JSON body and the origin check keep another site from logging a browser in."""
    from starlette.concurrency import run_in_threadpool

    from ..api.auth import authenticate
    from ..store.tokens import digest_of

    if not same_origin(request):
        raise Forbidden("login refused: the request comes from another origin")
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise Unauthorized('login: send the token as JSON {"token": "gw_..."}')
    try:
        body = await request.json()
    except ValueError:
        body = None
    token = body.get("token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token.strip():
        raise Unauthorized("login: token missing")
    token = token.strip()
    principal = await run_in_threadpool(authenticate, request.app.state.store, f"Bearer {token}")
    sessions = _sessions(request)
    old = request.cookies.get(SESSION_COOKIE)
    if old:
        sessions.drop(old)  # a new login never reuses an id the browser had before
    sid, session = sessions.create(digest_of(token), principal.name)
    response = JSONResponse(_who(principal, session.csrf), headers=_HEADERS)
    response.set_cookie(
        SESSION_COOKIE,
        sid,
        max_age=int(sessions.max_age),
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.delete("/session")
def logout(request: Request) -> JSONResponse:
    """End the session (a write: it needs the CSRF token, so no other site can log the
    user out)."""
    principal = session_principal(request)
    if principal is not None:
        _sessions(request).drop(request.cookies[SESSION_COOKIE])
    response = JSONResponse({"ok": True}, headers=_HEADERS)
    response.delete_cookie(
        SESSION_COOKIE,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response

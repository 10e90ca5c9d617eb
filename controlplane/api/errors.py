"""One JSON error shape for every 4xx/5xx of the admin API, and the request-size limit.

``{"error": {"code", "message", "field"}}``: the CLI client maps ``code`` to its exit code,
so every way a request can fail - the store's own errors, FastAPI's validation, a route that
does not exist, an oversize body, a bug of ours - ends up here. A bug is logged with its
traceback and answered with a one-line 500 that carries none.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import (
    Conflict,
    Forbidden,
    GatewayError,
    NotFound,
    PolicyInvalid,
    StoreError,
    TranslationError,
    Unauthorized,
    WaitFailed,
)

__all__ = [
    "ERROR_RESPONSES",
    "ApiError",
    "BodyLimit",
    "error_body",
    "install_error_handlers",
]

log = logging.getLogger(__name__)

#: error class -> (HTTP status, code); the first match in this order wins
_STATUS: list[tuple[type[GatewayError], int, str]] = [
    (PolicyInvalid, 400, "invalid"),
    (Unauthorized, 401, "unauthorized"),
    (Forbidden, 403, "forbidden"),
    (NotFound, 404, "not_found"),
    (Conflict, 409, "conflict"),
    (StoreError, 503, "unavailable"),
    (TranslationError, 422, "rejected"),
]

_HTTP_CODES = {
    400: "invalid",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "invalid",
    409: "conflict",
    413: "too_large",
    415: "invalid",
    422: "invalid",
    503: "unavailable",
}


#: ``route 'users': retry.attempts: ...`` -> ``retry.attempts`` (the store's messages name
#: the object, then the field)
_FIELD = re.compile(
    r"^[a-z_]+ '[^']*': ([A-Za-z_][A-Za-z0-9_]*(?:(?:\.[A-Za-z_][A-Za-z0-9_]*)|\[\d+\])*):"
)


class ApiError(Exception):
    """An error with its own status and code (``too_large``, ``wait_failed``...)."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field


def error_body(
    code: str, message: str, field: str | None = None, revision: int | None = None
) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message, "field": field}
    if revision is not None:  # wait_failed of a write that stays committed as this revision
        error["revision"] = revision
    return {"error": error}


def _json(
    status: int, code: str, message: str, field: str | None = None, revision: int | None = None
) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(
        error_body(code, message, field, revision), status_code=status, headers=headers
    )


def status_of(exc: GatewayError) -> tuple[int, str]:
    if isinstance(exc, WaitFailed):
        # a timeout is the gateway's lateness (504); a rejection collides with what Envoy runs
        return (504 if exc.message.startswith("timed out") else 409), "wait_failed"
    for cls, status, code in _STATUS:
        if isinstance(exc, cls):
            return status, code
    return 500, "internal"


def _loc(loc: tuple[Any, ...] | list[Any]) -> str | None:
    """``("body", "routes", 0, "cluster")`` -> ``routes[0].cluster``; the request part
    (body, query, path, header) is dropped unless nothing else is left."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    parts = [p for p in parts if p not in ("function-after", "function-before")]
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or None


def _validation_message(errors: list[Any]) -> tuple[str, str | None]:
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    field = _loc(tuple(first.get("loc", ())))
    kind = first.get("type", "")
    msg = str(first.get("msg", "invalid"))
    if kind == "extra_forbidden":
        msg = "unknown field"
    elif kind == "json_invalid":
        ctx = first.get("ctx")
        detail = ctx.get("error") if isinstance(ctx, dict) else None
        msg = f"malformed JSON{': ' + str(detail) if detail else ''}"
        field = None
    elif msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if kind == "missing" and field is None:
        msg, field = "a JSON body is required", None
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    text = f"{field}: {msg}{more}" if field else f"{msg}{more}"
    return " ".join(text.split()), field


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        status, code = status_of(exc)
        message = " ".join(exc.message.split())
        field = getattr(exc, "field", None)
        if field is None and isinstance(exc, PolicyInvalid):
            match = _FIELD.match(message)
            field = match.group(1) if match else None
        revision = exc.revision if isinstance(exc, WaitFailed) else None
        return _json(status, code, message, field, revision)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _json(exc.status, exc.code, exc.message, exc.field)

    @app.exception_handler(RequestValidationError)
    async def validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, field = _validation_message(list(exc.errors()))
        return _json(400, "invalid", message, field)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, ApiError):  # raised while the body was read (BodyLimit)
            cause = exc.__cause__
            return _json(cause.status, cause.code, cause.message, cause.field)
        code = _HTTP_CODES.get(exc.status_code, "invalid" if exc.status_code < 500 else "internal")
        detail = exc.detail if isinstance(exc.detail, str) else "error"
        if detail == "There was an error parsing the body":  # e.g. JSON nested too deep
            detail = "malformed JSON: the body could not be parsed"
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such path: {request.method} {request.url.path[:200]!r}"
        elif exc.status_code == 405:
            detail = f"method {request.method} is not allowed on {request.url.path[:200]!r}"
        response = _json(exc.status_code, code, detail)
        for key, value in (exc.headers or {}).items():
            response.headers[key] = value
        return response

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        log.error("admin API: %s %s failed", request.method, request.url.path, exc_info=exc)
        return _json(500, "internal", "internal error (logged by the controller)")


#: the error responses every /v1 operation may give, for the OpenAPI document
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": description, "model": None}
    for status, description in (
        (400, "Invalid input: the message names the field"),
        (401, "No token, or an unknown, expired or revoked one"),
        (403, "The token's role or gateway scope does not allow this"),
        (404, "No such object or path"),
        (409, "Conflict: duplicate, still referenced, or stale If-Match revision"),
        (413, "Request body over the size limit"),
        (503, "The policy database is unavailable"),
        (504, "wait_failed: a proxy did not run the new revision within wait="),
    )
}


class BodyLimit:
    """Refuse (413, nothing read further) a request body over ``limit`` bytes: by its
    Content-Length up front, else while it streams in. Also refuses (400) an HTTP version
    that is not 1.0 or 1.1 (h11 parses ``HTTP/9.9`` and would answer it)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope.get("http_version") not in ("1.0", "1.1", "2"):
            response = _json(400, "invalid", "unsupported HTTP version")
            await response(scope, receive, send)
            return
        for key, value in scope.get("headers", ()):
            if key == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = False
                if too_big:
                    await self._refuse(scope, receive, send)
                    return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise ApiError(413, "too_large", self._message())
            return message

        broken = False

        async def guarded_send(message: Message) -> None:
            # the server already answered this connection itself (a request whose body
            # turned out malformed after the app started, e.g. a bad chunk): the client
            # has its 400, and the app's late answer is dropped, not a traceback
            nonlocal broken
            if broken:
                return
            try:
                await send(message)
            except Exception as exc:
                broken = True
                log.debug("admin API: answer dropped, connection unusable: %s", exc)

        await self.app(scope, limited, guarded_send)

    def _message(self) -> str:
        return f"request body over the limit of {self.limit} bytes (--admin-max-body)"

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = _json(413, "too_large", self._message())
        await response(scope, receive, send)

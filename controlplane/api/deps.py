"""Minimal request dependencies for the history router, written against the admin API
contract: who calls (:class:`Principal`), the store, role and gateway-scope checks, and the
contract's JSON errors. The admin API application provides the real token authentication
(``controlplane.api.auth``) with the same names; this module stands in for it until then,
and refuses every caller (401) unless a dependency override says who calls.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ..errors import (
    Conflict,
    Forbidden,
    GatewayError,
    NotFound,
    PolicyInvalid,
    StoreError,
    Unauthorized,
    WaitFailed,
)
from ..store import Store

__all__ = [
    "ROLES",
    "Principal",
    "add_error_handlers",
    "check_write",
    "principal",
    "require_role",
    "store",
]

#: role -> rank: each role may do what the lower ones may
ROLES = {"viewer": 0, "editor": 1, "admin": 2}


@dataclass(frozen=True)
class Principal:
    """The caller: the token's name (recorded as the actor), role and gateway scope."""

    name: str
    role: str
    #: empty: every gateway; else only these gateways and their routes
    gateways: tuple[str, ...] = field(default_factory=tuple)


def principal(request: Request) -> Principal:
    """Who calls. Without the token authentication of the admin API, nobody (401)."""
    raise Unauthorized("missing or unknown API token")


def store(request: Request) -> Store:
    """The controller's store (``app.state.store``)."""
    s = getattr(request.app.state, "store", None)
    if s is None:
        raise StoreError("the admin API has no database")
    return s  # type: ignore[no-any-return]


def require_role(who: Principal, role: str) -> None:
    if ROLES.get(who.role, -1) < ROLES[role]:
        raise Forbidden(f"token {who.name!r} has role {who.role}; this needs {role}")


def _route_gateways(spec: dict[str, Any] | None) -> set[str]:
    if not spec:
        return set()
    value = spec.get("gateways") or ([spec["gateway"]] if spec.get("gateway") else [])
    return {str(g) for g in value}


def visible(who: Principal, kind: str, name: str, specs: Iterable[dict[str, Any] | None]) -> bool:
    """Whether a scoped token may read this object: its gateways, their routes, and every
    shared kind."""
    if not who.gateways:
        return True
    scope = set(who.gateways)
    if kind == "gateway":
        return name in scope
    if kind == "route":
        return any(_route_gateways(s) & scope for s in specs)
    return True


def check_write(
    who: Principal,
    kind: str,
    name: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> None:
    """Forbidden unless ``who`` may write this object: a scoped token only its gateways and
    routes whose gateways (old AND new value) are all in its scope; never a shared kind."""
    require_role(who, "editor")
    if not who.gateways:
        return
    scope = set(who.gateways)
    if kind == "gateway" and name in scope:
        return
    if kind == "route":
        gateways = _route_gateways(before) | _route_gateways(after)
        if gateways and gateways <= scope:
            return
    raise Forbidden(f"token {who.name!r} may not write {kind} {name!r} (outside its gateways)")


_STATUS = (
    (Unauthorized, "unauthorized", 401),
    (Forbidden, "forbidden", 403),
    (NotFound, "not_found", 404),
    (Conflict, "conflict", 409),
    (PolicyInvalid, "invalid", 400),
    (WaitFailed, "wait_failed", 504),
    (StoreError, "unavailable", 503),
)


def error_body(code: str, message: str, field_: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "field": field_}}


def add_error_handlers(app: FastAPI) -> None:
    """The contract's ``{"error": {...}}`` bodies for GatewayErrors and bad requests."""

    async def gateway_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, GatewayError)
        for cls, code, status in _STATUS:
            if isinstance(exc, cls):
                return JSONResponse(error_body(code, exc.message), status_code=status)
        return JSONResponse(error_body("invalid", exc.message), status_code=400)

    async def bad_request(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        loc = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query"))
        message = f"{loc}: {first.get('msg', 'invalid request')}" if loc else "invalid request"
        return JSONResponse(error_body("invalid", message, loc or None), status_code=400)

    app.add_exception_handler(GatewayError, gateway_error)
    app.add_exception_handler(RequestValidationError, bad_request)

"""Who is calling the admin API, and what that caller may do."""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from typing import Any

from ..errors import Forbidden, Unauthorized
from ..store.tokens import digest, lookup_token

__all__ = ["Principal", "authenticate", "check_write", "require_role", "visible"]

_ORDER = {"viewer": 0, "editor": 1, "admin": 2}


@dataclass(frozen=True)
class Principal:
    name: str
    role: str
    #: gateways this caller may touch; empty = every gateway
    gateways: frozenset[str]


def authenticate(store: Any, authorization: str | None) -> Principal:
    if not authorization:
        raise Unauthorized("missing Authorization: Bearer <token>")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization: expected Bearer <token>")
    token = token.strip()
    row = lookup_token(store, token)
    if row is None or not hmac.compare_digest(row.digest, digest(token)):
        raise Unauthorized("unknown token")
    if row.revoked_at is not None:
        raise Unauthorized(f"token {row.name!r} is revoked")
    if row.expires_at is not None and row.expires_at <= time.time():
        raise Unauthorized(f"token {row.name!r} has expired")
    return Principal(row.name, row.role, frozenset(row.gateways or ()))


def require_role(principal: Principal, role: str) -> None:
    if _ORDER.get(principal.role, -1) < _ORDER[role]:
        raise Forbidden(
            f"token {principal.name!r} ({principal.role}) may not do this: needs {role}"
        )


def _gateways_of(kind: str, name: str, spec: dict[str, Any] | None) -> set[str] | None:
    if spec is None:
        return set()
    if kind == "gateway":
        return {name}
    if kind == "route":
        return set(spec.get("gateways") or ())
    return None  # a shared kind


def check_write(
    principal: Principal,
    kind: str,
    name: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> None:
    require_role(principal, "editor")
    if not principal.gateways:
        return
    for spec in (before, after):
        gws = _gateways_of(kind, name, spec)
        if gws is None or not gws <= principal.gateways:
            raise Forbidden(
                f"{kind} {name!r}: token {principal.name!r} may write only gateways "
                f"{', '.join(sorted(principal.gateways))} and their routes"
            )


def visible(principal: Principal, kind: str, spec: dict[str, Any]) -> bool:
    if not principal.gateways:
        return True
    if kind == "gateway":
        return spec.get("name") in principal.gateways
    if kind == "route":
        return bool(set(spec.get("gateways") or ()) & principal.gateways)
    return True

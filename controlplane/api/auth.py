"""Who is calling the admin API, and what their token allows (roles and gateway scope).

Imported by the HTTP server for every request, so it stays light: no FastAPI, no store at
import time (the store module is imported by :func:`authenticate` when first called).

Roles, lowest first: ``viewer`` reads; ``editor`` also writes policy; ``admin`` also
manages tokens, reads secrets and the audit trail. A token with a non-empty ``gateways``
scope (editor or viewer only, see ``store/tokens.py``) may write only the ``gateway``
objects it names and the ``route`` objects whose every gateway it names, before and after
the change; every other kind is shared by all gateways and is read-only to it (ADR 0027).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import Forbidden, Unauthorized

if TYPE_CHECKING:
    from ..store import Store
    from ..store.tokens import TokenInfo

__all__ = [
    "ROLES",
    "SCOPED_KINDS",
    "Principal",
    "authenticate",
    "check_write",
    "principal_of",
    "require_admin",
    "require_role",
    "visible",
]

#: lowest to highest
ROLES = ("viewer", "editor", "admin")
_RANK = {role: i for i, role in enumerate(ROLES)}
#: the kinds that belong to gateways; a scoped token writes only these (within its scope)
SCOPED_KINDS = frozenset({"gateway", "route"})
_SCHEME = "bearer"
#: a well-formed token: what is checked before any database read
_PREFIX = "gw_"
_TOKEN_LEN = 3 + 43
_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@dataclass(frozen=True)
class Principal:
    """The caller of one request: the token's name, role and gateway scope."""

    name: str
    role: str
    #: the gateways the token may touch; empty = every gateway
    gateways: frozenset[str]

    @property
    def scoped(self) -> bool:
        return bool(self.gateways)


def principal_of(info: TokenInfo) -> Principal:
    """The principal of a stored token."""
    return Principal(name=info.name, role=info.role, gateways=frozenset(info.gateways))


def _well_formed(token: str) -> bool:
    return (
        len(token) == _TOKEN_LEN
        and token.startswith(_PREFIX)
        and all(ch in _ALPHABET for ch in token[3:])
    )


def authenticate(store: Store, authorization: str | None) -> Principal:
    """The principal of an ``Authorization: Bearer <token>`` header.

    Missing, malformed, unknown, expired or revoked: :class:`Unauthorized` with a one-line
    reason that never contains the token. Unknown, expired and revoked tokens get the same
    reason, so a caller cannot probe which tokens once existed. The token is looked up by
    its SHA-256 digest and the digests compared in constant time (``lookup_token``).
    """
    if authorization is None or not authorization.strip():
        raise Unauthorized("missing credentials: send 'Authorization: Bearer <token>'")
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != _SCHEME or not token:
        raise Unauthorized("malformed Authorization header: expected 'Bearer <token>'")
    if not _well_formed(token):
        raise Unauthorized("malformed token: expected gw_ followed by 43 base64url characters")
    from ..store.tokens import lookup_token

    info = lookup_token(store, token)
    if info is None:
        raise Unauthorized("invalid token: unknown, expired or revoked")
    return principal_of(info)


def _describe(principal: Principal) -> str:
    return f"token {principal.name!r} ({principal.role})"


def require_role(principal: Principal, role: str, action: str | None = None) -> None:
    """:class:`Forbidden` unless ``principal`` has ``role`` or a higher one.

    ``action`` completes the message ("token 'ci' (viewer) may not <action>"); by default
    it names the role needed.
    """
    if role not in _RANK:
        raise ValueError(f"unknown role {role!r}")
    if _RANK.get(principal.role, -1) < _RANK[role]:
        what = action or f"do what needs the {role} role"
        raise Forbidden(f"{_describe(principal)} may not {what} (needs role {role} or higher)")


def require_admin(principal: Principal, action: str) -> None:
    """For what concerns every gateway (tokens, secrets, the audit trail): the admin role,
    unscoped. Admin tokens are never scoped (``add_token`` refuses it); the scope check is
    kept so that a row written around that rule grants nothing more."""
    require_role(principal, "admin", action)
    if principal.scoped:
        raise Forbidden(f"{_describe(principal)} may not {action}: it is limited to gateways")


def _route_gateways(spec: dict[str, Any] | None) -> set[str]:
    gateways = (spec or {}).get("gateways") or []
    return {g for g in gateways if isinstance(g, str)}


def check_write(
    principal: Principal,
    kind: str,
    name: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> None:
    """:class:`Forbidden` unless ``principal`` may make this change of one object.

    ``before``/``after`` are the object's spec before and after (None: absent, i.e. a create
    or a delete). Viewers write nothing. A scoped token writes a ``gateway`` only if its
    name is in scope, and a ``route`` only if all gateways of both its old and new spec are
    in scope (so it can neither take over nor give away a route of another gateway). Every
    other kind is shared by all gateways and refused to it.
    """
    require_role(principal, "editor", f"write {kind} {name!r}")
    if not principal.scoped:
        return
    scope = principal.gateways
    allowed = ", ".join(sorted(scope))
    if kind == "gateway":
        if name not in scope:
            raise Forbidden(
                f"{_describe(principal)} may not write gateway {name!r}: "
                f"it is limited to gateways {allowed}"
            )
        return
    if kind == "route":
        for label, spec in (("currently serves", before), ("would serve", after)):
            if spec is not None and not _route_gateways(spec):
                raise Forbidden(
                    f"{_describe(principal)} may not write route {name!r}: it {label} no "
                    f"gateway listed, so it is not within the token's scope ({allowed})"
                )
            outside = sorted(_route_gateways(spec) - scope)
            if outside:
                raise Forbidden(
                    f"{_describe(principal)} may not write route {name!r}: it {label} "
                    f"gateway {', '.join(repr(g) for g in outside)}, outside its scope ({allowed})"
                )
        return
    raise Forbidden(
        f"{_describe(principal)} may not write {kind} {name!r}: a {kind} is shared by all "
        f"gateways and the token is limited to gateways {allowed}"
    )


def visible(principal: Principal, kind: str, spec: dict[str, Any], name: str | None = None) -> bool:
    """Whether a scoped token sees this object when listing: its gateways, the routes that
    serve any of its gateways (it must see every route that shapes its traffic, even one it
    may not change), and every shared kind. Unscoped tokens see everything. ``name``
    defaults to ``spec["name"]``."""
    if not principal.scoped:
        return True
    if kind == "gateway":
        return (name if name is not None else spec.get("name")) in principal.gateways
    if kind == "route":
        return bool(_route_gateways(spec) & principal.gateways)
    return True

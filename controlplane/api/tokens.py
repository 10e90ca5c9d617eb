"""``/v1/tokens``: admin API tokens (admin role only). The token is shown once, at creation."""

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Path, Response
from pydantic import BaseModel, ConfigDict, Field

from ..policy.common import _NAME_RE
from .auth import require_role
from .deps import Caller, StoreDep
from .errors import ERROR_RESPONSES
from .policy import parse_expiry

__all__ = ["router"]

router = APIRouter(prefix="/v1", responses=ERROR_RESPONSES, tags=["tokens"])

TokenName = Annotated[str, Field(pattern=_NAME_RE.pattern, max_length=63)]


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: TokenName
    role: Literal["admin", "editor", "viewer"]
    gateways: list[TokenName] = Field(
        default_factory=list, max_length=1000, description="Empty: every gateway."
    )
    expires: str | None = Field(
        default=None, max_length=64, description="30d, 12h, 90m, or an ISO 8601 time."
    )


class TokenOut(BaseModel):
    name: str
    role: str
    gateways: list[str]
    created_at: float | None
    expires_at: float | None
    revoked_at: float | None
    last_used_at: float | None


class TokenCreated(TokenOut):
    token: str = Field(description="The token itself: shown this once, never again.")


class TokenList(BaseModel):
    items: list[TokenOut]


def _row(t: Any) -> dict[str, Any]:
    return {
        "name": t.name,
        "role": t.role,
        "gateways": list(t.gateways or []),
        "created_at": t.created_at,
        "expires_at": t.expires_at,
        "revoked_at": t.revoked_at,
        "last_used_at": t.last_used_at,
    }


@router.get("/tokens", response_model=TokenList)
def list_tokens(principal: Caller, store: StoreDep) -> dict[str, Any]:
    """Every token (never the token itself)."""
    from ..store import tokens

    require_role(principal, "admin")
    return {"items": [_row(t) for t in tokens.list_tokens(store)]}


@router.post("/tokens", response_model=TokenCreated, status_code=201)
def add_token(
    body: Annotated[TokenIn, Body()], principal: Caller, store: StoreDep, response: Response
) -> dict[str, Any]:
    """Create a token; the answer's ``token`` is the only time it is shown."""
    from ..store import tokens

    require_role(principal, "admin")
    expires = parse_expiry(body.expires)
    plaintext = tokens.add_token(
        store,
        body.name,
        body.role,
        tuple(body.gateways),
        expires.timestamp() if expires else None,
        created_by=principal.name,
    )
    row = next(t for t in tokens.list_tokens(store) if t.name == body.name)
    return {**_row(row), "token": plaintext}


@router.delete("/tokens/{name}", response_model=dict[str, str])
def revoke_token(
    name: Annotated[str, Path(pattern=_NAME_RE.pattern, max_length=63)],
    principal: Caller,
    store: StoreDep,
) -> dict[str, str]:
    """Revoke a token: its next call is refused (401)."""
    from ..store import tokens

    require_role(principal, "admin")
    tokens.revoke_token(store, name)
    return {"revoked": name}

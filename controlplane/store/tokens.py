"""Admin API tokens: random, shown once, stored as a SHA-256 digest (table ``api_tokens``)."""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Any

from sqlalchemy import insert, select, update

from ..errors import Conflict, NotFound
from .tables import ApiToken

__all__ = ["add_token", "digest", "list_tokens", "lookup_token", "revoke_token"]


def digest(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def add_token(
    store: Any,
    name: str,
    role: str,
    gateways: tuple[str, ...] | list[str] = (),
    expires_at: float | None = None,
) -> str:
    """Create a token and return it in plaintext: the only time it is seen."""
    plaintext = "gw_" + secrets.token_urlsafe(32)
    with store._writer.begin() as conn:
        if conn.execute(select(ApiToken.name).where(ApiToken.name == name)).first():
            raise Conflict(f"token {name!r} already exists")
        conn.execute(
            insert(ApiToken).values(
                name=name,
                digest=digest(plaintext),
                role=role,
                gateways=sorted(gateways),
                created_at=time.time(),
                expires_at=expires_at,
            )
        )
    return plaintext


def lookup_token(store: Any, plaintext: str) -> Any:
    with store._reader.connect() as conn:
        row = conn.execute(
            select(ApiToken.__table__).where(ApiToken.digest == digest(plaintext))
        ).first()
    return row


def list_tokens(store: Any) -> list[Any]:
    with store._reader.connect() as conn:
        return list(conn.execute(select(ApiToken.__table__).order_by(ApiToken.name)))


def revoke_token(store: Any, name: str) -> None:
    with store._writer.begin() as conn:
        done = conn.execute(
            update(ApiToken)
            .where(ApiToken.name == name, ApiToken.revoked_at.is_(None))
            .values(revoked_at=time.time())
        )
        if not done.rowcount:
            raise NotFound(f"token {name!r} does not exist or is already revoked")

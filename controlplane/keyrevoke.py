"""Revoking an API key: one rule for the CLI and the admin API.

A revoked key stays listed (with when) but its secret is erased, so no proxy accepts it and
no later rollback can bring it back. A row whose secret no longer decrypts (damaged or
forged) cannot be served by any proxy either: it is removed instead.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from .errors import Conflict, NotFound, StoreError
from .policy import ApiKey
from .store import ApplyResult, Store

__all__ = ["revoke_key"]


def revoke_key(
    store: Store, key_id: str, *, expect_revision: int | None = None
) -> tuple[ApplyResult, str]:
    """Revoke ``key_id`` as one write; returns the write and a line saying what was done."""
    now = datetime.now(UTC).replace(microsecond=0)

    def revoke_now(spec: dict[str, Any]) -> dict[str, Any]:
        key = ApiKey.model_validate(spec)
        if key.revoked:
            raise Conflict(f"api key {key_id!r} was already revoked at {spec['revoked_at']}")
        return key.revoke(now).spec()

    try:
        result = store.update("api_key", key_id, revoke_now, expect_revision=expect_revision)
        return result, f"api key {key_id} revoked"
    except NotFound:
        raise NotFound(f"api key {key_id!r} does not exist") from None
    except StoreError:
        revision = store.delete("api_key", key_id, expect_revision=expect_revision)
        done = f"api key {key_id} removed (its stored secret does not decrypt)"
        return ApplyResult(revision), done

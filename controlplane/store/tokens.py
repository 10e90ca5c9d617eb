"""Admin API tokens: created once, stored as a SHA-256 digest, revocable, optionally expiring.

A token is ``gw_`` followed by 43 URL-safe base64 characters (32 random bytes from
:mod:`secrets`). Only ``sha256(token)`` is stored: with 256 random bits there is nothing to
brute-force, so a salt or a slow KDF would add cost to every request and no protection
(ADR 0027). Tokens are not policy: writing them never bumps the revision; creating and
revoking one is recorded as an ``events`` row (kind ``token``) naming who did it.

The first admin token is made by :func:`ensure_bootstrap_token` when a controller starts on
a database without an active admin token: it is written to a file created with mode 0600
and never overwrites one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, insert, or_, select, update
from sqlalchemy.exc import IntegrityError, OperationalError

from ..errors import Conflict, NotFound, PolicyInvalid, StoreError
from .actor import current_actor
from .repository import Store
from .tables import ApiToken, EventRow, Meta, Resource

__all__ = [
    "BOOTSTRAP_NAME",
    "ROLES",
    "TOKEN_PATTERN",
    "TokenInfo",
    "add_token",
    "bootstrap_admin",
    "bootstrap_path",
    "digest_of",
    "ensure_bootstrap_token",
    "get_token",
    "list_tokens",
    "lookup_digest",
    "lookup_token",
    "new_token",
    "revoke_token",
    "unknown_gateways",
]

log = logging.getLogger(__name__)

#: lowest to highest; the same tuple as ``controlplane.api.auth.ROLES``
ROLES = ("viewer", "editor", "admin")
#: the whole token: prefix and 43 characters of URL-safe base64 (32 bytes, no padding)
TOKEN_PATTERN = re.compile(r"^gw_[A-Za-z0-9_-]{43}$")
#: the name of the token a controller creates on a database without an admin token
BOOTSTRAP_NAME = "bootstrap-admin"
#: token names follow the object-name rule: no ``:``, so no token can pass for the
#: ``local:<user>`` actor of the CLI working on the database itself
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
#: ``last_used_at`` is written at most this often per token, so reads do not write each time
LAST_USED_EVERY = 60.0


@dataclass(frozen=True)
class TokenInfo:
    """Everything known about a token except the token itself (never stored)."""

    name: str
    role: str
    #: the gateways it may touch; empty = every gateway
    gateways: tuple[str, ...]
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None
    last_used_at: float | None = None
    created_by: str | None = None

    def active(self, now: float | None = None) -> bool:
        """Neither revoked nor expired (at ``now``, default: the current time)."""
        now = time.time() if now is None else now
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or self.expires_at > now

    def as_dict(self) -> dict[str, Any]:
        """JSON form for ``token list -o json`` and ``GET /v1/tokens``: times in ISO 8601."""
        return {
            "name": self.name,
            "role": self.role,
            "gateways": list(self.gateways),
            "created_at": _iso(self.created_at),
            "expires_at": _iso(self.expires_at),
            "revoked_at": _iso(self.revoked_at),
            "last_used_at": _iso(self.last_used_at),
            "created_by": self.created_by,
        }


def _iso(at: float | None) -> str | None:
    return None if at is None else datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")


def new_token() -> str:
    """A fresh token: ``gw_`` + URL-safe base64 of 32 random bytes."""
    return "gw_" + secrets.token_urlsafe(32)


def digest_of(token: str) -> str:
    """What is stored and looked up: the SHA-256 of the whole token, in hex."""
    return hashlib.sha256(token.encode()).hexdigest()


def _info(row: Any) -> TokenInfo:
    return TokenInfo(
        name=row.name,
        role=row.role,
        gateways=tuple(row.gateways or ()),
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
        created_by=row.created_by,
    )


_COLUMNS = (
    ApiToken.name,
    ApiToken.role,
    ApiToken.gateways,
    ApiToken.created_at,
    ApiToken.expires_at,
    ApiToken.revoked_at,
    ApiToken.last_used_at,
    ApiToken.created_by,
)


def _check(name: str, role: str, gateways: Iterable[str], expires_at: float | None) -> list[str]:
    """The token's fields, checked; the error names the token and the field."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise PolicyInvalid(
            f"token {str(name)[:70]!r}: name: must be 1-63 lower-case letters, digits, '-', "
            "'_' or '.', starting and ending with a letter or digit"
        )
    if role not in ROLES:
        raise PolicyInvalid(
            f"token {name!r}: role: {str(role)[:40]!r} is not one of {', '.join(ROLES)}"
        )
    scope: list[str] = []
    for i, gw in enumerate(gateways):
        if not isinstance(gw, str) or not _NAME_RE.match(gw):
            raise PolicyInvalid(
                f"token {name!r}: gateways[{i}]: {str(gw)[:70]!r} is no gateway name"
            )
        if gw not in scope:
            scope.append(gw)
    if scope and role == "admin":
        # admin manages tokens, secrets and the audit of every gateway: a scope would not
        # limit it (it could create an unscoped token), so it is refused rather than implied
        raise PolicyInvalid(
            f"token {name!r}: gateways: an admin token cannot be limited to gateways "
            "(use --role editor or viewer for a gateway-scoped token)"
        )
    if expires_at is not None and expires_at <= time.time():
        raise PolicyInvalid(f"token {name!r}: expires_at: is in the past")
    return sorted(scope)


def _event(conn: Connection, detail: str, now: float) -> None:
    """Record a token change with its actor among the events (never bumps the revision)."""
    conn.execute(
        insert(EventRow).values(
            at=now, kind="token", gateway="", node=current_actor(), revision=None, detail=detail
        )
    )


def _insert(
    conn: Connection,
    name: str,
    role: str,
    scope: list[str],
    expires_at: float | None,
    created_by: str | None,
    now: float,
) -> str:
    token = new_token()
    conn.execute(
        insert(ApiToken).values(
            name=name,
            digest=digest_of(token),
            role=role,
            gateways=scope,
            created_at=now,
            expires_at=expires_at,
            revoked_at=None,
            last_used_at=None,
            created_by=created_by if created_by is not None else current_actor(),
        )
    )
    where = f" for gateways {', '.join(scope)}" if scope else ""
    _event(conn, f"token {name!r} ({role}{where}) created", now)
    return token


def add_token(
    store: Store,
    name: str,
    role: str,
    gateways: Iterable[str] = (),
    expires_at: float | None = None,
    created_by: str | None = None,
) -> str:
    """Create a token and return it: the only time it exists outside its holder's hands.

    A gateway in ``gateways`` need not exist yet (a token for a gateway about to be created
    is legitimate; :func:`unknown_gateways` tells the caller which ones do not, to warn).
    Duplicate name: :class:`Conflict`; bad name, role, gateway or expiry:
    :class:`PolicyInvalid` naming the field. ``created_by`` defaults to the current actor.
    """
    scope = _check(name, role, gateways, expires_at)
    store.check_writable()
    now = time.time()
    try:
        with store._writer.begin() as conn:
            return _insert(conn, name, role, scope, expires_at, created_by, now)
    except IntegrityError:
        raise Conflict(
            f"token {name!r} already exists (revoke it or choose another name)"
        ) from None
    except OperationalError as exc:
        raise StoreError(f"database error: {exc.orig}") from None


def unknown_gateways(store: Store, gateways: Iterable[str]) -> list[str]:
    """Those of ``gateways`` that no gateway object has (yet)."""
    wanted = sorted(set(gateways))
    if not wanted:
        return []
    with store._reader.connect() as conn:
        found = set(
            conn.execute(
                select(Resource.name).where(Resource.kind == "gateway", Resource.name.in_(wanted))
            ).scalars()
        )
    return [g for g in wanted if g not in found]


def list_tokens(store: Store) -> list[TokenInfo]:
    """Every token, revoked and expired ones included, by name; never a secret."""
    with store._reader.connect() as conn:
        rows = conn.execute(select(*_COLUMNS).order_by(ApiToken.name)).all()
    return [_info(r) for r in rows]


def get_token(store: Store, name: str) -> TokenInfo:
    """One token's record (never its secret); :class:`NotFound` if there is none."""
    with store._reader.connect() as conn:
        row = conn.execute(select(*_COLUMNS).where(ApiToken.name == name)).first()
    if row is None:
        raise NotFound(f"token {name!r} does not exist")
    return _info(row)


def revoke_token(store: Store, name: str) -> TokenInfo:
    """Revoke a token at once (its next request is refused); revoking twice keeps the first
    time. The row stays, so the name keeps naming the same holder in history and audit."""
    store.check_writable()
    now = time.time()
    with store._writer.begin() as conn:
        row = conn.execute(select(*_COLUMNS).where(ApiToken.name == name)).first()
        if row is None:
            raise NotFound(f"token {name!r} does not exist")
        if row.revoked_at is None:
            conn.execute(update(ApiToken).where(ApiToken.name == name).values(revoked_at=now))
            _event(conn, f"token {name!r} revoked", now)
            row = conn.execute(select(*_COLUMNS).where(ApiToken.name == name)).one()
    return _info(row)


def lookup_token(store: Store, plaintext: str) -> TokenInfo | None:
    """The active token whose digest matches ``plaintext``; None if none does (unknown,
    revoked or expired alike: the caller learns nothing about which).

    The row is found by digest and the digests then compared with
    :func:`hmac.compare_digest`, so no comparison on secret data ends early. ``last_used_at``
    is updated at most once a minute per token.
    """
    return lookup_digest(store, digest_of(plaintext))


def lookup_digest(store: Store, wanted: str) -> TokenInfo | None:
    """:func:`lookup_token` by the token's digest: what a console session keeps, so the
    controller's memory holds no plaintext token once the login is done."""
    import hmac

    with store._reader.connect() as conn:
        row = conn.execute(
            select(*_COLUMNS, ApiToken.digest).where(ApiToken.digest == wanted)
        ).first()
    if row is None or not hmac.compare_digest(row.digest, wanted):
        return None
    info = _info(row)
    now = time.time()
    if not info.active(now):
        return None
    due = info.last_used_at is None or now - info.last_used_at >= LAST_USED_EVERY
    if due and not store.paused:  # paused: the file was replaced, nothing may be written
        try:
            with store._writer.begin() as conn:
                conn.execute(
                    update(ApiToken)
                    .where(
                        ApiToken.name == info.name,
                        or_(
                            ApiToken.last_used_at.is_(None),
                            ApiToken.last_used_at < now - LAST_USED_EVERY,
                        ),
                    )
                    .values(last_used_at=now)
                )
        except OperationalError as exc:  # a busy database must not refuse a valid token
            log.warning("token %r: last use not recorded: %s", info.name, exc.orig)
    return info


# -- bootstrap ------------------------------------------------------------------------------


def _has_active_admin(conn: Connection, now: float) -> bool:
    return (
        conn.execute(
            select(ApiToken.name)
            .where(
                ApiToken.role == "admin",
                ApiToken.revoked_at.is_(None),
                or_(ApiToken.expires_at.is_(None), ApiToken.expires_at > now),
            )
            .limit(1)
        ).first()
        is not None
    )


def _bootstrap_name(conn: Connection) -> str:
    """``bootstrap-admin``, or ``bootstrap-admin-N`` (smallest free N >= 2) once earlier
    bootstrap tokens were revoked or expired: deterministic, so two controllers racing pick
    the same name and the unique key lets only one of them insert it."""
    taken = set(
        conn.execute(
            select(ApiToken.name).where(ApiToken.name.like(f"{BOOTSTRAP_NAME}%"))
        ).scalars()
    )
    if BOOTSTRAP_NAME not in taken:
        return BOOTSTRAP_NAME
    n = 2
    while f"{BOOTSTRAP_NAME}-{n}" in taken:
        n += 1
    return f"{BOOTSTRAP_NAME}-{n}"


def _check_folder(folder: Path) -> None:
    """Refuse a folder anyone may write without the sticky bit: another user could swap
    the token file for their own between our write and the operator's read."""
    st = folder.stat()
    if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        raise StoreError(
            f"admin token file: folder {folder} is writable by every user (and not sticky); "
            "choose another --admin-token-file"
        )


def _create_private(path: Path) -> int:
    """Create ``path`` (never an existing file or symlink) readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _check_folder(path.parent)
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o600)
    os.fchmod(fd, 0o600)  # whatever the umask
    return fd


def ensure_bootstrap_token(store: Store, path: Path) -> str | None:
    """Make the first admin token when the database has no active one; None otherwise.

    The token is written to ``path``, created with mode 0600 (``O_EXCL``: an existing file
    is never overwritten, :class:`Conflict` then; the database is left unchanged). The
    check and the insert run in one write transaction that first locks the ``meta`` row
    (PostgreSQL; SQLite's writer holds the database lock), so two controllers starting on
    one database create one token between them; the unique name is a second guard.
    """
    path = Path(path).expanduser()
    now = time.time()
    fd: int | None = None
    try:
        with store._writer.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(select(Meta.id).where(Meta.id == 1).with_for_update())
            if _has_active_admin(conn, now):
                return None
            name = _bootstrap_name(conn)
            try:
                fd = _create_private(path)
            except FileExistsError:
                raise Conflict(
                    f"admin token file {path} already exists and the database has no active "
                    "admin token: not overwriting it (remove the file and start again, or "
                    "create one with: gatewayctl token add NAME --role admin)"
                ) from None
            except OSError as exc:
                raise StoreError(
                    f"admin token file {path}: {exc.strerror} (choose another "
                    "--admin-token-file, or create a token with: gatewayctl token add NAME "
                    "--role admin)"
                ) from None
            try:
                token = _insert(conn, name, "admin", [], None, "bootstrap", now)
                os.write(fd, (token + "\n").encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        return token
    except IntegrityError:
        # another controller inserted the same bootstrap name first: it made the token
        if fd is not None:
            path.unlink(missing_ok=True)
        return None
    except BaseException:
        if fd is not None:  # the file is ours, but its token was not committed
            path.unlink(missing_ok=True)
        raise


def bootstrap_path(url: str, explicit: str | os.PathLike[str] | None = None) -> Path:
    """Where the bootstrap token goes: ``explicit`` (``--admin-token-file``), else next to
    a SQLite database file (``<folder>/admin-token``, as private as the database), else
    ``$XDG_CONFIG_HOME/gatewayctl/admin-token`` (PostgreSQL, in-memory SQLite)."""
    if explicit:
        return Path(explicit).expanduser()
    from .db import sqlite_path

    db_file = sqlite_path(url)
    if db_file is not None:
        return Path(db_file).parent / "admin-token"
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "gatewayctl" / "admin-token"


def bootstrap_admin(store: Store, explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """What a starting controller does: :func:`ensure_bootstrap_token` at
    :func:`bootstrap_path`, saying so on standard error; the file's path when a token was
    written. A file that cannot be written (it exists, its folder is unsafe or not
    writable) is a warning, not a failure: serving policy to proxies matters more, nothing
    is written, and the warning says how to get an admin token."""
    import sys

    path = bootstrap_path(store.url, explicit)
    try:
        token = ensure_bootstrap_token(store, path)
    except (Conflict, StoreError) as exc:
        log.warning("no admin token made: %s", exc)
        return None
    if token is None:
        return None
    print(f"admin token written to {path} (mode 0600)", file=sys.stderr, flush=True)
    return path

"""What every command shares: where it works (the database, or a controller's admin API),
the output format, and the lazily opened store or client.

Nothing heavy is imported here: the store (SQLAlchemy, pydantic) is imported the first time a
command asks for it, so ``--help`` and remote commands never pay for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import typer

from ..errors import PolicyInvalid
from .output import Format, stderr

if TYPE_CHECKING:  # the store is imported when a command opens it, not at start-up
    from ..store import ApplyResult, Store
    from .client import Client
    from .contexts import Target

__all__ = ["Ctx", "ValidateMode", "ctx_of", "finish_atomic", "finish_change", "finish_remote"]


class ValidateMode(StrEnum):
    """``--validate``: when writes are checked by the real Envoy (controlplane/validate.py)."""

    auto = "auto"
    always = "always"
    never = "never"


@dataclass
class Ctx:
    db: str | None
    output: Format
    validate: str = "auto"
    #: ``--context NAME`` (or GATEWAY_CONTEXT); None: the resolution order decides
    context: str | None = None
    _store: Store | None = field(default=None, repr=False)
    _target: Target | None = field(default=None, repr=False)
    _resolved: bool = field(default=False, repr=False)
    _client: Client | None = field(default=None, repr=False)
    #: the running command (``gatewayctl secrets status``), named in refusals
    command_path: str = "this command"

    @property
    def target(self) -> Target | None:
        """The admin API this invocation talks to, or None for the local database."""
        if not self._resolved:
            from .contexts import resolve

            self._target = resolve(self.db, self.context)
            self._resolved = True
        return self._target

    @property
    def remote(self) -> Client | None:
        """A client of the admin API when the command runs against a controller."""
        target = self.target
        if target is None:
            return None
        if self._client is None:
            from .client import Client

            self._client = Client.for_target(target)
        return self._client

    @property
    def store(self) -> Store:
        """The policy database. A command that needs it while a controller's API is the
        target refuses in one line: it has no endpoint, it works on the database itself."""
        if self._store is None:
            self.require_local()
            self._store = self._open()
        return self._store

    def require_local(self, what: str | None = None) -> None:
        """Refuse, in one line, a command that works on a database file while the target is
        a controller's admin API: it never silently opens (or creates) a local database."""
        target = self.target
        if target is None:
            return
        how = (
            "unset GATEWAY_URL"
            if target.source == "GATEWAY_URL"
            else f"leave {target.source} (--context, GATEWAY_CONTEXT, `gatewayctl context`)"
        )
        raise PolicyInvalid(
            f"{what or self.command_path} works on the local database only: use --db or "
            f"{how} (the current target is the admin API at {target.url})"
        )

    def local_store(self) -> Store:
        """The database whatever the context (``serve``, ``up``, ``init`` ignore contexts)."""
        if self._store is None:
            self._store = self._open()
        return self._store

    def _open(self) -> Store:
        from ..store import Store

        return Store(self.db, validator=_FirstWriteValidator(self.validate))


class _FirstWriteValidator:
    """Envoy's check of a write (controlplane/validate.py), imported by the first write:
    a read command never loads it and the Envoy protobufs it draws on (~0.25 s of a local
    command's start-up, docs/benchmarks.md)."""

    def __init__(self, mode: str) -> None:
        self._mode = mode
        self._validator: Any = None

    def __call__(self, view: Any) -> list[str]:
        if self._validator is None:
            from ..validate import EnvoyValidator

            def warn(note: str) -> None:
                stderr.print(f"note: {note}", markup=False)

            self._validator = EnvoyValidator(self._mode, warn=warn)
        notes: list[str] = self._validator(view)
        return notes


def ctx_of(typer_ctx: typer.Context) -> Ctx:
    obj = typer_ctx.find_root().obj
    assert isinstance(obj, Ctx)
    obj.command_path = typer_ctx.command_path
    return obj


def finish_change(ctx: Ctx, revision: int, message: str, wait: str | None) -> None:
    """Report a committed change; with ``--wait`` return only once proxies run it."""
    from .wait import parse_timeout, wait_for_revision

    stderr.print(f"{message} (revision {revision})")
    if wait is None:
        return
    for note in wait_for_revision(ctx.store, revision, parse_timeout(wait)):
        stderr.print(f"note: {note}")
    stderr.print(f"revision {revision} is live on every connected proxy")


def finish_atomic(ctx: Ctx, result: ApplyResult, message: str, wait: str | None) -> None:
    """``--atomic``: report the change and wait for the proxies (30 s unless ``--wait``
    says otherwise); if a proxy rejects it or does not run it in time, write the previous
    values of the changed objects back as a new revision and fail (WaitFailed, exit 7)."""
    from .wait import parse_timeout, wait_or_revert

    stderr.print(f"{message} (revision {result.revision})")
    notes = wait_or_revert(ctx.store, result, parse_timeout(wait or "30s"))
    for note in notes:
        stderr.print(f"note: {note}")
    stderr.print(f"revision {result.revision} is live on every connected proxy")


def finish_remote(response: dict[str, Any], message: str, wait: str | None) -> None:
    """Report a change the admin API committed; the server did the waiting (``wait=``)."""
    revision = response.get("revision")
    stderr.print(f"{message} (revision {revision})", markup=False)
    if wait is None:
        return
    for note in response.get("notes") or []:
        stderr.print(f"note: {note}", markup=False)
    stderr.print(f"revision {revision} is live on every connected proxy")

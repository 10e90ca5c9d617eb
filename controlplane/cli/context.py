"""What every command shares: the database choice, the output format, the lazily opened store."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

import typer

from ..errors import Conflict, GatewayError, WaitFailed
from .output import Format, stderr
from .wait import parse_timeout, wait_for_revision

if TYPE_CHECKING:  # the store is imported when a command opens it, not at start-up
    from ..store import ApplyResult, Store

__all__ = ["Ctx", "ValidateMode", "finish_atomic", "finish_change"]


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
    _store: Store | None = field(default=None, repr=False)

    @property
    def store(self) -> Store:
        if self._store is None:
            from ..store import Store
            from ..validate import EnvoyValidator

            def warn(note: str) -> None:
                stderr.print(f"note: {note}", markup=False)

            self._store = Store(self.db, validator=EnvoyValidator(self.validate, warn=warn))
        return self._store


def ctx_of(typer_ctx: typer.Context) -> Ctx:
    obj = typer_ctx.find_root().obj
    assert isinstance(obj, Ctx)
    return obj


def finish_change(ctx: Ctx, revision: int, message: str, wait: str | None) -> None:
    """Report a committed change; with ``--wait`` return only once proxies run it."""
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
    stderr.print(f"{message} (revision {result.revision})")
    try:
        notes = wait_for_revision(ctx.store, result.revision, parse_timeout(wait or "30s"))
    except WaitFailed as exc:
        try:
            undone = ctx.store.revert(result)
        except GatewayError as undo:
            what = "newer changes were written since" if isinstance(undo, Conflict) else undo
            raise WaitFailed(
                f"{exc}; the change was NOT rolled back ({what}): revision {result.revision} "
                "stays the newest"
            ) from None
        try:
            wait_for_revision(ctx.store, undone.revision, parse_timeout(wait or "30s"))
            live = "and every connected proxy runs it"
        except WaitFailed as again:
            live = f"but not every proxy runs it yet: {again}"
        raise WaitFailed(
            f"{exc}; rolled back: revision {undone.revision} restores what revision "
            f"{result.revision} changed, {live}"
        ) from None
    for note in notes:
        stderr.print(f"note: {note}")
    stderr.print(f"revision {result.revision} is live on every connected proxy")

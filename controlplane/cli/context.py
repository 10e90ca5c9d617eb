"""What every command shares: the database choice, the output format, the lazily opened store."""

from __future__ import annotations

from dataclasses import dataclass, field

import typer

from ..store import Store
from .output import Format, stderr
from .wait import parse_timeout, wait_for_revision

__all__ = ["Ctx", "finish_change"]


@dataclass
class Ctx:
    db: str | None
    output: Format
    _store: Store | None = field(default=None, repr=False)

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.db)
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

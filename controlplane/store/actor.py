"""Who is writing: the name recorded with every change (history, audit).

The admin API sets it per request from the caller's token; the CLI working on the database
itself is ``local:<os user>``. A context variable, so concurrent requests served by one
process (threads, tasks) each record their own caller without passing it through every
store call.
"""

from __future__ import annotations

import getpass
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["acting_as", "current_actor"]

_actor: ContextVar[str | None] = ContextVar("gateway_actor", default=None)


def _local() -> str:
    try:
        return f"local:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry (containers with a bare uid)
        return "local"


def current_actor() -> str:
    """The caller of the write in progress: set by :func:`acting_as`, else the local user."""
    return _actor.get() or _local()


@contextmanager
def acting_as(name: str) -> Iterator[None]:
    token = _actor.set(name)
    try:
        yield
    finally:
        _actor.reset(token)

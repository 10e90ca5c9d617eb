"""The revision watcher (``Runner``) run beside a test, and waiting for what it applies:
shared by the tests of what wakes it (the SQLite file watch, the commit hook)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from controlplane.runner import Runner
from controlplane.store import Store
from controlplane.xds.cache import SnapshotCache

#: generous: a wake-up takes microseconds, but the machine may be loaded
PATIENCE = 20.0


async def until(condition: Callable[[], object], what: str) -> None:
    """Return once ``condition()`` is true; fail naming ``what`` after ``PATIENCE``."""
    deadline = asyncio.get_running_loop().time() + PATIENCE
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {PATIENCE} s: {what}")
        await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def watcher_running(store: Store) -> AsyncIterator[Runner]:
    """A loaded ``Runner`` over ``store`` running its loop, polling once a minute: within
    ``PATIENCE`` only a file event or a commit hook can wake it."""
    runner = Runner(store, SnapshotCache(), controller="t", xds_address="-", poll_interval=60)
    await runner.load()
    task = asyncio.create_task(runner.run())
    try:
        await asyncio.sleep(0.2)  # the loop is waiting for its wake-up now
        yield runner
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

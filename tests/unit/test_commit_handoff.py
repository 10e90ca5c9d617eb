"""A write of the controller's own process reaches its watcher at once, without a file
event or a poll: the store calls its ``on_commit`` hooks after each commit of a change, and
the runner's hook wakes its loop. On PostgreSQL, which has no file event, the write would
otherwise wait up to the poll interval."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from controlplane import runner as runner_module
from controlplane.policy import Cluster
from controlplane.runner import Runner
from controlplane.store import Store
from tests.unit.watching import until, watcher_running


def _cluster(name: str) -> Cluster:
    return Cluster(name=name, endpoints=["127.0.0.1:9"])


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(str(tmp_path / "gateway.db"), create=True)
    s.apply_objects([_cluster("a")])
    try:
        yield s
    finally:
        s.close()


def test_hooks_hear_each_new_revision_and_nothing_else(store: Store) -> None:
    heard: list[int] = []
    store.on_commit.append(heard.append)
    rev = store.apply_objects([_cluster("b"), _cluster("c")]).revision
    assert heard == [rev]
    store.apply_objects([_cluster("b")])  # the same content: no new revision
    store.write([("create", "cluster", "d", _cluster("d"))], dry_run=True)
    assert heard == [rev]
    assert store.revision() == rev


def test_a_failing_hook_does_not_undo_or_fail_the_write(store: Store) -> None:
    def broken(_revision: int) -> None:
        raise RuntimeError("hook")

    store.on_commit.append(broken)
    rev = store.apply_objects([_cluster("b")]).revision
    assert store.revision() == rev
    assert store.get("cluster", "b").name == "b"


def _beside_a_watcher(
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    scenario: Callable[[Runner], Awaitable[None]],
) -> None:
    """Run ``scenario(runner)`` beside a watcher with no file watch (as on PostgreSQL) that
    polls once a minute: only the commit hook can wake it within ``PATIENCE``."""
    monkeypatch.setattr(runner_module.FileWatch, "for_url", staticmethod(lambda url: None))

    async def main() -> None:
        async with watcher_running(store) as runner:
            await scenario(runner)
        assert store.on_commit == []  # the stopped watcher took its hook away

    asyncio.run(main())


def test_a_write_of_this_process_is_applied_without_waiting_for_the_poll(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario(runner: Runner) -> None:
        for name in ("b", "c"):
            rev = (await asyncio.to_thread(store.apply_objects, [_cluster(name)])).revision
            await until(lambda rev=rev: runner.revision == rev, f"cluster {name} applied")
            assert name in runner.objects["cluster"]

    _beside_a_watcher(store, monkeypatch, scenario)


def test_a_write_of_another_process_still_waits_for_the_poll(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hook is this process's: another store's commit is not announced (its file event
    or the poll finds it), so the fast path above is the hook's doing."""

    async def scenario(runner: Runner) -> None:
        before = runner.revision
        other = Store(store.url)
        try:
            await asyncio.to_thread(other.apply_objects, [_cluster("b")])
        finally:
            other.close()
        await asyncio.sleep(1.0)
        assert runner.revision == before
        result = await asyncio.to_thread(store.apply_objects, [_cluster("c")])
        await until(lambda: runner.revision == result.revision, "both applied")
        assert {"b", "c"} <= set(runner.objects["cluster"])

    _beside_a_watcher(store, monkeypatch, scenario)

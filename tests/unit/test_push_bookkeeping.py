"""Bookkeeping waits for the push it records: the status recorder's and the runner's
database writes (in a thread, holding the GIL for milliseconds) start once every stream
woken by a change has sent it, or after a bounded wait. The push to a fleet is what the
proxies wait for; those rows are read later (``status``, ``--wait``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from controlplane.policy import Bundle
from controlplane.runner import Runner
from controlplane.store import Store
from controlplane.translate import CLUSTER, LISTENER, ROUTE
from controlplane.xds.cache import SnapshotCache, Subscription
from controlplane.xds.server import AdsStream
from controlplane.xds.status import ProxyState, StatusRecorder
from tests.unit.xds_fakes import NullRecorder

POLICY = """
gateways:
  - {name: public, port: 18080}
clusters:
  - {name: alpha, endpoints: ["127.0.0.1:18081"]}
routes:
  - {name: api, gateway: public, match: {path_prefix: /api}, cluster: alpha}
"""


async def _finished(task: asyncio.Task[Any], turns: int = 50) -> bool:
    """Whether ``task`` finishes within ``turns`` turns of the loop (no clock involved)."""
    for _ in range(turns):
        if task.done():
            return True
        await asyncio.sleep(0)
    return task.done()


def test_pushes_done_waits_for_every_stream_woken() -> None:
    async def scenario() -> None:
        cache = SnapshotCache()
        a = cache.subscribe("public", asyncio.Queue(), "a")
        b = cache.subscribe("public", asyncio.Queue(), "b")
        other = cache.subscribe("internal", asyncio.Queue(), "c")
        await cache.pushes_done(60)  # nothing pushed: at once
        cache._notify("public")
        waiting = asyncio.create_task(cache.pushes_done(60))
        assert not await _finished(waiting)
        a.taken()
        cache.pushed(a)
        assert not await _finished(waiting)  # b has not sent it yet
        cache._notify("public")  # a second change: a owes it again
        b.taken()
        cache.pushed(b)
        assert not await _finished(waiting)
        cache.unsubscribe(a)  # a stream that closes owes nothing
        assert await _finished(waiting)
        assert other not in cache._pushing

        # woken again before it finished: still owed after the first push is sent
        cache._notify("internal")
        cache._notify("internal")  # coalesced into the one token still queued
        other.taken()
        cache._notify("internal")  # a new token while it pushes
        cache.pushed(other)
        assert other.pending and other in cache._pushing
        other.taken()
        cache.pushed(other)
        await cache.pushes_done(60)

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_stream_stuck_behind_its_proxy_delays_bookkeeping_only_so_long() -> None:
    async def scenario() -> None:
        cache = SnapshotCache()
        stuck: Subscription = cache.subscribe("public", asyncio.Queue(), "a")
        cache._notify("public")
        loop = asyncio.get_running_loop()
        started = loop.time()
        await cache.pushes_done(0.05)
        assert loop.time() - started >= 0.05
        assert stuck in cache._pushing  # still owed: the next wait is bounded again

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_the_recorder_writes_after_the_push(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "gateway.db"), create=True)

    async def scenario() -> None:
        done = asyncio.Event()

        async def pushes_done(timeout: float) -> None:
            await asyncio.wait_for(done.wait(), timeout)

        # no time limit in practice: the write waits for the push, however long
        recorder = StatusRecorder(
            store, "ctl", coalesce=0.01, max_delay=600, pushes_done=pushes_done
        )
        task = asyncio.create_task(recorder.run())
        state = ProxyState("web-1", gateway="web", address="a", envoy_version="1.40")
        state.acked_revision = 3
        recorder.event("ack", state, 3, "in sync")
        recorder.changed(state)
        await asyncio.sleep(0.2)  # many times the recorder's quiet period
        assert store.proxies() == []
        done.set()
        for _ in range(600):
            if store.proxies():
                break
            await asyncio.sleep(0.05)
        task.cancel()
        [row] = store.proxies()
        assert row.acked_revision == 3

    try:
        asyncio.run(asyncio.wait_for(scenario(), 60))
    finally:
        store.close()


def test_a_stream_reports_its_push_sent_once_its_writes_are_done(tmp_path: Path) -> None:
    """Through the stream's own loop: a change wakes two streams; the pushes are done only
    once the slower one has written its responses."""
    store = Store(str(tmp_path / "gateway.db"), create=True)
    store.apply(Bundle.from_text(POLICY, "policy.yaml"))
    cache = SnapshotCache()
    runner = Runner(store, cache, controller="test", xds_address="127.0.0.1:1")

    async def scenario() -> None:
        await runner.load()
        gate = asyncio.Event()
        gate.set()
        written: dict[str, list[bytes]] = {"fast": [], "slow": []}

        def writer(name: str) -> Any:
            async def write(data: bytes) -> None:
                if name == "slow":
                    await gate.wait()
                written[name].append(data)

            return write

        async def requests(node: str) -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
            ident = base_pb2.Node(id=node, cluster="public")
            yield discovery_pb2.DiscoveryRequest(type_url=CLUSTER, node=ident)
            yield discovery_pb2.DiscoveryRequest(type_url=LISTENER)
            yield discovery_pb2.DiscoveryRequest(type_url=ROUTE, resource_names=["public"])
            await asyncio.Event().wait()  # the stream stays open

        streams = [
            asyncio.create_task(
                AdsStream(cache, NullRecorder(), writer(n), n).run(requests(n))  # type: ignore[arg-type]
            )
            for n in ("fast", "slow")
        ]
        while not all(len(w) >= 3 for w in written.values()):
            await asyncio.sleep(0.01)
        gate.clear()  # the slow proxy's next write blocks
        sent = {n: len(w) for n, w in written.items()}
        store.update("route", "api", lambda spec: {**spec, "timeout": "9s"})
        assert await runner.poll()
        waiting = asyncio.create_task(cache.pushes_done(600))
        while len(written["fast"]) == sent["fast"]:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        assert not waiting.done() and len(written["slow"]) == sent["slow"]
        gate.set()
        await asyncio.wait_for(waiting, 30)
        assert len(written["slow"]) == sent["slow"] + 1  # the new routes
        for task in streams:
            task.cancel()
        await asyncio.gather(*streams, return_exceptions=True)

    try:
        asyncio.run(asyncio.wait_for(scenario(), 60))
    finally:
        store.close()

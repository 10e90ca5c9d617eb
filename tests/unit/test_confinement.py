"""A failure stays with the gateway and the object at fault.

Bad rows are written straight into the database (bypassing every check, as an older version
or a hand edit could), then the runner loads and polls: it never aborts, other gateways and
later changes go live, the failing gateway keeps its last good snapshot and reports the
object and field, and fixing the object recovers it.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from controlplane.errors import StoreError
from controlplane.policy import Bundle
from controlplane.runner import Runner
from controlplane.store import Store, Unloadable
from controlplane.translate import CLUSTER, Translator
from controlplane.xds.cache import SnapshotCache

POLICY = """
gateways:
  - {name: web, port: 8080}
  - {name: api, port: 8081}
clusters:
  - {name: app, endpoints: ["127.0.0.1:9001"]}
  - {name: other, endpoints: ["127.0.0.1:9002"]}
routes:
  - {name: web-root, gateway: web, match: {path_prefix: /}, cluster: app}
  - {name: api-root, gateway: api, match: {path_prefix: /}, cluster: other}
"""

TOO_MANY = "cluster 'app': circuit_breakers.max_requests: 4294967296 is out of range"


def corrupt(db: str, kind: str, name: str, change: Callable[[dict[str, Any]], None]) -> int:
    """Rewrite one stored object with sqlite3, bypassing validation, as a new revision."""
    conn = sqlite3.connect(db)
    try:
        with conn:
            (spec,) = conn.execute(
                "SELECT spec FROM resources WHERE kind = ? AND name = ?", (kind, name)
            ).fetchone()
            data = json.loads(spec)
            change(data)
            (revision,) = conn.execute("SELECT revision FROM meta WHERE id = 1").fetchone()
            revision += 1
            conn.execute("UPDATE meta SET revision = ? WHERE id = 1", (revision,))
            conn.execute(
                "UPDATE resources SET spec = ?, revision = ? WHERE kind = ? AND name = ?",
                (json.dumps(data), revision, kind, name),
            )
            conn.execute(
                "INSERT INTO changes (revision, kind, name, op, at) VALUES (?, ?, ?, 'update', ?)",
                (revision, kind, name, time.time()),
            )
        return int(revision)
    finally:
        conn.close()


def _too_many(spec: dict[str, Any]) -> None:
    spec["circuit_breakers"] = {"max_requests": 4294967296}


@pytest.fixture
def store(tmp_path: Path) -> Any:
    out = Store(str(tmp_path / "gateway.db"), create=True)
    out.apply(Bundle.from_text(POLICY))
    yield out
    out.close()


def _runner(store: Store) -> tuple[Runner, SnapshotCache]:
    cache = SnapshotCache()
    return Runner(store, cache, controller="t", xds_address="127.0.0.1:0"), cache


def test_loading_never_aborts_on_a_bad_row(store: Store) -> None:
    corrupt(store.url.removeprefix("sqlite:///"), "cluster", "app", _too_many)

    async def scenario() -> None:
        runner, cache = _runner(store)
        await runner.load()  # used to raise and stop the controller
        assert cache.ready.is_set()
        assert "api" in cache.gateways() and "web" not in cache.gateways()
        # no configuration to serve: web's proxies get no answer, not an empty one
        assert cache.withheld("web") and not cache.withheld("api")
        assert runner.errors["web"].startswith(f"stored {TOO_MANY}: must be an integer from 1")
        assert "api" not in runner.errors
        # status, --wait and /status read these
        assert runner.builds()["web"] == (runner.revision, runner.errors["web"])
        assert store.gateway_builds()["web"][2] == runner.errors["web"]

        # a later valid change to another gateway goes live
        revision = store.update("route", "api-root", lambda s: {**s, "timeout": "3s"}).revision
        await runner.poll()
        assert cache.get("api").changed_revision == revision
        assert "web" in runner.errors

        # fixing the object recovers the gateway
        fixed = store.update(
            "cluster", "app", lambda s: {**s, "circuit_breakers": {"max_requests": 100}}
        ).revision
        await runner.poll()
        assert runner.errors == {}
        assert not cache.withheld("web")
        assert cache.get("web").changed_revision == fixed

    asyncio.run(scenario())


def test_a_bad_row_written_while_running_keeps_the_last_good_snapshot(store: Store) -> None:
    db = store.url.removeprefix("sqlite:///")

    async def scenario() -> None:
        runner, cache = _runner(store)
        await runner.load()
        good = cache.get("web")
        bad_revision = corrupt(db, "cluster", "app", _too_many)
        await runner.poll()
        assert runner.revision == bad_revision  # the watcher moved on
        assert not cache.withheld("web")
        assert cache.get("web").types == good.types  # last good configuration still served
        assert runner.errors["web"].startswith(f"stored {TOO_MANY}")
        assert runner.builds()["web"] == (bad_revision, runner.errors["web"])

        # unrelated later changes still go live; the failure stays dated at its revision
        later = store.update("route", "api-root", lambda s: {**s, "timeout": "3s"}).revision
        await runner.poll()
        assert cache.get("api").changed_revision == later
        assert runner.builds()["web"][0] == bad_revision

        # a bad route of another gateway concerns only that gateway
        corrupt(db, "route", "api-root", lambda s: s.update(priority=True))
        await runner.poll()
        assert runner.errors["api"].startswith(
            "stored route 'api-root': priority: must be an integer from -1000 to 1000"
        )
        assert runner.errors["web"].startswith(f"stored {TOO_MANY}")

        # deleting the bad route recovers its gateway
        store.delete("route", "api-root")
        await runner.poll()
        assert "api" not in runner.errors

    asyncio.run(scenario())


def test_a_translation_that_raises_is_confined_to_its_gateway(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the cause (here an injected bug), other gateways and later changes go on."""
    original = Translator.translate
    broken = {"web"}

    def translate(self: Translator, view: Any) -> Any:
        if view.gateway.name in broken:
            raise ValueError("Value out of range: 4294967296")
        return original(self, view)

    async def scenario() -> None:
        runner, cache = _runner(store)
        await runner.load()
        monkeypatch.setattr(Translator, "translate", translate)
        revision = store.update("cluster", "app", lambda s: {**s, "connect_timeout": "2s"}).revision
        await runner.poll()
        store.update("route", "api-root", lambda s: {**s, "timeout": "3s"})
        await runner.poll()
        assert runner.errors == {
            "web": "translation failed: ValueError: Value out of range: 4294967296"
        }
        assert runner.builds()["web"][0] == revision
        assert cache.get("api").changed_revision == runner.revision
        broken.clear()
        store.update("route", "api-root", lambda s: {**s, "timeout": "4s"})
        await runner.poll()  # failed gateways are tried again at every revision
        assert runner.errors == {}
        assert cache.get("web").changed_revision == runner.revision

    asyncio.run(scenario())


def test_a_failing_object_is_named(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A translation that raises inside one cluster or route names that object."""
    import controlplane.translate as translate

    original = translate.cluster_resource

    def cluster_resource(cluster: Any) -> Any:
        if cluster.name == "app":
            raise ValueError("Value out of range: 4294967296")
        return original(cluster)

    monkeypatch.setattr(translate, "cluster_resource", cluster_resource)
    import controlplane.translate.route as route_module

    original_route = route_module.route_resource

    def route_resource(route: Any) -> Any:
        if route.name == "api-root":
            raise KeyError("boom")
        return original_route(route)

    monkeypatch.setattr(route_module, "route_resource", route_resource)

    async def scenario() -> None:
        runner, cache = _runner(store)
        await runner.load()
        assert runner.errors == {
            "web": "cluster 'app': translation failed: ValueError: Value out of range: 4294967296",
            "api": "route 'api-root': translation failed: KeyError: 'boom'",
        }
        assert cache.withheld("web") and cache.withheld("api")

    asyncio.run(scenario())


def test_a_stored_duplicate_of_a_server_name_is_refused_at_snapshot(store: Store) -> None:
    """A cluster stored (before names were checked) as the bootstrap's ``xds_cluster``: the
    name check refuses the row, and the snapshot check would refuse its resource."""
    db = store.url.removeprefix("sqlite:///")
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(
            "UPDATE resources SET spec = ? WHERE kind = 'cluster' AND name = 'app'",
            (json.dumps({"name": "xds_cluster", "endpoints": ["127.0.0.1:9001"]}),),
        )
    conn.close()
    _revision, objects = store.load_all_checked()
    bad = [o for o in objects if isinstance(o, Unloadable)]
    assert [b.problem for b in bad] == [
        "cluster 'app': name: 'xds_cluster' is reserved (a cluster of Envoy's bootstrap)"
    ]
    with pytest.raises(StoreError, match="stored cluster 'app': name: 'xds_cluster' is reserved"):
        store.load_all()

    async def scenario() -> None:
        runner, cache = _runner(store)
        await runner.load()
        assert "api" in cache.gateways()
        assert CLUSTER in cache.get("api").types
        assert "is reserved" in runner.errors["web"]

    asyncio.run(scenario())

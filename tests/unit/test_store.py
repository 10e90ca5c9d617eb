"""The policy store on a temporary SQLite file: revisions, atomicity, prune, concurrency."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from controlplane.errors import Conflict, NotFound, PolicyInvalid
from controlplane.policy import Bundle, Cluster, Gateway, Route
from controlplane.store import Store

POLICY = """\
gateways:
  - {name: web, port: 8080}
clusters:
  - {name: users, endpoints: ["10.0.0.1:80"]}
  - {name: orders, endpoints: ["10.0.0.2:80"]}
routes:
  - {name: users, gateway: web, match: {path_prefix: /users}, cluster: users}
  - {name: orders, gateway: web, match: {path_prefix: /orders}, cluster: orders}
"""


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "gateway.db"


@pytest.fixture
def store(db: Path) -> Iterator[Store]:
    s = Store(str(db), create=True)
    yield s
    s.close()


@pytest.fixture
def loaded(store: Store) -> Store:
    store.apply(Bundle.from_text(POLICY))
    return store


def _state(store: Store) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
    """Everything a failed change must leave alone: revision, objects, change log."""
    rev = store.revision()
    return rev, store.bundle().to_data(), store.changed_objects(0, rev + 1000)


def _cluster(name: str, endpoint: str) -> Cluster:
    return Cluster.model_validate({"name": name, "endpoints": [endpoint]})


def _changes_since(store: Store, revision: int) -> tuple[int, list[tuple[str, str, Any]]]:
    """``Store.changes_since`` (typed here: ``list`` in the Store class means its method)."""
    newest, changed = cast(Any, store.changes_since(revision))
    return newest, list(changed)


def _route(name: str, cluster: str = "users", **extra: Any) -> Route:
    return Route.model_validate({"name": name, "gateway": "web", "cluster": cluster, **extra})


def test_revision_bumps_once_per_commit(store: Store) -> None:
    assert store.revision() == 0
    result = store.apply(Bundle.from_text(POLICY))  # five objects, one transaction
    assert result.revision == 1 == store.revision()
    assert len(result.changes) == 5
    assert store.create(_cluster("extra", "10.0.0.9:80")) == 2
    assert store.replace(Gateway.model_validate({"name": "web", "port": 9090})) == 3
    assert store.update("cluster", "extra", lambda s: {**s, "lb_policy": "random"}).revision == 4
    assert store.delete("cluster", "extra") == 5
    assert store.revision() == 5


def test_noop_apply_does_not_bump(loaded: Store) -> None:
    before = _state(loaded)
    again = loaded.apply(Bundle.from_text(POLICY))
    assert again.changes == []
    assert again.revision == before[0]
    assert _state(loaded) == before
    assert _changes_since(loaded, before[0]) == (before[0], [])
    # Same content in another spelling (defaults written out, other duration form) is a no-op.
    spelled = POLICY.replace("port: 8080}", "port: 8080, address: 0.0.0.0}")
    assert loaded.apply(Bundle.from_text(spelled)).changes == []
    assert loaded.revision() == before[0]


FAILURES: dict[str, tuple[Callable[[Store], object], type[Exception], str]] = {
    "dangling reference": (
        lambda s: s.create(_route("ghost", cluster="nope")),
        PolicyInvalid,
        "route 'ghost': cluster 'nope' does not exist",
    ),
    "dangling reference by update": (
        lambda s: s.update("route", "users", lambda spec: {**spec, "cluster": "nope"}),
        PolicyInvalid,
        "route 'users': cluster 'nope' does not exist",
    ),
    "duplicate create": (
        lambda s: s.create(_cluster("users", "10.0.0.7:80")),
        Conflict,
        "cluster 'users' already exists",
    ),
    "delete referenced cluster": (
        lambda s: s.delete("cluster", "users"),
        Conflict,
        "cannot delete cluster 'users': route 'users' uses it",
    ),
    "delete missing": (
        lambda s: s.delete("route", "nope"),
        NotFound,
        "route 'nope' does not exist",
    ),
    "update to invalid spec": (
        lambda s: s.update("gateway", "web", lambda spec: {**spec, "port": 0}),
        PolicyInvalid,
        "gateway 'web': port:",
    ),
    "update renames": (
        lambda s: s.update("gateway", "web", lambda spec: {**spec, "name": "other"}),
        PolicyInvalid,
        "name: cannot be changed",
    ),
}


@pytest.mark.parametrize("change", FAILURES.values(), ids=FAILURES.keys())
def test_failed_change_leaves_store_unchanged(
    loaded: Store, change: tuple[Callable[[Store], object], type[Exception], str]
) -> None:
    do, error, message = change
    before = _state(loaded)
    with pytest.raises(error) as info:
        do(loaded)
    assert message in str(info.value)
    assert _state(loaded) == before


def test_failed_multi_object_change_writes_none_of_it(loaded: Store) -> None:
    before = _state(loaded)
    # Unchecked on purpose (as if the cluster vanished between check and commit): the first
    # two objects are fine, the last one dangles, so nothing at all is written.
    bundle = Bundle.model_construct(
        gateways=[],
        clusters=[_cluster("new", "10.0.0.5:80")],
        routes=[_route("new", cluster="new"), _route("ghost", cluster="nope")],
    )
    with pytest.raises(PolicyInvalid, match="route 'ghost': cluster 'nope' does not exist"):
        loaded.apply(bundle)
    assert _state(loaded) == before


def test_apply_with_prune(loaded: Store) -> None:
    rev = loaded.revision()
    wanted = Bundle.from_text(
        """
        gateways: [{name: web, port: 8080}]
        clusters:
          - {name: users, endpoints: ["10.0.0.1:80", "10.0.0.3:80"]}
          - {name: billing, endpoints: ["billing.internal:80"]}
        routes:
          - {name: users, gateway: web, match: {path_prefix: /users}, cluster: users}
          - {name: billing, gateway: web, match: {path_prefix: /billing}, cluster: billing}
        """
    )
    result = loaded.apply(wanted, prune=True)
    ops = sorted((c.op, c.kind, c.name) for c in result.changes)
    assert ops == [
        ("create", "cluster", "billing"),
        ("create", "route", "billing"),
        ("delete", "cluster", "orders"),  # with the route that used it, in one transaction
        ("delete", "route", "orders"),
        ("update", "cluster", "users"),
    ]
    assert result.revision == rev + 1 == loaded.revision()
    assert loaded.bundle().to_data() == wanted.to_data()
    # Without prune, objects missing from the bundle stay.
    loaded.create(_cluster("spare", "10.0.0.8:80"))
    assert loaded.apply(wanted).changes == []
    assert loaded.get("cluster", "spare") == _cluster("spare", "10.0.0.8:80")


def test_dry_run_writes_nothing(loaded: Store) -> None:
    before = _state(loaded)
    smaller = Bundle.from_text("gateways: [{name: web, port: 9999}]")
    result = loaded.apply(smaller, prune=True, dry_run=True)
    ops = sorted((c.op, c.kind, c.name) for c in result.changes)
    assert ops == [
        ("delete", "cluster", "orders"),
        ("delete", "cluster", "users"),
        ("delete", "route", "orders"),
        ("delete", "route", "users"),
        ("update", "gateway", "web"),
    ]
    gateway_change = next(c for c in result.changes if c.kind == "gateway")
    assert (gateway_change.before or {})["port"] == 8080
    assert (gateway_change.after or {})["port"] == 9999
    assert result.revision == before[0]
    assert _state(loaded) == before


def test_changes_since_returns_only_what_changed(loaded: Store) -> None:
    rev = loaded.revision()
    assert _changes_since(loaded, rev) == (rev, [])
    loaded.update("cluster", "users", lambda s: {**s, "lb_policy": "maglev"})
    loaded.create(_route("extra", match={"path": "/extra"}))
    loaded.delete("route", "orders")
    newest, changed = _changes_since(loaded, rev)
    assert newest == rev + 3
    got = {(kind, name): obj for kind, name, obj in changed}
    assert set(got) == {("cluster", "users"), ("route", "extra"), ("route", "orders")}
    assert got[("route", "orders")] is None
    users = got[("cluster", "users")]
    assert isinstance(users, Cluster) and users.lb_policy == "maglev"
    # Only the newest revision's changes after rev + 2.
    assert [(k, n) for k, n, _ in _changes_since(loaded, rev + 2)[1]] == [("route", "orders")]


def test_sqlite_file_is_private(store: Store, db: Path) -> None:
    store.apply(Bundle.from_text(POLICY))
    assert db.stat().st_mode & 0o777 == 0o600
    for extra in (Path(f"{db}-wal"), Path(f"{db}-shm")):
        if extra.exists():
            assert extra.stat().st_mode & 0o777 == 0o600, extra.name


# -- concurrency -----------------------------------------------------------------------

WORKER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from controlplane.policy import Route
    from controlplane.store import Store

    db, mode, arg, folder = sys.argv[1:5]
    store = Store(db)
    Path(folder, f"ready-{arg}").touch()
    while not Path(folder, "go").exists():
        time.sleep(0.002)
    start = time.monotonic()
    for i in range(50):
        if mode == "increment":
            field = arg
            def patch(spec, field=field):
                breakers = dict(spec.get("circuit_breakers") or {})
                breakers[field] = breakers.get(field, 1) + 1
                return {**spec, "circuit_breakers": breakers}
            store.update("cluster", "users", patch)
        else:
            store.create(Route.model_validate(
                {"name": f"{arg}-{i}", "gateway": "web", "cluster": "users",
                 "match": {"path": f"/{arg}/{i}"}}))
    print(json.dumps([start, time.monotonic()]))
    store.close()
    """
)


def _run_concurrently(db: Path, folder: Path, mode: str, args: list[str]) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH")])
        ),
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(db), mode, arg, str(folder)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for arg in args
    ]
    try:
        deadline = time.monotonic() + 30
        while not all((folder / f"ready-{a}").exists() for a in args):
            assert all(p.poll() is None for p in procs), procs[0].communicate()[1]
            assert time.monotonic() < deadline, "workers did not start"
            time.sleep(0.01)
        (folder / "go").touch()
        spans = []
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            spans.append(json.loads(out))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    # The writers really ran at the same time.
    assert max(s for s, _ in spans) < min(e for _, e in spans)


def test_concurrent_updates_lose_nothing(loaded: Store, db: Path, tmp_path: Path) -> None:
    rev = loaded.revision()
    _run_concurrently(db, tmp_path, "increment", ["max_connections", "max_requests"])
    assert loaded.revision() == rev + 100
    users = loaded.get("cluster", "users")
    assert isinstance(users, Cluster) and users.circuit_breakers is not None
    assert users.circuit_breakers.max_connections == 51
    assert users.circuit_breakers.max_requests == 51
    assert len(loaded.changed_objects(rev, rev + 100)) == 1
    _, changed = _changes_since(loaded, rev)
    assert [(k, n) for k, n, _ in changed] == [("cluster", "users")]


def test_concurrent_creates_lose_nothing(loaded: Store, db: Path, tmp_path: Path) -> None:
    rev = loaded.revision()
    _run_concurrently(db, tmp_path, "create", ["a", "b"])
    assert loaded.revision() == rev + 100
    names = {r.name for r in loaded.list_objects("route")}  # type: ignore[attr-defined]
    assert names == {"users", "orders"} | {f"{p}-{i}" for p in "ab" for i in range(50)}
    assert len(_changes_since(loaded, rev)[1]) == 100


def test_schema_head_constant_matches_the_migrations() -> None:
    """Store.migrate skips alembic when the database is at SCHEMA_HEAD: it must be the head."""
    from alembic.script import ScriptDirectory

    from controlplane.store.repository import SCHEMA_HEAD, alembic_config

    assert ScriptDirectory.from_config(alembic_config()).get_current_head() == SCHEMA_HEAD

"""The policy store on PostgreSQL: migrations, revisions, atomicity, prune, concurrency."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy import create_engine, event, inspect, text

from controlplane.errors import Conflict, NotFound, PolicyInvalid
from controlplane.policy import Bundle, Cluster, Route
from controlplane.store import Store
from controlplane.store.repository import SCHEMA_HEAD

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

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(pg_url: str) -> Iterator[Store]:
    s = Store(pg_url, create=True)
    yield s
    s.close()


@pytest.fixture
def loaded(store: Store) -> Store:
    store.apply(Bundle.from_text(POLICY))
    return store


def _state(store: Store) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
    rev = store.revision()
    return rev, store.bundle().to_data(), store.changed_objects(0, rev + 1000)


def _changes_since(store: Store, revision: int) -> tuple[int, list[tuple[str, str, Any]]]:
    newest, changed = cast(Any, store.changes_since(revision))
    return newest, list(changed)


def _cluster(name: str, endpoint: str) -> Cluster:
    return Cluster.model_validate({"name": name, "endpoints": [endpoint]})


def _route(name: str, cluster: str = "users", **extra: Any) -> Route:
    return Route.model_validate({"name": name, "gateway": "web", "cluster": cluster, **extra})


def test_migrations_run_on_an_empty_database(pg_url: str) -> None:
    store = Store(pg_url, create=True)
    try:
        assert store.url.startswith("postgresql+psycopg://")
        assert store.schema_version() == SCHEMA_HEAD
        with store._reader.connect() as conn:
            tables = set(inspect(conn).get_table_names())
        assert {
            "alembic_version",
            "meta",
            "resources",
            "refs",
            "changes",
            "proxies",
            "gateway_builds",
            "controllers",
        } <= tables
        assert store.revision() == 0
    finally:
        store.close()
    again = Store(pg_url)  # an up-to-date schema is left alone
    assert again.schema_version() == SCHEMA_HEAD and again.revision() == 0
    again.close()
    # A plain postgresql:// URL (as users write it) is routed to psycopg 3.
    plain = Store(pg_url.replace("postgresql+psycopg://", "postgresql://"), migrate=False)
    assert plain.url == pg_url and plain.revision() == 0
    plain.close()


def test_revision_bumps_once_per_commit(store: Store) -> None:
    assert store.revision() == 0
    result = store.apply(Bundle.from_text(POLICY))
    assert result.revision == 1 == store.revision()
    assert len(result.changes) == 5
    assert store.create(_cluster("extra", "10.0.0.9:80")) == 2
    assert store.update("cluster", "extra", lambda s: {**s, "lb_policy": "random"}).revision == 3
    assert store.delete("cluster", "extra") == 4
    assert store.revision() == 4
    again = store.apply(Bundle.from_text(POLICY))  # nothing to change: no new revision
    assert again.changes == [] and again.revision == 4 == store.revision()


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (
            lambda s: s.create(_route("ghost", cluster="nope")),
            PolicyInvalid,
            "route 'ghost': cluster 'nope' does not exist",
        ),
        (
            lambda s: s.create(_cluster("users", "10.0.0.7:80")),
            Conflict,
            "cluster 'users' already exists",
        ),
        (
            lambda s: s.delete("cluster", "users"),
            Conflict,
            "cannot delete cluster 'users': route 'users' uses it",
        ),
        (lambda s: s.delete("route", "nope"), NotFound, "route 'nope' does not exist"),
        (
            lambda s: s.update("route", "users", lambda spec: {**spec, "cluster": "nope"}),
            PolicyInvalid,
            "route 'users': cluster 'nope' does not exist",
        ),
        (
            lambda s: s.apply(
                Bundle.model_construct(
                    gateways=[],
                    clusters=[_cluster("new", "10.0.0.5:80")],
                    routes=[_route("new", cluster="new"), _route("ghost", cluster="nope")],
                )
            ),
            PolicyInvalid,
            "route 'ghost': cluster 'nope' does not exist",
        ),
    ],
    ids=["dangling", "duplicate", "referenced", "missing", "dangling-update", "multi-object"],
)
def test_failing_change_writes_nothing(
    loaded: Store, change: Any, error: type[Exception], message: str
) -> None:
    before = _state(loaded)
    with pytest.raises(error, match=message):
        change(loaded)
    assert _state(loaded) == before
    # The connection pool is healthy afterwards: the next commit gets the next revision.
    assert loaded.create(_cluster("after", "10.0.0.6:80")) == before[0] + 1


def test_apply_prune_and_dry_run(loaded: Store) -> None:
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
    before = _state(loaded)
    dry = loaded.apply(wanted, prune=True, dry_run=True)
    expected = [
        ("create", "cluster", "billing"),
        ("create", "route", "billing"),
        ("delete", "cluster", "orders"),
        ("delete", "route", "orders"),
        ("update", "cluster", "users"),
    ]
    assert sorted((c.op, c.kind, c.name) for c in dry.changes) == expected
    assert dry.revision == rev and _state(loaded) == before

    result = loaded.apply(wanted, prune=True)
    assert sorted((c.op, c.kind, c.name) for c in result.changes) == expected
    users = next(c for c in result.changes if c.name == "users")
    assert users.before is not None and users.before["endpoints"] == ["10.0.0.1:80"]
    assert result.revision == rev + 1 == loaded.revision()
    assert loaded.bundle().to_data() == wanted.to_data()
    # JSON specs read back from PostgreSQL compare equal to the models: re-applying is a no-op.
    assert loaded.apply(wanted, prune=True).changes == []
    loaded.create(_cluster("spare", "10.0.0.8:80"))
    assert loaded.apply(wanted).changes == []  # without prune, others stay
    assert loaded.get("cluster", "spare") == _cluster("spare", "10.0.0.8:80")


def test_changes_since(loaded: Store) -> None:
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
    assert [(k, n) for k, n, _ in _changes_since(loaded, rev + 2)[1]] == [("route", "orders")]
    assert loaded.changed_objects(rev, rev + 1) == [("cluster", "users")]


def test_reads_see_one_revision_while_others_commit(loaded: Store, pg_url: str) -> None:
    """A commit landing between the statements of changes_since/load_all is not half-seen.

    The watcher labels what it read with the revision it read first; objects from a newer
    revision under an older label would reference objects it was not told to load.
    """
    writer = Store(pg_url, migrate=False)
    rev = loaded.revision()
    loaded.create(_route("moving", match={"path": "/moving"}))
    fired: list[int] = []

    def commit_in_between(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not fired and "FROM meta" in statement:
            # rev + 2: the route now uses a cluster created in the same commit
            fired.append(
                writer.apply_objects(
                    [
                        _cluster("fresh", "10.0.0.4:80"),
                        _route("moving", cluster="fresh", match={"path": "/moving"}),
                    ]
                ).revision
            )

    engine = loaded._reader
    event.listen(engine, "after_cursor_execute", commit_in_between)
    try:
        newest, changed = _changes_since(loaded, rev)
    finally:
        event.remove(engine, "after_cursor_execute", commit_in_between)
    assert fired == [rev + 2]
    assert newest == rev + 1
    [(kind, name, route)] = changed
    assert (kind, name) == ("route", "moving") and route.cluster == "users"

    fired.clear()
    writer.update("route", "moving", lambda s: {**s, "cluster": "users"})  # rev + 3
    event.listen(engine, "after_cursor_execute", commit_in_between)
    try:
        label, objects = loaded.load_all()
    finally:
        event.remove(engine, "after_cursor_execute", commit_in_between)
    assert fired == [rev + 4] and label == rev + 3
    [moving] = [o for o in objects if o.name == "moving"]  # type: ignore[attr-defined]
    assert moving.cluster == "users"  # type: ignore[attr-defined]
    writer.close()


# -- concurrency: separate OS processes, each with its own engine and connections -------

WORKER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from controlplane.policy import Route
    from controlplane.store import Store

    url, field, prefix, folder = sys.argv[1:5]
    store = Store(url, create=True)
    Path(folder, f"ready-{prefix}").touch()
    while not Path(folder, "go").exists():
        time.sleep(0.002)
    start = time.monotonic()
    for i in range(50):
        def patch(spec):
            breakers = dict(spec.get("circuit_breakers") or {})
            breakers[field] = breakers.get(field, 1) + 1
            return {**spec, "circuit_breakers": breakers}
        store.update("cluster", "users", patch)
        store.create(Route.model_validate(
            {"name": f"{prefix}-{i}", "gateway": "web", "cluster": "users",
             "match": {"path": f"/{prefix}/{i}"}}))
    print(json.dumps([start, time.monotonic()]))
    store.close()
    """
)


def _workers(folder: Path, commands: list[list[str]]) -> list[str]:
    """Run the commands at the same time (released together); return their stdout."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for cmd in commands
    ]
    try:
        deadline = time.monotonic() + 30
        while len(list(folder.glob("ready-*"))) < len(procs):
            for p in procs:
                assert p.poll() is None, p.communicate()[1]
            assert time.monotonic() < deadline, "workers did not start"
            time.sleep(0.01)
        (folder / "go").touch()
        outputs = []
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            outputs.append(out)
        return outputs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_concurrent_updates_and_creates_lose_nothing(
    loaded: Store, pg_url: str, tmp_path: Path
) -> None:
    rev = loaded.revision()
    outputs = _workers(
        tmp_path,
        [
            [sys.executable, "-c", WORKER, pg_url, "max_connections", "a", str(tmp_path)],
            [sys.executable, "-c", WORKER, pg_url, "max_requests", "b", str(tmp_path)],
        ],
    )
    spans = [json.loads(out) for out in outputs]
    assert max(s for s, _ in spans) < min(e for _, e in spans), "writers did not overlap"

    assert loaded.revision() == rev + 200  # 2 processes x 50 x (update + create)
    users = loaded.get("cluster", "users")
    assert isinstance(users, Cluster) and users.circuit_breakers is not None
    assert users.circuit_breakers.max_connections == 51
    assert users.circuit_breakers.max_requests == 51
    names = {r.name for r in loaded.list_objects("route")}  # type: ignore[attr-defined]
    assert names == {"users", "orders"} | {f"{p}-{i}" for p in "ab" for i in range(50)}
    # One change-log entry per commit, each at its own revision: no two commits shared one.
    with create_engine(pg_url).connect() as conn:
        per_revision = conn.execute(
            text("SELECT revision, count(*) FROM changes WHERE revision > :rev GROUP BY revision"),
            {"rev": rev},
        ).all()
    assert sorted(r for r, _ in per_revision) == list(range(rev + 1, rev + 201))
    assert {n for _, n in per_revision} == {1}


OPENER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from controlplane.store import Store

    url, name, folder = sys.argv[1:4]
    Path(folder, f"ready-{name}").touch()
    while not Path(folder, "go").exists():
        time.sleep(0.001)
    store = Store(url, create=True)
    print(store.schema_version(), store.revision())
    """
)


def test_controllers_starting_together_migrate_once(pg_url: str, tmp_path: Path) -> None:
    outputs = _workers(
        tmp_path, [[sys.executable, "-c", OPENER, pg_url, str(n), str(tmp_path)] for n in range(2)]
    )
    assert [o.split() for o in outputs] == [[SCHEMA_HEAD, "0"]] * 2


def test_controllers_recording_the_same_gateway_at_once(loaded: Store, pg_url: str) -> None:
    """Two controllers record their first build of a gateway in the same instant."""
    other = Store(pg_url, migrate=False)
    rev = loaded.revision()
    fired: list[bool] = []

    statements: list[str] = []

    def race(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        # Just before this controller writes its row for the gateway, the other one
        # inserts that row and commits.
        statements.append(statement)
        if not fired and statement.startswith("INSERT INTO gateway_builds"):
            fired.append(True)
            other.save_builds("ctl-b", "127.0.0.1:2", rev, {"web": (rev, None)}, time.time())

    event.listen(loaded._writer, "before_cursor_execute", race)
    try:
        loaded.save_builds("ctl-a", "127.0.0.1:1", rev, {"web": (rev, None)}, time.time())
    finally:
        event.remove(loaded._writer, "before_cursor_execute", race)
    assert fired
    # one atomic upsert per row, run once: no key violation, so no retry
    writes = [s for s in statements if not s.startswith(("BEGIN", "COMMIT", "SELECT"))]
    assert len(writes) == 2 and all("ON CONFLICT" in s for s in writes), writes
    assert loaded.gateway_builds() == {"web": (rev, rev, None)}
    assert sorted(c[:3] for c in cast(Any, loaded.controllers())) == [
        ("ctl-a", "127.0.0.1:1", rev),
        ("ctl-b", "127.0.0.1:2", rev),
    ]
    other.close()


def test_two_writers_planned_against_one_revision(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two stores write at once, both planned at revision N: PostgreSQL serialises them on
    the meta row, and the second sees the first's revision under the lock: Conflict."""
    import threading

    from controlplane.errors import GatewayError
    from controlplane.store.secrets import ENV_KEY, format_key, new_key

    monkeypatch.setenv(ENV_KEY, format_key(new_key()))  # the API key below is sealed

    stores = [Store(pg_url, create=True), Store(pg_url)]
    rev = stores[0].revision()
    start = threading.Barrier(2)
    results: dict[int, Any] = {}

    def write(i: int) -> None:
        start.wait()
        try:
            results[i] = stores[i].create(_cluster(f"w{i}", "10.0.0.9:80"), expect_revision=rev)
        except GatewayError as exc:
            results[i] = exc

    threads = [threading.Thread(target=write, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        won = [i for i, r in results.items() if isinstance(r, int)]
        lost = [i for i, r in results.items() if isinstance(r, Conflict)]
        assert len(won) == 1 and len(lost) == 1, results
        assert stores[1].revision() == rev + 1
        names = {c.name for c in stores[1].list_objects("cluster")}  # type: ignore[attr-defined]
        assert names == {f"w{won[0]}"}
        # a dry run of a delete still in use is refused like the delete, and writes nothing
        from controlplane.policy import Consumer, new_api_key

        stores[0].apply(Bundle.from_text(POLICY))
        stores[0].create(Consumer(name="acme"))
        stores[0].create(new_api_key("acme"))
        state = stores[0].revision(), stores[0].bundle().to_yaml()
        empty = Bundle.from_text(POLICY)
        with pytest.raises(GatewayError) as dry:
            stores[0].apply(empty, prune=True, dry_run=True)
        assert (stores[0].revision(), stores[0].bundle().to_yaml()) == state
        with pytest.raises(GatewayError) as real:
            stores[0].apply(empty, prune=True)
        assert (type(dry.value), str(dry.value)) == (type(real.value), str(real.value))
        assert "cannot delete consumer 'acme'" in str(dry.value)
    finally:
        for s in stores:
            s.close()

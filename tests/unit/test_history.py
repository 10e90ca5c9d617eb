"""Revision history on a temporary SQLite store: what each write records, the policy as of
a revision, diffs between revisions, rollback and its secret rules, retention."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.errors import Conflict, NotFound, PolicyInvalid
from controlplane.policy import Bundle, Certificate, Cluster, Consumer, new_api_key
from controlplane.store import Store
from controlplane.store.actor import acting_as
from controlplane.store.history import (
    HistoryUnavailable,
    Retention,
    parse_retention,
    prune_history,
)
from controlplane.store.repository import is_redacted
from controlplane.store.secrets import ENV_KEY, ENV_KEY_FILE
from tests.e2e.tlsutil import TestCA

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


@pytest.fixture(autouse=True)
def _no_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_KEY, raising=False)
    monkeypatch.delenv(ENV_KEY_FILE, raising=False)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(str(tmp_path / "gateway.db"), create=True)
    yield s
    s.close()


def _cluster(name: str, endpoint: str) -> Cluster:
    return Cluster.model_validate({"name": name, "endpoints": [endpoint]})


def _certificate(name: str) -> Certificate:
    issued = TestCA().issue("api.example.com", ["api.example.com"])
    return Certificate(name=name, cert=issued.cert, key=issued.key)


def _objects(store: Store) -> dict[tuple[str, str], dict]:
    return {(o.kind, o.name): o.spec() for o in store.load_all()[1]}  # type: ignore[attr-defined]


def test_every_write_records_actor_before_and_after(store: Store) -> None:
    with acting_as("alice"):
        r1 = store.apply(Bundle.from_text(POLICY)).revision
    with acting_as("bob"):
        r2 = store.replace(_cluster("users", "10.0.0.9:80"))
    r3 = store.delete("route", "orders")
    entries = store.audit()
    assert [e.revision for e in entries][:2] == [r3, r2]
    assert entries[0].op == "delete" and entries[0].after is None
    assert entries[0].before is not None and entries[0].before["cluster"] == "orders"
    assert entries[0].actor is not None and entries[0].actor.startswith("local")
    upd = entries[1]
    assert (upd.actor, upd.kind, upd.name, upd.op) == ("bob", "cluster", "users", "update")
    assert upd.before == {"name": "users", "endpoints": ["10.0.0.1:80"]}
    assert upd.after == {"name": "users", "endpoints": ["10.0.0.9:80"]}
    assert {e.actor for e in store.audit(kind=None) if e.revision == r1} == {"alice"}
    assert [e.revision for e in store.audit(actor="alice")] == [r1] * 5
    assert [e.name for e in store.audit(kind="cluster", name="users")] == ["users", "users"]
    assert store.audit(since=time.time() + 60) == []


def test_secret_fields_are_recorded_as_digests(store: Store) -> None:
    store.create(Consumer(name="acme"))
    key = new_api_key("acme")
    cert = _certificate("api")
    store.create(key)
    store.create(cert)
    rows = {(e.kind, e.name): e for e in store.audit()}
    recorded_key = rows[("api_key", key.name)].after
    recorded_cert = rows[("certificate", "api")].after
    assert recorded_key is not None and recorded_cert is not None
    assert is_redacted(recorded_key["key"]) and key.key not in str(recorded_key)
    assert is_redacted(recorded_cert["key"]) and cert.key not in str(recorded_cert)
    # the private key's digest changes with the key: a diff shows it changed
    store.replace(_certificate("api"))
    upd = store.audit(kind="certificate")[0]
    assert upd.before is not None and upd.after is not None
    assert upd.before["key"] != upd.after["key"]


def test_history_lists_revisions_newest_first_and_pages(store: Store) -> None:
    r1 = store.apply(Bundle.from_text(POLICY)).revision
    r2 = store.replace(_cluster("users", "10.0.0.9:80"))
    r3 = store.replace(_cluster("orders", "10.0.0.8:80"))
    revs = store.history()
    assert [r.revision for r in revs] == [r3, r2, r1]
    assert len(revs[2].changes) == 5 and revs[0].at is not None and revs[0].actor
    assert [r.revision for r in store.history(limit=1, before_revision=r3)] == [r2]
    only = store.history("cluster", "users")
    assert [r.revision for r in only] == [r2, r1]
    assert all(c.name == "users" and c.kind == "cluster" for r in only for c in r.changes)


def test_policy_at_reconstructs_every_revision(store: Store) -> None:
    snapshots = {0: {}}
    r = store.apply(Bundle.from_text(POLICY)).revision
    snapshots[r] = _objects(store)
    r = store.replace(_cluster("users", "10.0.0.9:80"))
    snapshots[r] = _objects(store)
    r = store.delete("route", "orders")
    snapshots[r] = _objects(store)
    r = store.create(_cluster("extra", "10.0.0.7:80"))
    snapshots[r] = _objects(store)
    for rev, expected in snapshots.items():
        assert store.policy_at(rev) == expected, rev
    with pytest.raises(HistoryUnavailable, match="does not exist"):
        store.policy_at(r + 1)


def test_diff_revisions(store: Store) -> None:
    r1 = store.apply(Bundle.from_text(POLICY)).revision
    store.replace(_cluster("users", "10.0.0.9:80"))
    r3 = store.delete("route", "orders")
    changes = store.diff_revisions(r1, r3)
    assert [(c.op, c.kind, c.name) for c in changes] == [
        ("update", "cluster", "users"),
        ("delete", "route", "orders"),
    ]
    back = store.diff_revisions(r3, r1)
    assert [(c.op, c.kind, c.name) for c in back] == [
        ("update", "cluster", "users"),
        ("create", "route", "orders"),
    ]
    assert store.diff_revisions(r3, r3) == []


def test_rollback_writes_the_old_policy_as_a_new_revision(store: Store) -> None:
    r1 = store.apply(Bundle.from_text(POLICY)).revision
    before = _objects(store)
    store.replace(_cluster("users", "10.0.0.9:80"))
    store.delete("route", "orders")
    store.create(_cluster("extra", "10.0.0.7:80"))
    newest = store.revision()
    dry = store.rollback(r1, dry_run=True)
    assert dry.dry_run and store.revision() == newest and len(dry.changes) == 3
    with acting_as("carol"):
        result = store.rollback(r1)
    assert result.revision == newest + 1 and result.target == r1 and not result.skipped
    assert _objects(store) == before
    assert {(c.op, c.kind, c.name) for c in result.changes} == {
        ("update", "cluster", "users"),
        ("create", "route", "orders"),
        ("delete", "cluster", "extra"),
    }
    top = store.history(limit=1)[0]
    assert top.revision == result.revision and top.actor == "carol"
    assert top.note == f"rollback to revision {r1}"
    # history is never rewritten: the revisions rolled back stay queryable
    assert store.policy_at(newest)[("cluster", "extra")]["endpoints"] == ["10.0.0.7:80"]
    # nothing left to do: no new revision
    assert store.rollback(r1).changes == [] and store.revision() == result.revision


def test_rollback_expect_revision(store: Store) -> None:
    r1 = store.apply(Bundle.from_text(POLICY)).revision
    store.delete("route", "orders")
    with pytest.raises(Conflict):
        store.rollback(r1, expect_revision=r1)
    assert ("route", "orders") not in _objects(store)
    store.rollback(r1, expect_revision=r1 + 1)
    assert ("route", "orders") in _objects(store)


def test_rollback_runs_the_write_checks(store: Store) -> None:
    """The reconstructed policy goes through every check of the write path: here the
    cluster a restored route needs was deleted and is restored with it, in one change."""
    r1 = store.apply(Bundle.from_text(POLICY)).revision
    store.delete("route", "orders")
    store.delete("cluster", "orders")
    result = store.rollback(r1)
    assert {("cluster", "orders"), ("route", "orders")} <= {
        (c.kind, c.name) for c in result.changes
    }


def test_rollback_never_resurrects_a_revoked_api_key(store: Store) -> None:
    store.create(Consumer(name="acme"))
    kept, revoked = new_api_key("acme"), new_api_key("acme")
    store.create(kept)
    r = store.create(revoked)
    store.delete("api_key", revoked.name)  # revoke
    later = new_api_key("acme")
    store.create(later)
    result = store.rollback(r)
    names = {o.name for o in store.list_objects("api_key")}  # type: ignore[attr-defined]
    assert revoked.name not in names  # not resurrected
    assert later.name not in names  # created after the revision: removed
    assert kept.name in names
    assert [(s.kind, s.name) for s in result.skipped] == [("api_key", revoked.name)]
    assert "never restored" in result.skipped[0].reason


def test_rollback_restores_a_certificate_only_with_the_key_it_holds(store: Store) -> None:
    first = _certificate("api")
    r1 = store.create(first)
    second = _certificate("api")
    store.replace(second)
    # the key of r1 is not held any more (history keeps its digest): left as it is
    result = store.rollback(r1)
    assert [(s.kind, s.name) for s in result.skipped] == [("certificate", "api")]
    assert store.get("certificate", "api").key == second.key  # type: ignore[attr-defined]
    # same key, other fields changed: restored with the key the store holds
    store.replace(first)
    r2 = store.revision()
    store.delete("certificate", "api")
    result = store.rollback(r2)
    assert [(s.kind, s.name) for s in result.skipped] == [("certificate", "api")]
    assert "not held" in result.skipped[0].reason


def test_rollback_refused_when_a_needed_secret_object_cannot_be_restored(store: Store) -> None:
    store.create(_certificate("api"))
    r1 = store.apply(
        Bundle.from_text(
            "gateways:\n  - {name: web, port: 8443, tls: {certificates: [api]}}\n",
            self_contained=False,
        )
    ).revision
    store.delete("gateway", "web")
    store.delete("certificate", "api")
    newest = store.revision()
    with pytest.raises(PolicyInvalid, match=r"gateway 'web' needs certificate 'api'"):
        store.rollback(r1)
    assert store.revision() == newest


def test_revisions_written_before_history_cannot_be_targets(store: Store) -> None:
    r1 = store.apply(Bundle.from_text(POLICY)).revision
    store.replace(_cluster("users", "10.0.0.9:80"))
    with store._writer.begin() as conn:  # as migration 0005 leaves older rows
        conn.exec_driver_sql("UPDATE changes SET recorded = 0, before = NULL, after = NULL")
    r3 = store.delete("route", "orders")
    with pytest.raises(HistoryUnavailable, match="before history was recorded"):
        store.policy_at(r1)
    assert ("route", "orders") in store.policy_at(r3 - 1)
    with pytest.raises(NotFound):
        store.rollback(r1)


def test_retention_prunes_whole_old_revisions(store: Store) -> None:
    r1 = store.apply(Bundle.from_text(POLICY)).revision
    for i in range(5):
        store.replace(_cluster("users", f"10.0.0.{i + 10}:80"))
    newest = store.revision()
    assert prune_history(store, Retention(revisions=3)) > 0
    assert min(r.revision for r in store.history(limit=100)) == newest - 2
    assert store.policy_at(newest - 3)[("cluster", "users")]["endpoints"] == ["10.0.0.11:80"]
    with pytest.raises(HistoryUnavailable, match="pruned"):
        store.policy_at(r1)
    # by age: rows older than the cutoff go, younger stay
    assert prune_history(store, Retention(seconds=3600)) == 0
    assert prune_history(store, Retention(seconds=3600), now=time.time() + 7200) > 0
    assert store.history() == []
    assert store.policy_at(newest) == _objects(store)


def test_retention_keeps_what_a_live_controller_has_not_translated(store: Store) -> None:
    store.apply(Bundle.from_text(POLICY))
    store.save_builds("c1", "127.0.0.1:1", 1, {}, time.time())
    for i in range(5):
        store.replace(_cluster("users", f"10.0.0.{i + 10}:80"))
    prune_history(store, Retention(revisions=1))
    assert min(r.revision for r in store.history(limit=100)) == 2


def test_parse_retention() -> None:
    assert parse_retention("30d") == Retention(seconds=30 * 86400.0)
    assert parse_retention("12h") == Retention(seconds=12 * 3600.0)
    assert parse_retention("1000rev") == Retention(revisions=1000)
    assert parse_retention("forever") == Retention()
    for bad in ("", "0d", "5x", "-1d"):
        with pytest.raises(PolicyInvalid, match="--history-retention"):
            parse_retention(bad)


def test_history_survives_reopening(tmp_path: Path) -> None:
    db = str(tmp_path / "g.db")
    s = Store(db, create=True)
    r1 = s.apply(Bundle.from_text(POLICY)).revision
    s.delete("route", "orders")
    s.rollback(r1)
    s.close()
    s = Store(db)
    try:
        revs = s.history()
        assert revs[0].note == f"rollback to revision {r1}" and len(revs) == 3
    finally:
        s.close()


def test_the_controller_prunes_history_in_its_housekeeping(store: Store) -> None:
    import asyncio

    from controlplane.runner import Runner
    from controlplane.xds.cache import SnapshotCache

    store.apply(Bundle.from_text(POLICY))
    for i in range(4):
        store.replace(_cluster("users", f"10.0.0.{i + 10}:80"))
    runner = Runner(
        store,
        SnapshotCache(),
        controller="t",
        xds_address="127.0.0.1:0",
        history_retention=parse_retention("2rev"),
    )
    asyncio.run(runner._prune_history())
    assert [r.revision for r in store.history()] == [5, 4]


def test_restore_is_recorded_like_any_write(store: Store, tmp_path: Path) -> None:
    from controlplane.store.backup import backup, restore

    store.apply(Bundle.from_text(POLICY))
    backup(store, str(tmp_path / "b.db"))
    store.delete("route", "orders")
    with acting_as("restorer"):
        result, _ = restore(store, str(tmp_path / "b.db"))
    top = store.audit(limit=1)[0]
    assert (top.revision, top.actor, top.op, top.kind, top.name) == (
        result.revision,
        "restorer",
        "create",
        "route",
        "orders",
    )


def _cli(db: Path, *args: str) -> tuple[int, str, str]:
    from typer.testing import CliRunner

    from controlplane.cli.main import register_all

    app = register_all()
    from controlplane.errors import GatewayError

    result = CliRunner().invoke(app, ["--db", str(db), *args])
    code = result.exit_code
    if isinstance(result.exception, GatewayError):
        code = result.exception.exit_code
    return code, result.stdout, str(result.exception or "")


def test_cli_history_audit_rollback(tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    s = Store(str(db), create=True)
    r1 = s.apply(Bundle.from_text(POLICY)).revision
    s.create(Consumer(name="acme"))
    key = new_api_key("acme")
    s.create(key)
    s.replace(_cluster("users", "10.0.0.9:80"))
    s.close()
    code, out, _ = _cli(db, "-o", "json", "audit", "--kind", "api_key")
    assert code == 0 and key.name in out and key.key not in out and "<redacted sha256:" in out
    code, out, _ = _cli(db, "-o", "json", "audit", "--kind", "cluster", "--since", "1h")
    assert code == 0 and '"10.0.0.9:80"' in out
    code, out, _ = _cli(db, "-o", "json", "history", "cluster", "users")
    assert code == 0 and out.count('"revision"') == 2
    assert _cli(db, "history", "nope")[0] == 2
    assert _cli(db, "audit", "--since", "yesterday")[0] == 2
    code, out, _ = _cli(db, "diff", "--from", str(r1))
    assert code == 1 and "~ cluster users" in out and "+ api_key" in out
    assert _cli(db, "diff", "--from", str(r1), "-f", "x.yaml")[0] == 2
    assert _cli(db, "rollback", "99")[0] == 3
    assert _cli(db, "rollback", str(r1), "--expect-revision", "1")[0] == 4
    code, out, _ = _cli(db, "rollback", str(r1))
    assert code == 0 and "~ cluster users" in out
    assert _cli(db, "diff", "--from", str(r1))[0] == 0  # the key: created after r1, deleted

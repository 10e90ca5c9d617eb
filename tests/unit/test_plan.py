"""The plan is the apply: ``apply --dry-run`` runs the real write and rolls it back, so its
answer equals the real apply's; ``--expect-revision`` refuses a write planned against a
revision the database has left."""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from controlplane.errors import Conflict, GatewayError
from controlplane.policy import ApiKey, Bundle
from controlplane.policy.consumer import new_api_key
from controlplane.store import Store
from tests.e2e.harness import Cli

ROOT = Path(__file__).resolve().parents[2]

BASE: dict[str, Any] = {
    "gateways": [{"name": "public", "port": 8080}],
    "clusters": [
        {"name": "users", "endpoints": ["127.0.0.1:9001"]},
        {"name": "orders", "endpoints": ["127.0.0.1:9002"]},
        {"name": "spare", "endpoints": ["127.0.0.1:9003"]},
    ],
    "consumers": [{"name": "acme"}, {"name": "globex"}],
    "routes": [
        {"name": "users-api", "gateway": "public", "match": {"path_prefix": "/users"}},
        {"name": "orders-api", "gateway": "public", "match": {"path_prefix": "/orders"}},
    ],
}
BASE["routes"][0]["cluster"] = "users"
BASE["routes"][1]["cluster"] = "orders"


def _seed(path: Path, key: ApiKey | None = None) -> Store:
    """A database holding BASE and an API key of consumer acme (keys are not in files)."""
    store = Store(str(path), create=True)
    store.apply(Bundle.from_text(yaml.safe_dump(BASE), "base", self_contained=False))
    store.create(key or new_api_key("acme"))
    return store


def _outcome(store: Store, text: str, prune: bool, dry_run: bool) -> tuple[Any, ...]:
    bundle = Bundle.from_text(text, "change", self_contained=False)
    try:
        result = store.apply(bundle, prune=prune, dry_run=dry_run)
    except GatewayError as exc:
        return type(exc).__name__, exc.exit_code, str(exc)
    return "ok", 0, [(c.op, c.kind, c.name, c.before, c.after) for c in result.changes]


def _change_set(rng: random.Random, ghost: bool) -> tuple[str, bool]:
    """A random edit of BASE: objects left out, changed, added (some referring to objects
    that do not exist), with or without prune."""
    data: dict[str, Any] = {k: [dict(o) for o in v] for k, v in BASE.items()}
    for kind in ("clusters", "consumers", "routes"):
        data[kind] = [o for o in data[kind] if rng.random() > 0.3]
    for route in data["routes"]:
        if rng.random() < 0.4:
            route["timeout"] = f"{rng.randint(1, 9)}s"
    if ghost or rng.random() < 0.5:
        target = "ghost" if ghost else rng.choice(["users", "orders", "spare"])
        data["routes"].append(
            {
                "name": f"new-{rng.randint(0, 99)}",
                "gateway": "public",
                "match": {"path_prefix": f"/n{rng.randint(0, 99)}"},
                "cluster": target,
            }
        )
    if rng.random() < 0.3:
        data["clusters"].append({"name": "extra", "endpoints": ["127.0.0.1:9100"]})
    return yaml.safe_dump(data), rng.random() < 0.6


def test_generated_change_sets_dry_run_equals_apply(tmp_path: Path) -> None:
    rng = random.Random(12)
    kinds: set[Any] = set()
    for i in range(20):
        text, prune = _change_set(rng, ghost=i % 4 == 0)
        key = new_api_key("acme")
        dry_store = _seed(tmp_path / f"dry{i}.db", key)
        real_store = _seed(tmp_path / f"real{i}.db", key)
        try:
            before = dry_store.revision(), dry_store.bundle().to_yaml(), _keys(dry_store)
            dry = _outcome(dry_store, text, prune, dry_run=True)
            # the dry run wrote nothing
            assert (dry_store.revision(), dry_store.bundle().to_yaml(), _keys(dry_store)) == before
            real = _outcome(real_store, text, prune, dry_run=False)
            assert dry == real, f"change set {i} (prune={prune}):\n{text}"
            kinds.add(dry[0])
        finally:
            dry_store.close()
            real_store.close()
    # the generator covers successes and both kinds of refusal
    assert {"ok", "Conflict", "PolicyInvalid"} <= kinds


def _keys(store: Store) -> list[str]:
    return sorted(k.name for k in store.list_objects("api_key"))  # type: ignore[attr-defined]


def test_dry_run_of_a_secret_creates_no_key_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sealing the first secret creates the database's key file: a dry run must not."""
    from controlplane.store.secrets import ENV_KEY, ENV_KEY_FILE, default_key_file

    monkeypatch.delenv(ENV_KEY, raising=False)
    monkeypatch.delenv(ENV_KEY_FILE, raising=False)
    db = tmp_path / "gateway.db"
    store = Store(str(db), create=True)
    try:
        store.apply(Bundle.from_text("consumers: [{name: acme}]\n", "c"))
        key = new_api_key("acme")
        result = store._commit([("create", "api_key", key.name, key)], dry_run=True)
        assert [c.op for c in result.changes] == ["create"]
        assert not default_key_file(str(db)).exists()
        assert store.list_objects("api_key") == []
        store.create(key)  # the real write creates it
        assert default_key_file(str(db)).exists()
    finally:
        store.close()


def test_demo_prune_with_a_key_dry_run_exits_like_apply(tmp_path: Path) -> None:
    db = tmp_path / "gateway.db"
    store = _seed(db)
    store.close()
    cli = Cli(db=str(db), init=False)
    demo = str(ROOT / "examples" / "demo.yaml")
    dry = cli.run("apply", "-f", demo, "--prune", "--dry-run", check=False)
    state = _snapshot(db)
    real = cli.run("apply", "-f", demo, "--prune", check=False)
    assert dry.returncode == real.returncode == 4, dry.stderr + real.stderr
    assert "cannot delete consumer 'acme'" in dry.stderr
    assert dry.stderr.strip() == real.stderr.strip()
    assert _snapshot(db) == state  # the refused apply wrote nothing either


def _snapshot(db: Path) -> tuple[int, str]:
    store = Store(str(db))
    try:
        return store.revision(), store.bundle().to_yaml()
    finally:
        store.close()


def test_expect_revision_refuses_a_stale_write(tmp_path: Path) -> None:
    store = _seed(tmp_path / "gateway.db")
    try:
        rev = store.revision()
        text = yaml.safe_dump({"clusters": [{"name": "a", "endpoints": ["127.0.0.1:1"]}]})
        bundle = Bundle.from_text(text, "a", self_contained=False)
        assert store.apply(bundle, expect_revision=rev).revision == rev + 1
        other = Bundle.from_text(text.replace("name: a", "name: b"), "b", self_contained=False)
        with pytest.raises(Conflict, match=f"revision is {rev + 1}, not {rev} as expected"):
            store.apply(other, expect_revision=rev)
        assert store.revision() == rev + 1
        assert [c.name for c in store.list_objects("cluster")] == [  # type: ignore[attr-defined]
            "a",
            "orders",
            "spare",
            "users",
        ]
    finally:
        store.close()


def test_two_writers_planned_against_one_revision(tmp_path: Path) -> None:
    """Both planned at revision N, writing at once from two stores: exactly one lands, the
    other is refused with Conflict and writes nothing; nothing the winner wrote is lost."""
    db = tmp_path / "gateway.db"
    _seed(db).close()
    stores = [Store(str(db)), Store(str(db))]
    rev = stores[0].revision()
    start = threading.Barrier(2)
    results: dict[int, Any] = {}

    def write(i: int) -> None:
        cluster = {"name": f"w{i}", "endpoints": [f"127.0.0.1:{9200 + i}"]}
        text = yaml.safe_dump({"clusters": [cluster]})
        bundle = Bundle.from_text(text, f"w{i}", self_contained=False)
        start.wait()
        try:
            results[i] = stores[i].apply(bundle, expect_revision=rev).revision
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
        assert results[won[0]] == rev + 1 == stores[0].revision()
        names = {c.name for c in stores[0].list_objects("cluster")}  # type: ignore[attr-defined]
        assert f"w{won[0]}" in names and f"w{lost[0]}" not in names
    finally:
        for s in stores:
            s.close()


def test_cli_expect_revision(tmp_path: Path) -> None:
    db = tmp_path / "gateway.db"
    _seed(db).close()
    rev, contents = _snapshot(db)
    cli = Cli(db=str(db), init=False)
    text = "clusters:\n  - {name: late, endpoints: ['127.0.0.1:1']}\n"
    stale = cli.run("apply", "-f", "-", "--expect-revision", str(rev - 1), input=text, check=False)
    assert stale.returncode == 4
    assert stale.stderr.strip().count("\n") == 0 and "not " + str(rev - 1) in stale.stderr
    assert _snapshot(db) == (rev, contents)
    cli.run("apply", "-f", "-", "--expect-revision", str(rev), input=text)
    assert _snapshot(db)[0] == rev + 1


def test_imperative_commands_expect_revision(tmp_path: Path) -> None:
    db = tmp_path / "gateway.db"
    _seed(db).close()
    rev, contents = _snapshot(db)
    cli = Cli(db=str(db), init=False)
    stale = str(rev - 1)
    for args in (
        ("cluster", "add", "late", "--endpoint", "127.0.0.1:1"),
        ("route", "update", "users-api", "--timeout", "3s"),
        ("cluster", "delete", "spare"),
    ):
        proc = cli.run(*args, "--expect-revision", stale, check=False)
        assert proc.returncode == 4, proc.stderr
        assert f"not {stale} as expected" in proc.stderr
    assert _snapshot(db) == (rev, contents)
    cli.run("cluster", "delete", "spare", "--expect-revision", str(rev))
    assert _snapshot(db)[0] == rev + 1

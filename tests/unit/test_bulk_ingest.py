"""Bulk ingest: changed objects are read in batches (a bounded number of SELECTs however many
changed), and the YAML reader is libyaml's with every strict check of the policy loader."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import event
from sqlalchemy.engine import Engine

from controlplane.errors import PolicyInvalid
from controlplane.policy import Cluster, Gateway, Route, loader
from controlplane.store import Store

N = 1_234  # more than two batches


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(str(tmp_path / "gateway.db"), create=True)
    s.apply_objects(
        [Gateway(name="web", port=8080), Cluster(name="app", endpoints=["10.0.0.1:80"])]
    )
    yield s
    s.close()


class Selects:
    """SELECT statements sent to any database while counting (a SQLAlchemy event)."""

    def __init__(self) -> None:
        self.count = 0
        self.on = False

    def __call__(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if self.on and statement.lstrip().upper().startswith("SELECT"):
            self.count += 1


@pytest.fixture
def selects() -> Iterator[Selects]:
    counter = Selects()
    event.listen(Engine, "before_cursor_execute", counter)
    yield counter
    event.remove(Engine, "before_cursor_execute", counter)


def _route(i: int, cluster: str = "app") -> Route:
    return Route(name=f"r{i:05d}", gateways=["web"], match={"path_prefix": f"/r/{i:05d}"},
                 cluster=cluster)  # fmt: skip


def test_changes_since_reads_changed_objects_in_batches(store: Store, selects: Selects) -> None:
    before = store.revision()
    store.apply_objects(_route(i) for i in range(N))
    store.delete("route", "r00007")
    store.create(Cluster(name="other", endpoints=["10.0.0.2:80"]))
    selects.on = True
    revision, changes = store.changes_since(before)
    selects.on = False
    # the revision, the touched (kind, name) list, then one SELECT per kind and batch of
    # names (500): 2 + 3 + 1 here, where one per object was 1,237
    assert selects.count <= 10, selects.count
    assert revision == store.revision()
    got = {(kind, name): obj for kind, name, obj in changes}
    assert len(got) == N + 1
    assert got[("route", "r00007")] is None  # deleted
    assert got[("route", "r01233")] == _route(1233)
    assert got[("cluster", "other")] == Cluster(name="other", endpoints=["10.0.0.2:80"])


def test_writing_many_objects_reads_them_in_batches(store: Store, selects: Selects) -> None:
    store.apply_objects(_route(i) for i in range(N))
    ops = [("update", "route", f"r{i:05d}", _route(i, "app2")) for i in range(N)]
    store.create(Cluster(name="app2", endpoints=["10.0.0.3:80"]))
    selects.on = True
    result = store.write(ops)
    selects.on = False
    assert len(result.changes) == N
    # current values in batches of 500; the other SELECTs of a write do not grow with N
    assert selects.count <= 15, selects.count
    assert store.get("route", "r00042").spec()["cluster"] == "app2"


# -- the YAML reader --------------------------------------------------------------------------


@pytest.fixture(params=["libyaml", "python"])
def reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every strict check runs with both readers (libyaml's is the default when present)."""
    if request.param == "python":
        monkeypatch.setattr(loader, "_CLoader", None)
    elif loader._CLoader is None:
        pytest.skip("PyYAML without libyaml")
    return str(request.param)


def _refused(text: str) -> str:
    with pytest.raises(PolicyInvalid) as info:
        loader.load_text(text, "policy.yaml")
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.skipif(not yaml.__with_libyaml__, reason="PyYAML without libyaml")
def test_libyaml_reads_policy_files() -> None:
    cls = loader._loader_class()
    # libyaml scans and parses; the strict constructor and the depth-tracking composer
    # (which builds a file one list item at a time) run on its events
    assert issubclass(cls, yaml.cyaml.CParser)
    assert issubclass(cls, loader._StrictConstructor)
    assert issubclass(cls, loader._DepthComposer)
    assert issubclass(cls, yaml.constructor.SafeConstructor)


def test_both_readers_read_the_same(reader: str) -> None:
    text = (
        "gateways:\n- {name: web, port: 8080, address: 127.0.0.1}\n"
        "routes:\n- name: a\n  gateway: web\n  match: {path_prefix: /a}\n  cluster: app\n"
        "  timeout: 5s\n  retries: {attempts: 2}\n  enabled: yes\n  weight: 0x10\n"
    )
    assert loader.load_text(text) == yaml.load(text, Loader=yaml.SafeLoader)


def test_duplicate_keys_name_both_lines(reader: str) -> None:
    text = "routes:\n- name: p\n  auth: {jwt: [corp]}\n  auth: {}\n"
    assert _refused(text) == (
        "policy.yaml: duplicate key 'auth' at line 4 (first at line 3); "
        "a key may appear once in a mapping"
    )


def test_merge_keys_still_override(reader: str) -> None:
    text = "x: &d {port: 8080, address: a}\ngateways: [{<<: *d, name: web, port: 8081}]\n"
    assert loader.load_text(text)["gateways"][0] == {"port": 8081, "address": "a", "name": "web"}
    top = "d: &d {routes: [], x: 1}\n<<: [*d, {y: 2, x: 3}]\nx: 4\n"
    assert loader.load_text(top) == yaml.load(top, Loader=yaml.SafeLoader)


@pytest.mark.parametrize(
    "text",
    [
        "routes: &r [{a: 1}, {b: [1, 2]}]\nother: *r\n",
        "!!map {routes: [1, 2]}",
        "routes: !!seq [1, 2]\nclusters: []\ngateways:\n",
        "- a\n- b\n",
        "plain",
        "",
        "routes:\n- &x {name: a}\n- *x\n- {<<: *x, name: b}\n",
        "1: [a]\n2.5: [b]\nnull: [c]\n",
    ],
)
def test_every_document_shape_reads_as_pyyaml_reads_it(reader: str, text: str) -> None:
    assert loader.load_text(text) == yaml.load(text, Loader=yaml.SafeLoader)


def test_the_alias_budget_spans_the_whole_file(reader: str) -> None:
    # each item stays under the budget; together they are over it
    big = "[" + ", ".join(["*a"] * 1000) + "]"
    text = f"x: &a [{', '.join(['1'] * 1000)}]\nroutes:\n" + f"- {big}\n" * 3
    assert "expands to more than" in _refused(text)


@pytest.mark.parametrize(
    "text",
    [
        "gateways: " + "[" * 100_000 + "]" * 100_000,  # beyond libyaml's own limit (1,000)
        "gateways: " + "[" * 70 + "]" * 70,  # under it, over MAX_DEPTH
        "a:\n" + "".join(" " * (i + 1) + f"k{i}:\n" for i in range(80)) + " " * 82 + "x\n",
        "- " * 5_000 + "x",
    ],
    ids=["flow-100k", "flow-70", "block-80", "compact-5k"],
)
def test_deep_nesting_is_refused(reader: str, text: str) -> None:
    assert f"nested deeper than {loader.MAX_DEPTH} levels" in _refused(text)


def test_nesting_at_the_limit_is_read(reader: str) -> None:
    depth = loader.MAX_DEPTH - 1  # the top-level mapping is one level
    data = loader.load_text("a: " + "[" * (depth - 1) + "]" * (depth - 1))
    assert isinstance(data, dict)


def test_depth_through_aliases_is_counted(reader: str) -> None:
    # each anchor nests the previous one two levels deeper: the data built is 80 deep
    lines = ["a0: &a0 [x]"] + [f"a{i}: &a{i} [[*a{i - 1}]]" for i in range(1, 40)]
    assert "nested deeper than" in _refused("\n".join(lines) + "\n")


def test_alias_bombs_and_cycles_are_refused(reader: str) -> None:
    bomb = "a: &a [1,1,1,1,1,1,1,1,1,1]\n"
    prev = "a"
    for name in "bcdefgh":
        bomb += f"{name}: &{name} [{', '.join([f'*{prev}'] * 10)}]\n"
        prev = name
    assert "expands to more than" in _refused(bomb)
    assert "refers to itself" in _refused("gateways: &g [*g]\n")


def test_duplicate_top_level_keys_and_documents(reader: str) -> None:
    assert "duplicate key 'routes' at line 3 (first at line 1)" in _refused(
        "routes: [a]\nclusters: []\nroutes: [b]\n"
    )
    assert "malformed YAML" in _refused("routes: []\n---\nroutes: []\n")


def test_characters_yaml_does_not_allow(reader: str) -> None:
    assert "is not allowed in YAML" in _refused("gateways: [{name: \x07}]")
    assert "malformed YAML" in _refused("routes: [")


def test_items_are_handed_over_as_they_are_read(reader: str) -> None:
    seen: list[tuple[str, int]] = []

    def hook(key: str, i: int, value: Any) -> Any:
        seen.append((key, i))
        if value == "bad":
            raise ValueError("refused")
        return (key, value)

    data = loader.load_text("routes: [a, b]\nclusters: [bad, c]\nx: 1\n", item=hook)
    # after the hook refuses an item it is called no more: the rest stays plain
    assert seen == [("routes", 0), ("routes", 1), ("clusters", 0)]
    assert data == {"routes": [("routes", "a"), ("routes", "b")], "clusters": ["bad", "c"], "x": 1}


def test_the_value_budget_counts_plain_items_too(
    reader: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # no anchor anywhere: items are counted as the composer builds them
    monkeypatch.setattr(loader, "MAX_NODES", 50)
    assert loader.load_text("routes:\n" + "- {a: 1}\n" * 10) is not None  # 1 + 2 + 10 * 3
    assert "expands to more than 50 values" in _refused("routes:\n" + "- {a: 1}\n" * 20)

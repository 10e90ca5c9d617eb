"""``Store.revert`` (what ``--atomic`` runs after a NACK): the previous values come back as
a new revision, and never over a change someone wrote since."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.errors import Conflict
from controlplane.policy import parse_object
from controlplane.store import Store


def test_revert_writes_the_previous_values_as_a_new_revision(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "p.db"), create=True)
    try:
        store.create(parse_object("gateway", {"name": "gw", "port": 8080}))
        store.create(parse_object("cluster", {"name": "old", "endpoints": ["127.0.0.1:9000"]}))
        store.create(parse_object("route", {"name": "r", "gateway": "gw", "cluster": "old"}))
        before = store.bundle().to_yaml()
        new = parse_object("cluster", {"name": "new", "endpoints": ["127.0.0.1:9001"]})
        route = parse_object("route", {"name": "r", "gateway": "gw", "cluster": "new"})
        result = store.write(
            [
                ("update", "gateway", "gw", parse_object("gateway", {"name": "gw", "port": 9})),
                ("create", "cluster", "new", new),
                ("update", "route", "r", route),
            ]
        )
        undone = store.revert(result)
        assert undone.revision == result.revision + 1
        assert store.bundle().to_yaml() == before
        assert sorted((c.op, c.kind, c.name) for c in undone.changes) == [
            ("delete", "cluster", "new"),
            ("update", "gateway", "gw"),
            ("update", "route", "r"),
        ]
    finally:
        store.close()


def test_revert_refuses_when_something_was_written_since(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "p.db"), create=True)
    try:
        store.create(parse_object("gateway", {"name": "gw", "port": 8080}))
        result = store.write(
            [("update", "gateway", "gw", parse_object("gateway", {"name": "gw", "port": 9090}))]
        )
        store.create(parse_object("gateway", {"name": "other", "port": 8081}))
        revision = store.revision()
        with pytest.raises(Conflict, match="another change was written since"):
            store.revert(result)
        assert store.revision() == revision
        assert store.get("gateway", "gw").port == 9090  # type: ignore[attr-defined]
    finally:
        store.close()

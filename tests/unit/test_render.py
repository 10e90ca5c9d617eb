"""``render`` without a controller: the demo policy, a missing gateway, a stored object
that does not translate."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.errors import NotFound
from controlplane.policy import Bundle
from controlplane.render import render_gateway
from controlplane.settings import Settings
from controlplane.store import Store

ROOT = Path(__file__).resolve().parents[2]


def test_render_demo_offline(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "gateway.db"), create=True)
    try:
        text = (ROOT / "examples" / "demo.yaml").read_text()
        store.apply(Bundle.from_text(text, "demo.yaml"))
        out = render_gateway(store, "public", settings=Settings())
        assert out["revision"] == store.revision()
        assert {c["name"] for c in out["clusters"]["resources"]} >= {"users", "orders"}
        assert [r["name"] for r in out["routes"]["resources"]] == ["public"]
        assert "public" in {x["name"] for x in out["listeners"]["resources"]}
        with pytest.raises(NotFound, match="gateway 'nope' does not exist"):
            render_gateway(store, "nope", settings=Settings())
    finally:
        store.close()


def test_render_of_a_gateway_that_does_not_translate_is_one_error(tmp_path: Path) -> None:
    """What the controller would withhold (a stored object that no longer validates) is the
    command's error, naming the object, not a configuration."""
    from controlplane.errors import TranslationError
    from tests.unit.test_confinement import _too_many, corrupt

    db = tmp_path / "gateway.db"
    store = Store(str(db), create=True)
    try:
        text = (ROOT / "examples" / "demo.yaml").read_text()
        store.apply(Bundle.from_text(text, "demo.yaml"))
        corrupt(str(db), "cluster", "users", _too_many)
        with pytest.raises(TranslationError, match=r"gateway 'public': .*cluster 'users'"):
            render_gateway(store, "public", settings=Settings())
    finally:
        store.close()

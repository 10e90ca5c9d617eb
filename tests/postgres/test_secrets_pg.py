"""Secrets at rest on PostgreSQL: no default key, encrypted rows, rotation, and the
migration of rows the previous schema wrote in clear."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import create_engine, text

from controlplane.policy import Consumer, new_api_key
from controlplane.store import SecretKeyError, Store
from controlplane.store.repository import SCHEMA_HEAD
from controlplane.store.secrets import ENV_KEY, ENV_KEY_FILE, format_key, key_id, new_key


@pytest.fixture(autouse=True)
def _no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_KEY, raising=False)
    monkeypatch.delenv(ENV_KEY_FILE, raising=False)


def _rows(url: str) -> str:
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT row_to_json(r)::text FROM resources r")).scalars()
        out = "\n".join(rows)
    engine.dispose()
    return out


def test_secrets_need_a_configured_key_and_are_stored_encrypted(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(pg_url, create=True)
    store.create(Consumer(name="acme"))  # no secret: no key needed
    key = new_api_key("acme")
    with pytest.raises(SecretKeyError, match="a PostgreSQL database has no default key file"):
        store.create(key)
    old, new = new_key(), new_key()
    monkeypatch.setenv(ENV_KEY, format_key(old))
    Store(pg_url, create=True).create(key)
    assert key.key not in _rows(pg_url)

    monkeypatch.setenv(ENV_KEY, f"{format_key(old)} {format_key(new)}")
    rotating = Store(pg_url, create=True)
    assert rotating.rotate_secrets() == 1
    assert rotating.secrets_report().rows_by_key == {key_id(new): 1}
    monkeypatch.setenv(ENV_KEY, format_key(new))
    assert Store(pg_url, create=True).get("api_key", key.name) == key


def test_migration_encrypts_clear_rows(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from alembic import command

    from controlplane.store.repository import alembic_config

    key = new_api_key("acme")
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0003")
        for i, obj in enumerate([Consumer(name="acme"), key], 1):
            conn.execute(
                text("INSERT INTO resources VALUES (:k, :n, :s, :r)"),
                {"k": obj.kind, "n": obj.name, "s": json.dumps(obj.spec()), "r": i},
            )
    engine.dispose()
    assert key.key in _rows(pg_url)
    monkeypatch.setenv(ENV_KEY, format_key(new_key()))
    store = Store(pg_url, create=True)
    assert store.schema_version() == SCHEMA_HEAD
    assert key.key not in _rows(pg_url)
    assert store.get("api_key", key.name) == key

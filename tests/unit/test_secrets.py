"""Secrets at rest: what the database file holds, keys and their rotation, the migration of
clear rows, and files the CLI writes with secrets in them."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from controlplane.policy import ApiKey, Bundle, Certificate, Consumer, new_api_key
from controlplane.store import SecretKeyError, SecretKeys, Store
from controlplane.store.repository import SCHEMA_HEAD
from controlplane.store.secrets import ENV_KEY, ENV_KEY_FILE, format_key, key_id, new_key
from tests.e2e.harness import gatewayctl_command
from tests.e2e.tlsutil import TestCA

PREVIOUS_SCHEMA = "0003"


@pytest.fixture(autouse=True)
def _no_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_KEY, raising=False)
    monkeypatch.delenv(ENV_KEY_FILE, raising=False)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "gateway.db"


def _certificate(name: str = "api") -> Certificate:
    issued = TestCA().issue("api.example.com", ["api.example.com"])
    return Certificate(name=name, cert=issued.cert, key=issued.key)


def _raw(db: Path) -> bytes:
    """Every byte SQLite keeps for the database: the file, its WAL and shared memory."""
    parts = [db, Path(f"{db}-wal"), Path(f"{db}-shm")]
    return b"".join(p.read_bytes() for p in parts if p.exists())


def _pem_body(pem: str) -> list[str]:
    """The base64 lines of a PEM block: what a leaked private key looks like on disk."""
    return [line for line in pem.splitlines() if line and not line.startswith("-----")]


def _populate(store: Store) -> tuple[ApiKey, Certificate]:
    store.create(Consumer(name="acme"))
    key = new_api_key("acme")
    store.create(key)
    cert = _certificate()
    store.create(cert)
    return key, cert


def _assert_no_clear_secrets(db: Path, key: ApiKey, cert: Certificate) -> None:
    raw = _raw(db)
    assert key.key.encode() not in raw
    for line in _pem_body(cert.key):
        assert line.encode() not in raw, "a line of the private key is in the database file"
    with sqlite3.connect(db) as conn:
        dump = "\n".join(conn.iterdump())
    assert key.key not in dump and not any(line in dump for line in _pem_body(cert.key))


def _gatewayctl(db: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    base = {k: v for k, v in os.environ.items() if k not in (ENV_KEY, ENV_KEY_FILE)}
    return subprocess.run(
        [*gatewayctl_command(), *args],
        env={**base, "GATEWAY_DB": str(db), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


# -- the database file ------------------------------------------------------------------------


def test_database_file_holds_no_api_key_and_no_private_key(db: Path) -> None:
    store = Store(str(db), create=True)
    key, cert = _populate(store)
    store.update("certificate", "api", lambda s: s)  # a write that re-reads the secret
    store.close()
    _assert_no_clear_secrets(db, key, cert)

    again = Store(str(db), create=True)  # and they come back whole
    assert again.get("api_key", key.name) == key
    assert again.get("certificate", "api") == cert
    assert again.bundle().certificates == [cert]  # type: ignore[attr-defined]
    with sqlite3.connect(db) as conn:
        kinds = dict(conn.execute("SELECT kind, secret_key_id FROM resources"))
    ring = again.secrets.ring()
    assert kinds == {"consumer": None, "api_key": ring.current_id, "certificate": ring.current_id}


def test_the_default_key_file_is_created_0600_next_to_the_database(db: Path) -> None:
    store = Store(str(db), create=True)
    store.create(Consumer(name="acme"))
    keys = Path(f"{db}.keys")
    assert not keys.exists()  # no secret yet, no key
    store.create(new_api_key("acme"))
    assert keys.stat().st_mode & 0o777 == 0o600
    assert len(store.secrets.ring().keys) == 1


def test_a_ciphertext_moved_to_another_row_does_not_decrypt(db: Path) -> None:
    store = Store(str(db), create=True)
    store.create(Consumer(name="acme"))
    one, two = new_api_key("acme"), new_api_key("acme")
    store.create(one)
    store.create(two)
    with sqlite3.connect(db) as conn:
        secret = conn.execute("SELECT secret FROM resources WHERE name = ?", (one.name,)).fetchone()
        conn.execute("UPDATE resources SET secret = ? WHERE name = ?", (secret[0], two.name))
    with pytest.raises(SecretKeyError, match=f"api_key '{two.name}': secret does not decrypt"):
        Store(str(db), create=True).get("api_key", two.name)


# -- keys: where they come from, what happens when they are missing or wrong --------------


def test_keys_from_the_environment_last_one_encrypts(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = new_key(), new_key()
    monkeypatch.setenv(ENV_KEY, format_key(old))
    store = Store(str(db), create=True)
    key, _ = _populate(store)
    assert store.secrets_report().rows_by_key == {key_id(old): 2}
    assert not Path(f"{db}.keys").exists()  # the environment's key, no file made

    monkeypatch.setenv(ENV_KEY, f"{format_key(old)}, {format_key(new)}")
    store = Store(str(db), create=True)
    assert store.rotate_secrets() == 2
    assert store.secrets_report().rows_by_key == {key_id(new): 2}

    monkeypatch.setenv(ENV_KEY, format_key(new))  # the old key retired
    assert Store(str(db), create=True).get("api_key", key.name) == key
    monkeypatch.setenv(ENV_KEY, format_key(old))
    with pytest.raises(SecretKeyError, match=f"encrypted with secret key {key_id(new)}"):
        Store(str(db), create=True).get("api_key", key.name)


def test_key_file_from_the_environment(
    db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "secret.keys"
    monkeypatch.setenv(ENV_KEY_FILE, str(path))
    Store(str(db), create=True).create(Consumer(name="acme"))
    key = new_api_key("acme")
    with pytest.raises(SecretKeyError, match=f"{ENV_KEY_FILE}={path}: no such file"):
        Store(str(db), create=True).create(key)
    assert not path.exists()  # an explicit file is never made up
    path.write_text(f"# comment\n{format_key(new_key())}\n")
    Store(str(db), create=True).create(key)
    assert Store(str(db), create=True).get("api_key", key.name) == key
    assert not Path(f"{db}.keys").exists()


def test_postgresql_has_no_default_key() -> None:
    keys = SecretKeys.for_database("gateway", sqlite=False)
    with pytest.raises(SecretKeyError, match="a PostgreSQL database has no default key file"):
        keys.seal("api_key", "ak_000000000000", {"key": "x"})


def test_a_new_key_is_never_mixed_with_secrets_it_cannot_read(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(str(db), create=True)
    _populate(store)
    Path(f"{db}.keys").rename(db.parent / "elsewhere.keys")
    revision = store.revision()
    fresh = Store(str(db), create=True)
    with pytest.raises(SecretKeyError, match="the database holds secrets encrypted with key"):
        fresh.create(new_api_key("acme"))
    assert not Path(f"{db}.keys").exists() and fresh.revision() == revision
    monkeypatch.setenv(ENV_KEY, format_key(new_key()))
    with pytest.raises(SecretKeyError, match=f"which {ENV_KEY} does not have"):
        Store(str(db), create=True).create(new_api_key("acme"))
    assert Store(str(db), create=True).revision() == revision


@pytest.mark.parametrize("case", ["missing file", "other key", "not a key", "missing env file"])
def test_cli_without_the_right_key_is_one_line_exit_5(db: Path, tmp_path: Path, case: str) -> None:
    Store(str(db), create=True).create(Consumer(name="acme"))
    assert _gatewayctl(db, "consumer", "key", "add", "acme").returncode == 0
    env: dict[str, str] = {}
    if case == "missing file":
        Path(f"{db}.keys").unlink()
        expected = f"{db}.keys does not exist"
    elif case == "other key":
        env = {ENV_KEY: format_key(new_key())}
        expected = f"which {ENV_KEY} does not have"
    elif case == "not a key":
        env = {ENV_KEY: "c2hvcnQ="}
        expected = f"{ENV_KEY}: key 1 is not a base64-encoded 32-byte key"
    else:
        env = {ENV_KEY_FILE: str(tmp_path / "nope")}
        expected = f"{ENV_KEY_FILE}={tmp_path / 'nope'}: no such file"
    for args in (("consumer", "key", "list"), ("export",), ("consumer", "key", "add", "acme")):
        proc = _gatewayctl(db, *args, env=env)
        assert proc.returncode == 5, proc.stderr
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr
        assert expected in proc.stderr and "Traceback" not in proc.stderr
    with sqlite3.connect(db) as conn:  # the refused key add wrote nothing
        assert conn.execute("SELECT count(*) FROM resources WHERE kind = 'api_key'").fetchone() == (
            1,
        )
    assert case != "missing file" or not Path(f"{db}.keys").exists()  # and made no key


# -- rotation --------------------------------------------------------------------------------


def test_rotate_reencrypts_every_secret_and_retires_old_keys(db: Path) -> None:
    store = Store(str(db), create=True)
    key, cert = _populate(store)
    for _ in range(5):
        store.create(new_api_key("acme"))
    first = store.secrets.ring().current_id
    revision = store.revision()

    proc = _gatewayctl(db, "secrets", "rotate")
    assert proc.returncode == 0, proc.stderr
    assert "re-encrypted 7 secret(s)" in proc.stderr
    status = _gatewayctl(db, "-o", "json", "secrets", "status")
    report = json.loads(status.stdout)
    [old, new] = report["keys"]
    assert old == {"id": first, "current": False, "rows": 0}
    assert new["current"] and new["rows"] == 7
    assert Store(str(db), create=True).revision() == revision  # not a policy change

    proc = _gatewayctl(db, "secrets", "rotate", "--retire-old")
    assert proc.returncode == 0, proc.stderr
    fresh = Store(str(db), create=True)
    ring = fresh.secrets.ring()
    assert list(ring.keys) == [ring.current_id] and first not in ring.keys
    assert fresh.get("api_key", key.name) == key and fresh.get("certificate", "api") == cert
    assert Path(f"{db}.keys").stat().st_mode & 0o777 == 0o600
    _assert_no_clear_secrets(db, key, cert)


def test_rotate_with_keys_from_the_environment(db: Path) -> None:
    old, new = format_key(new_key()), format_key(new_key())
    Store(str(db), create=True).create(Consumer(name="acme"))
    assert _gatewayctl(db, "consumer", "key", "add", "acme", env={ENV_KEY: old}).returncode == 0
    proc = _gatewayctl(db, "secrets", "rotate", env={ENV_KEY: f"{old},{new}"})
    assert proc.returncode == 5 and "add a new key there" in proc.stderr
    proc = _gatewayctl(db, "secrets", "rotate", "--no-new-key", env={ENV_KEY: f"{old},{new}"})
    assert proc.returncode == 0 and "re-encrypted 1 secret(s)" in proc.stderr
    assert _gatewayctl(db, "consumer", "key", "list", env={ENV_KEY: new}).returncode == 0


def test_a_running_reader_picks_up_a_key_added_to_the_file(db: Path) -> None:
    """A controller loaded its keys before ``rotate`` added one: it reads the file again."""
    reader = Store(str(db), create=True)
    key, _ = _populate(reader)
    reader.get("api_key", key.name)  # keys loaded
    assert _gatewayctl(db, "secrets", "rotate").returncode == 0
    later = new_api_key("acme")
    Store(str(db), create=True).create(later)  # encrypted with the new key
    assert reader.get("api_key", later.name) == later


# -- the migration of a database written in clear ------------------------------------------


def _clear_database(db: Path, objects: list[Any]) -> None:
    """A database as the previous schema (0003) stored it: every spec in clear."""
    from alembic import command
    from sqlalchemy import create_engine

    from controlplane.store.repository import alembic_config
    from controlplane.store.tables import Meta

    engine = create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, PREVIOUS_SCHEMA)
        conn.execute(Meta.__table__.update().values(revision=len(objects)))
        for i, obj in enumerate(objects, 1):
            conn.exec_driver_sql(
                "INSERT INTO resources (kind, name, spec, revision) VALUES (?, ?, ?, ?)",
                (obj.kind, obj.name, json.dumps(obj.spec()), i),
            )
    engine.dispose()


def test_migration_encrypts_a_clear_database(db: Path) -> None:
    key, cert = new_api_key("acme"), _certificate()
    _clear_database(db, [Consumer(name="acme"), key, cert])
    raw = _raw(db)
    assert key.key.encode() in raw  # the starting point: in clear
    assert _pem_body(cert.key)[1].encode() in raw

    store = Store(str(db), create=True)
    assert store.schema_version() == SCHEMA_HEAD
    assert store.get("api_key", key.name) == key and store.get("certificate", "api") == cert
    assert store.revision() == 3  # the data is the same policy
    report = store.secrets_report()
    assert report.rows_by_key == {store.secrets.ring().current_id: 2} and report.clear_rows == 0
    store.close()
    _assert_no_clear_secrets(db, key, cert)
    assert Path(f"{db}.keys").stat().st_mode & 0o777 == 0o600


def test_migration_of_a_database_without_secrets_needs_no_key(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _clear_database(db, [Consumer(name="acme")])
    monkeypatch.setenv(ENV_KEY_FILE, str(db.parent / "absent"))
    store = Store(str(db), create=True)
    assert store.schema_version() == SCHEMA_HEAD and store.get("consumer", "acme").name == "acme"


def test_migration_without_a_key_for_clear_secrets_changes_nothing(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = new_api_key("acme")
    _clear_database(db, [Consumer(name="acme"), key])
    monkeypatch.setenv(ENV_KEY_FILE, str(db.parent / "absent"))
    with pytest.raises(SecretKeyError, match="no such file"):
        Store(str(db), create=True)
    assert Store(str(db), migrate=False).schema_version() == PREVIOUS_SCHEMA


# -- files with secrets ------------------------------------------------------------------------


def test_export_file_is_0600_whatever_the_umask(db: Path, tmp_path: Path) -> None:
    store = Store(str(db), create=True)
    cert = _certificate()
    store.create(cert)
    out = tmp_path / "backup.yaml"
    out.write_text("old\n")
    out.chmod(0o644)  # an existing, wider file is replaced, not reused
    old = os.umask(0o000)
    try:
        proc = _gatewayctl(db, "export", "-f", str(out))
    finally:
        os.umask(old)
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_mode & 0o777 == 0o600
    assert Bundle.from_text(out.read_text()).certificates == [cert]  # type: ignore[attr-defined]
    assert not list(tmp_path.glob(".backup.yaml.*"))  # no temporary file left behind

    proc = _gatewayctl(db, "export", "-f", str(tmp_path / "missing" / "x.yaml"))
    assert proc.returncode == 2 and proc.stderr.startswith("error: --file: cannot write")


def test_generate_key_file_is_0600(tmp_path: Path, db: Path) -> None:
    path = tmp_path / "keys"
    old = os.umask(0o000)
    try:
        for _ in range(2):
            assert _gatewayctl(db, "secrets", "generate-key", "-f", str(path)).returncode == 0
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o600
    keys = [line for line in path.read_text().splitlines() if line]
    assert len(keys) == 2 and all(len(base64.urlsafe_b64decode(k)) == 32 for k in keys)
    printed = _gatewayctl(db, "secrets", "generate-key").stdout.strip()
    assert len(base64.urlsafe_b64decode(printed)) == 32


def test_migration_downgrade_restores_the_clear_rows(db: Path) -> None:
    from alembic import command

    from controlplane.store.repository import alembic_config

    key, cert = new_api_key("acme"), _certificate()
    _clear_database(db, [Consumer(name="acme"), key, cert])
    store = Store(str(db), create=True)
    with store._writer.begin() as conn:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        cfg.attributes["secret_keys"] = store.secrets
        command.downgrade(cfg, PREVIOUS_SCHEMA)
    with sqlite3.connect(db) as conn:
        specs = dict(conn.execute("SELECT name, spec FROM resources"))
    assert json.loads(specs[key.name]) == key.spec()
    assert json.loads(specs["api"]) == cert.spec()

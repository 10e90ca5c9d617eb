"""``consumer key``: revoked keys stay listed as revoked, with when, and their secret is gone."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from controlplane.policy import Gateway
from controlplane.store import Store
from controlplane.translate.auth import api_key_filter
from tests.e2e.harness import Cli


def test_revoked_key_is_listed_as_revoked_with_when(tmp_path: Path) -> None:
    cli = Cli(db=str(tmp_path / "gateway.db"))
    cli.run("consumer", "add", "acme")
    revoked = cli.run("consumer", "key", "add", "acme").stdout.strip()
    kept = cli.run("consumer", "key", "add", "acme").stdout.strip()
    listing = {k["prefix"]: k for k in cli.json("consumer", "key", "list")}
    [revoked_id] = [k["id"] for p, k in listing.items() if revoked.startswith(p[:-3])]

    before = datetime.now(UTC).replace(microsecond=0)
    cli.run("consumer", "key", "revoke", revoked_id)

    rows = {k["id"]: k for k in cli.json("consumer", "key", "list")}
    assert len(rows) == 2
    row = rows[revoked_id]
    assert row["revoked"] is True and row["prefix"] == revoked[:8] + "..."
    assert before <= datetime.fromisoformat(row["revoked_at"]) <= datetime.now(UTC)
    [other] = [r for i, r in rows.items() if i != revoked_id]
    assert other["revoked"] is False and other["revoked_at"] is None
    table = cli.run("consumer", "key", "list").stdout
    assert "REVOKED" in table and row["revoked_at"].replace("+00:00", "Z") in table

    # revoking twice says when it happened, exit 4, nothing written
    again = cli.run("consumer", "key", "revoke", revoked_id, check=False)
    assert again.returncode == 4 and "already revoked at" in again.stderr

    # the secret is erased from the database; proxies get only the kept key
    with sqlite3.connect(cli.db) as conn:
        [(secret, spec)] = conn.execute(
            "SELECT secret, spec FROM resources WHERE name = ?", (revoked_id,)
        ).fetchall()
    assert secret is None and revoked not in spec and "revoked_at" in spec
    store = Store(cli.db)
    try:
        stored = {k.name: k for k in store.list_objects("api_key")}  # type: ignore[attr-defined]
    finally:
        store.close()
    view = SimpleNamespace(objects={"api_key": stored}, gateway=Gateway(name="web", port=8080))
    served = api_key_filter(cast(Any, view))
    assert [c.key for c in served.credentials] == [kept]

    # a revoked key does not keep its consumer alive
    cli.run("consumer", "key", "revoke", other["id"])
    cli.run("consumer", "delete", "acme")
    assert {k["id"] for k in cli.json("consumer", "key", "list")} == set(rows)


def test_key_source_fields_are_checked(tmp_path: Path) -> None:
    cli = Cli(db=str(tmp_path / "gateway.db"))
    for option, value, why in [
        ("--api-key-header", "authorization", "'authorization' is reserved"),
        ("--api-key-header", "x-gateway-key", "'x-gateway-key' is reserved"),
        ("--api-key-header", "bad header", "not a valid HTTP header name"),
        ("--api-key-query", "a=b", "not a query parameter name"),
    ]:
        proc = cli.run("gateway", "add", "g", "--port", "8080", option, value, check=False)
        assert proc.returncode == 2, proc.stderr
        [line] = proc.stderr.strip().splitlines()
        field = option.removeprefix("--").replace("-", "_")
        assert line.startswith(f"error: gateway 'g': {field}: ") and why in line, line
    assert cli.json("gateway", "list") == []
    cli.run("gateway", "add", "g", "--port", "8080", "--api-key-header", "X-Token")
    [gateway] = cli.json("gateway", "list")
    assert gateway["api_key_header"] == "x-token" and "api_key_query" not in gateway

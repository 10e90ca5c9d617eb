"""``gatewayctl oidc-provider`` and ``--auth-oidc``: the client secret is taken from a file,
stored encrypted, never listed; bad input is one line naming the field, nothing written."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests.e2e.harness import Cli
from tests.test_cli import GOOD, _state

SECRET = "correct-horse-battery-staple"


@pytest.fixture
def loaded(tmp_path: Path) -> Cli:
    cli = Cli(db=str(tmp_path / "gateway.db"))
    cli.run("apply", "-f", "-", input=GOOD)
    (tmp_path / "secret").write_text(SECRET + "\n")
    cli.run(
        "oidc-provider", "add", "corp",
        "--issuer", "https://login.example.com",
        "--authorization-endpoint", "https://login.example.com/authorize",
        "--token-endpoint", "https://login.example.com/token",
        "--client-id", "gateway",
        "--client-secret-file", str(tmp_path / "secret"),
    )  # fmt: skip
    return cli


def test_add_list_get_and_protect_a_route(loaded: Cli) -> None:
    listed = json.loads(loaded.run("-o", "json", "oidc-provider", "list").stdout)
    assert [p["name"] for p in listed] == ["corp"]
    shown = loaded.run("-o", "json", "oidc-provider", "get", "corp").stdout
    assert SECRET not in shown and SECRET not in loaded.run("oidc-provider", "list").stdout
    # export carries it, as it carries certificates' private keys: apply takes it back
    assert f"client_secret: {SECRET}" in loaded.run("export").stdout
    loaded.run("route", "update", "users-api", "--auth-oidc", "corp")
    route = json.loads(loaded.run("-o", "json", "route", "get", "users-api").stdout)
    assert route["auth"] == {"oidc": "corp"}
    # stored encrypted: neither the file's bytes nor its SQL dump (history included) hold
    # the secret in clear, and the row names the key that encrypts it
    assert SECRET.encode() not in Path(loaded.db).read_bytes()
    with sqlite3.connect(loaded.db) as db:
        assert SECRET not in "\n".join(db.iterdump())
        [(key_id,)] = db.execute("SELECT secret_key_id FROM resources WHERE kind = 'oidc_provider'")
    assert key_id is not None
    # the rendered configuration names the SDS secret, and the secret is served only over SDS
    rendered = loaded.run("render", "--gateway", "public").stdout
    assert "oidc:corp:client-secret" in rendered and SECRET not in rendered  # redacted
    shown = loaded.run("render", "--gateway", "public", "--show-secrets").stdout
    assert SECRET in shown
    loaded.run("route", "update", "users-api", "--auth-public")
    assert "gateway.oidc.corp" not in loaded.run("render", "--gateway", "public").stdout


BAD = {
    "http issuer": (["oidc-provider", "update", "corp", "--issuer", "http://login.example.com"],
                    "issuer: Value error" , "must be https"),
    "no openid scope": (["oidc-provider", "update", "corp", "--scope", "email"],
                        "scopes", "'openid' scope"),
    "same paths": (["oidc-provider", "update", "corp", "--callback-path", "/oauth2/logout"],
                   "oidc_provider 'corp'", "must differ"),
    "unknown provider": (["route", "update", "users-api", "--auth-oidc", "nope"],
                         "nope", "does not exist"),
    "oidc with jwt": (["route", "update", "users-api", "--auth-oidc", "corp", "--auth-api-key"],
                      "auth", "stands alone"),
    "missing secret file": (["oidc-provider", "update", "corp", "--client-secret-file",
                             "/nonexistent/secret"], "--client-secret-file", "cannot read"),
    "bad path": (["oidc-provider", "update", "corp", "--logout-path", "logout"],
                 "logout_path", "not a plain absolute path"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_oidc_input_changes_nothing(loaded: Cli, case: str) -> None:
    args, where, why = BAD[case]
    before = _state(loaded)
    proc = loaded.run(*args, check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and why in lines[0], proc.stderr
    assert where.split(":")[0] in lines[0], proc.stderr
    assert _state(loaded) == before

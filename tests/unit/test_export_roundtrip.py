"""``export`` round-trips: on a database holding every kind (every optional field set in
some object and unset in another), ``diff`` against its own export is empty, and export ->
apply to an empty database -> export is byte-identical; with ``--secrets`` the API keys
travel too. Driven through the CLI's own commands (in process, one store per database)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from controlplane.cli.main import register_all
from controlplane.errors import GatewayError
from controlplane.policy import KINDS, PLURALS, Bundle
from controlplane.store.secrets import ENV_KEY, ENV_KEY_FILE

TESTDATA = Path(__file__).parent.parent / "translate" / "testdata" / "in"
CORPUS = sorted(TESTDATA.glob("*.yaml"))


def _described_protos() -> str:
    """grpc.yaml with a description on each proto (no golden input sets one)."""
    data = yaml.safe_load((TESTDATA / "grpc.yaml").read_text())
    for proto in data["protos"]:
        proto["description"] = f"the {proto['name']} services"
    return yaml.safe_dump(data)


#: fields no golden input sets, set here (and left unset in minimal objects below)
EXTRAS = """\
jwt_providers:
  - name: everything
    issuer: https://everything.example.com
    jwks_uri: https://everything.example.com/jwks
    jwks_cache_duration: 10m
    jwks_fetch_timeout: 2s
    allow_missing_exp: true
    clock_skew: 30s
    consumer_claim: client_id
    cookies: [session]
    forward_token: true
    headers: [{name: x-token, prefix: "Token "}]
    query_params: [access_token]
    audiences: [api]
    claims_to_headers: {tenant: x-tenant}
  - name: minimal
    issuer: https://minimal.example.com
    jwks_uri: https://minimal.example.com/jwks
plans:
  - name: gold
    description: the gold plan
    limits: [{requests: 100, per: minute}, {requests: 100000, per: month}]
    time_zone: Europe/Paris
  - name: bare
    limits: [{requests: 1, per: second}]
consumers:
  - {name: acme, plan: gold, groups: [a, b]}
  - {name: solo}
  - {name: weekly, limits: [{requests: 5000, per: week}], time_zone: America/New_York}
gateways:
  - name: strict
    port: 9080
    rate_limit: {key: client_ip, limits: [{requests: 10, per: day}], time_zone: Asia/Tokyo}
    escaped_slashes: reject
    path_semicolons: allow
    underscore_headers: drop
  - {name: plain, port: 9081}
clusters:
  - {name: c1, endpoints: ["10.0.0.1:80"]}
routes:
  - {name: r1, gateway: plain, match: {path_prefix: /}, cluster: c1}
"""


@pytest.fixture(autouse=True)
def _no_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_KEY, raising=False)
    monkeypatch.delenv(ENV_KEY_FILE, raising=False)


def _run(db: Path, *args: str, code: int = 0) -> str:
    result = CliRunner().invoke(register_all(), ["--db", str(db), *args])
    exit_code = result.exit_code
    if isinstance(result.exception, GatewayError):  # as gatewayctl's run() maps it
        exit_code = result.exception.exit_code
    elif result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert exit_code == code, (args, result.output, result.exception)
    return result.stdout


def _init(db: Path) -> None:
    _run(db, "init")


def _round_trip(tmp_path: Path, text: str, fmt: str = "yaml") -> None:
    src = tmp_path / "source.db"
    _init(src)
    policy = tmp_path / "policy.yaml"
    policy.write_text(text)
    _run(src, "apply", "-f", str(policy))
    exported = _run(src, "-o", fmt, "export")
    out = tmp_path / f"export.{fmt}"
    out.write_text(exported)
    # the unchanged database against its own export: no difference, exit 0
    assert _run(src, "diff", "-f", str(out)) == ""
    assert _run(src, "diff", "--prune", "-f", str(out)) == ""
    # export -> apply to an empty database -> export: the same bytes
    dst = tmp_path / "copy.db"
    _init(dst)
    _run(dst, "apply", "-f", str(out))
    assert _run(dst, "-o", fmt, "export") == exported
    # and applying the export back changes nothing
    _run(src, "apply", "-f", str(out))
    assert _run(src, "-o", fmt, "export") == exported


@pytest.mark.parametrize("case", CORPUS, ids=[p.stem for p in CORPUS])
def test_export_round_trips_every_translation_input(tmp_path: Path, case: Path) -> None:
    _round_trip(tmp_path, case.read_text())


def test_export_round_trips_fields_no_input_sets(tmp_path: Path) -> None:
    _round_trip(tmp_path, EXTRAS)


def test_export_round_trips_described_protos(tmp_path: Path) -> None:
    _round_trip(tmp_path, _described_protos())


def test_json_export_round_trips(tmp_path: Path) -> None:
    _round_trip(tmp_path, EXTRAS, "json")


def test_the_corpus_sets_every_optional_field_of_every_kind() -> None:
    """What the round trip above covers: each optional top-level field of each declarative
    kind is set in some object of the corpus (and every kind has objects where it is not)."""
    seen: dict[str, set[str]] = {k: set() for k in PLURALS}
    for text in [p.read_text() for p in CORPUS] + [EXTRAS, _described_protos()]:
        for obj in Bundle.from_text(text).objects():
            seen[obj.kind] |= set(obj.model_fields_set)
    for kind in PLURALS:
        optional = {n for n, f in KINDS[kind].model_fields.items() if not f.is_required()}
        assert optional <= seen[kind], (kind, sorted(optional - seen[kind]))


def test_unset_jwks_cache_duration_is_not_exported(tmp_path: Path) -> None:
    """Issue 13 item 7: an unset default that validation normalises ('5m' -> '300s') came
    back in the export as set, so diff against the export was not empty."""
    db = tmp_path / "g.db"
    _init(db)
    _run(
        db,
        "jwt-provider",
        "add",
        "auth0",
        "--issuer",
        "https://x.example.com/",
        "--jwks-uri",
        "https://x.example.com/jwks",
    )
    exported = _run(db, "export")
    assert "jwks_cache_duration" not in exported
    out = tmp_path / "e.yaml"
    out.write_text(exported)
    assert _run(db, "diff", "-f", str(out)) == ""


def _keys(db: Path) -> list[dict[str, Any]]:
    return sorted(
        yaml.safe_load(_run(db, "-o", "json", "consumer", "key", "list")) or [],
        key=lambda k: k["id"],
    )


def test_export_secrets_restores_api_keys(tmp_path: Path) -> None:
    src = tmp_path / "source.db"
    _init(src)
    policy = tmp_path / "policy.yaml"
    policy.write_text(EXTRAS)
    _run(src, "apply", "-f", str(policy))
    key = _run(src, "consumer", "key", "add", "acme").strip()
    _run(src, "consumer", "key", "add", "solo", "--expires", "30d")
    # without --secrets: keys left out, and the file says so
    plain = _run(src, "export")
    assert key not in plain and plain.startswith("# API keys are not in this file")
    # --secrets only into a file, created mode 0600
    _run(src, "export", "--secrets", code=2)
    full = tmp_path / "full.yaml"
    _run(src, "export", "--secrets", "-f", str(full))
    assert stat.S_IMODE(os.stat(full).st_mode) == 0o600
    text = full.read_text()
    assert key in text and "api_keys:" in text
    assert _run(src, "diff", "-f", str(full)) == ""
    # apply takes the api_keys section only with --secrets
    dst = tmp_path / "copy.db"
    _init(dst)
    _run(dst, "apply", "-f", str(full), code=2)
    assert _keys(dst) == [] and _run(dst, "export") == EXPORT_EMPTY
    _run(dst, "apply", "--secrets", "-f", str(full))
    assert _keys(dst) == _keys(src)
    again = tmp_path / "again.yaml"
    _run(dst, "export", "--secrets", "-f", str(again))
    assert again.read_text() == text


EXPORT_EMPTY = (
    "# API keys are not in this file: `gatewayctl export --secrets -f FILE` includes them\n{}\n"
)

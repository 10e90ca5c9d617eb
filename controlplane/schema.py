"""The JSON Schema of the declarative policy file, for editors and CI linters.

The schema is derived from the policy models, so it cannot drift from what ``apply``
accepts; ``schemas/gateway.schema.json`` is a generated copy kept in the repository
(a test fails when it is stale). Regenerate it with ``python -m controlplane.schema``.

The models remain the authority: a few checks (name syntax, regex syntax, references
between objects) exist only there. The schema never rejects a file the models accept.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

from .policy import Bundle

__all__ = ["DRAFT", "SCHEMA_PATH", "bundle_schema", "main", "render"]

DRAFT = "https://json-schema.org/draft/2020-12/schema"
#: where ``main`` writes the schema: run it from the repository root
SCHEMA_PATH = Path("schemas") / "gateway.schema.json"


def _route_gateway_shorthand(route: dict[str, Any]) -> None:
    """``gateway: name`` is accepted as a shorthand of ``gateways: [name]`` (never both)."""
    gateways = route["properties"]["gateways"]
    route["properties"]["gateway"] = {
        **copy.deepcopy(gateways["items"]),
        "description": "shorthand for gateways: [name]",
        "title": "Gateway",
    }
    route["required"] = [r for r in route["required"] if r != "gateways"]
    route["oneOf"] = [{"required": ["gateways"]}, {"required": ["gateway"]}]


def bundle_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of the file read by ``apply`` and written by ``export``."""
    schema = Bundle.model_json_schema(mode="validation")
    _route_gateway_shorthand(schema["$defs"]["Route"])
    # An empty key (``routes:`` with every route commented out) means an empty list.
    for prop in schema["properties"].values():
        items = {k: prop.pop(k) for k in ("items", "type")}
        prop["anyOf"] = [items, {"type": "null"}]
    schema.pop("$id", None)
    schema["$schema"] = DRAFT
    schema["title"] = "Gateway policy"
    schema["description"] = (
        "Declarative gateway policy: gateways (listeners), clusters (backends) and routes."
    )
    return schema


def render(schema: dict[str, Any] | None = None) -> str:
    """The exact text of ``schemas/gateway.schema.json``."""
    return (
        json.dumps(bundle_schema() if schema is None else schema, sort_keys=True, indent=2) + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    """Write the schema to ``schemas/gateway.schema.json`` (or the path given)."""
    args = sys.argv[1:] if argv is None else argv
    target = Path(args[0]) if args else SCHEMA_PATH
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render(), encoding="utf-8")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

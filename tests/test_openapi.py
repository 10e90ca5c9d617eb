"""The admin API's OpenAPI document: committed, current, and built from the policy models."""

from __future__ import annotations

import json

from controlplane.api.openapi import PATH, document, render


def test_committed_openapi_is_current() -> None:
    committed = PATH.read_text(encoding="utf-8")
    assert committed == render(), (
        "schemas/openapi.json is stale: run `python -m controlplane.api.openapi` and commit it"
    )


def test_document_describes_policy_fields_auth_and_errors() -> None:
    doc = document()
    schemas = doc["components"]["schemas"]
    # request bodies are the policy models themselves: fields, and no extras
    create = doc["paths"]["/v1/routes"]["post"]["requestBody"]["content"]["application/json"]
    ref = create["schema"]["$ref"].rsplit("/", 1)[1]
    assert {"name", "gateways", "cluster"} <= set(schemas[ref]["properties"])
    assert schemas[ref]["additionalProperties"] is False
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if path.startswith("/v1/"):
                assert op["security"] == [{"bearer": []}], (method, path)
                assert "422" not in op["responses"], (method, path)  # 400 here
            for code, response in op["responses"].items():
                if code[0] in "45":
                    assert response["content"]["application/json"]["schema"] == {
                        "$ref": "#/components/schemas/Error"
                    }
    assert json.loads(json.dumps(doc)) == doc

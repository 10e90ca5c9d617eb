"""A route rule's 403 through a real Envoy: a JSON body naming the unmet requirement (scope,
claim, consumer/group), nothing from the token, and the rules themselves unchanged."""

from __future__ import annotations

import pytest

from controlplane.envoy_warnings import api_warnings, unknown_api_warnings

from .harness import request
from .test_auth import Signer, _bearer, secured, signer

pytestmark = pytest.mark.e2e

__all__ = ["secured", "signer"]  # fixtures shared with test_auth.py


def _forbidden(port: int, path: str, headers: dict[str, str]) -> tuple[str, str]:
    """A 403's requirement and raw body text; fails on any other reply."""
    status, hdrs, body = request(port, path, headers=headers)
    assert status == 403, (path, status, body)
    assert hdrs["content-type"].startswith("application/json"), hdrs
    assert isinstance(body, dict), body
    assert set(body) == {"error", "message", "requirement"}, body
    assert body["error"] == "forbidden" and body["message"], body
    denied = body["requirement"]
    assert denied.startswith("rbac_access_denied_matched_policy[") and denied.endswith("]")
    return denied.removeprefix("rbac_access_denied_matched_policy[")[:-1], str(body)


def _message(port: int, path: str, headers: dict[str, str]) -> str:
    return str(request(port, path, headers=headers)[2]["message"])


def test_route_rule_403_names_the_unmet_requirement(  # type: ignore[no-untyped-def]
    secured, cli, gateway_port, signer: Signer
):
    port = gateway_port
    cli.run(
        "route", "add", "tenants", "--gateway", "public", "--path-prefix", "/tenants",
        "--cluster", "alpha", "--auth-jwt", "corp", "--auth-claim", "tenant=t1,t2",
        "--auth-scope", "read:tenants",
    )  # fmt: skip
    acme_key = cli.run("consumer", "key", "add", "acme").stdout.strip()
    globex_key = cli.run("consumer", "key", "add", "globex", "--wait").stdout.strip()

    # a missing scope: named (the scope is the route's own configuration)
    token = signer.token(scope="write:users secret-scope-value")
    requirement, text = _forbidden(port, "/scoped", _bearer(token))
    assert requirement == "scope:read:users"
    assert _message(port, "/scoped", _bearer(token)).startswith("missing scope")
    assert "write:users" not in text and "secret-scope-value" not in text and "acme" not in text

    # a claim with a value the route does not accept: the claim's name, no values
    token = signer.token(scope="read:tenants", tenant="t-secret")
    requirement, text = _forbidden(port, "/tenants", _bearer(token))
    assert requirement == "claim:tenant"
    assert _message(port, "/tenants", _bearer(token)).startswith("claim not accepted")
    assert "t-secret" not in text and "t1" not in text and "t2" not in text
    requirement, _ = _forbidden(port, "/tenants", _bearer(signer.token(tenant="t1")))
    assert requirement == "scope:read:tenants"
    assert (
        request(port, "/tenants", headers=_bearer(signer.token(scope="read:tenants", tenant="t2")))[
            0
        ]
        == 200
    )

    # a consumer outside the route's groups: no list of who is allowed
    requirement, text = _forbidden(port, "/customers", {"x-api-key": globex_key})
    assert requirement == "consumer"
    assert _message(port, "/customers", {"x-api-key": globex_key}).startswith("consumer not")
    assert "acme" not in text and "customers" not in text and globex_key not in text
    assert request(port, "/customers", headers={"x-api-key": acme_key})[0] == 200

    # other 403s and the 401s are not rewritten into this body
    status, _, body = request(port, "/jwt", headers=_bearer(signer.token(aud="other")))
    assert status == 403 and not isinstance(body, dict), body
    status, headers, _ = request(port, "/scoped", headers={})
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")

    # the running Envoy (bootstrap + everything served over xDS) warned about no deprecated
    # or work-in-progress API but the known ones
    log = secured.log_path.read_text(errors="replace")
    assert api_warnings(log) and unknown_api_warnings(log) == set()

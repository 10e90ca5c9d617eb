"""Traffic policy without Envoy: header placeholders, their Envoy form, policy checks."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from controlplane.policy import Route
from controlplane.policy.traffic import BodyTransform, header_template
from controlplane.translate.lua_json import body_script
from controlplane.translate.traffic import envoy_header_value


@pytest.mark.parametrize(
    ("value", "envoy"),
    [
        ("plain", "plain"),
        ("50%% off", "50%% off"),  # a literal % stays escaped for Envoy
        ("%consumer%", "%REQ(x-consumer-id)%"),
        (
            "t=%claim.tenant%",
            "t=%DYNAMIC_METADATA(envoy.filters.http.jwt_authn:jwt_payload:tenant)%",
        ),
        ("%claim.org.id%", "%DYNAMIC_METADATA(envoy.filters.http.jwt_authn:jwt_payload:org:id)%"),
        ("%header.X-Ref%/%consumer%", "%REQ(x-ref)%/%REQ(x-consumer-id)%"),
    ],
)
def test_placeholders_become_envoy_formatters(value: str, envoy: str) -> None:
    assert envoy_header_value(value) == envoy


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("50% off", "write %% for a literal %"),
        ("%tenant%", "unknown placeholder %tenant%"),
        ("%claim.a:b%", "unknown placeholder"),
        ("%header.bad header%", "a '%' must start"),
        ("%REQ(x)%", "unknown placeholder %REQ(x)%"),
    ],
)
def test_bad_placeholders_are_refused(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        header_template(value)


def _route(**fields: object) -> Route:
    return Route.model_validate({"name": "r", "gateway": "g", "cluster": "c", **fields})


def test_route_checks() -> None:
    with pytest.raises(ValidationError, match="cannot be combined with host_rewrite"):
        _route(cache={"ttl": "1m"}, host_rewrite="x.example")
    with pytest.raises(ValidationError, match="hash_on"):
        Route.model_validate(
            {
                "name": "r",
                "gateway": "g",
                "direct_response": {"status": 200},
                "hash_on": [{"source_ip": True}],
            }
        )
    with pytest.raises(ValidationError, match="set exactly one of header, cookie"):
        _route(hash_on=[{"header": "x-a", "source_ip": True}])
    with pytest.raises(ValidationError, match="set delay, abort or both"):
        _route(fault={})
    assert _route(cache={}).cache is not None


def test_body_script_drops_fields_renamed_onto() -> None:
    spec = BodyTransform(rename={"id": "user_id"}, remove=["x"])
    script = body_script(None, spec)
    # an existing user_id would otherwise appear twice after the rename
    assert '["user_id"] = true' in script and '["x"] = true' in script
    assert "envoy_on_response" in script and "envoy_on_request" not in script
    with pytest.raises(ValidationError, match="both renamed and removed"):
        BodyTransform(rename={"a": "b"}, remove=["a"])

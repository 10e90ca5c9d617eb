"""Input the gateway must refuse: reserved header targets, duplicate keys, deep nesting,
control characters in hosts and paths, JWKS keys Envoy cannot load, tokens without exp."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from pydantic import ValidationError

from controlplane.errors import PolicyInvalid
from controlplane.policy import Bundle, JwtProvider
from controlplane.policy.cluster import HealthCheck
from controlplane.policy.cors import CorsPolicy
from controlplane.policy.headers import (
    API_KEY_HEADER,
    CONSUMER_HEADER,
    request_header_target,
    reserved_reason,
)
from controlplane.policy.jwks import check_jwks
from controlplane.policy.loader import MAX_DEPTH, load_text
from controlplane.policy.route import Route

BASE = """
gateways: [{name: web, port: 8080}]
clusters: [{name: app, endpoints: ["127.0.0.1:9000"]}]
jwt_providers: [{name: corp, issuer: "https://i.test", jwks_uri: "https://i.test/k"}]
"""


def _refused(text: str) -> str:
    with pytest.raises(PolicyInvalid) as info:
        Bundle.from_text(text, "policy.yaml")
    message = str(info.value)
    assert "\n" not in message
    return message


# -- reserved headers -----------------------------------------------------------------------

RESERVED = [
    "x-consumer-id",
    "X-Consumer-Id",
    "x-api-key",
    "authorization",
    "host",
    ":path",
    ":authority",
    "connection",
    "transfer-encoding",
    "te",
    "upgrade",
    "x-client",
    "x-forwarded-for",
    "x-forwarded-proto",
    "forwarded",
    "x-request-id",
    "x-envoy-original-path",
    "x-envoy-upstream-rq-timeout-ms",
    "x-gateway-route-scope",
    "x-gateway-cache-key",
    "x-gateway-part",
    "x_consumer_id",
    "X_API-KEY",
    "x_envoy_original_path",
]


@pytest.mark.parametrize("header", RESERVED)
def test_a_claim_cannot_write_a_reserved_header(header: str) -> None:
    message = _refused(
        BASE.replace("jwks_uri:", f"claims_to_headers: {{who: '{header}'}}, jwks_uri:")
    )
    assert "claims_to_headers" in message and "reserved" in message


@pytest.mark.parametrize("header", RESERVED)
@pytest.mark.parametrize("op", ["set", "add"])
def test_a_route_cannot_set_a_reserved_request_header(header: str, op: str) -> None:
    message = _refused(
        BASE + f"routes: [{{name: r, gateway: web, cluster: app, "
        f"request_headers: {{{op}: {{'{header}': v}}}}}}]"
    )
    assert f"request_headers.{op}" in message and "reserved" in message


def test_headers_users_may_write() -> None:
    for name in ("x-tenant", "x-gateway", "x-envoyish", "content-type", "x-consumer"):
        assert request_header_target(name) == name
    route = Route.model_validate(
        {
            "name": "r",
            "gateway": "web",
            "cluster": "app",
            # removing credentials before the backend sees them happens after auth: allowed
            "request_headers": {"remove": ["authorization", "x-forwarded-for"]},
            "response_headers": {"set": {"x-consumer-id": "%consumer%"}},
        }
    )
    assert route.request_headers is not None
    assert route.request_headers.remove == ["authorization", "x-forwarded-for"]
    with pytest.raises(ValidationError):
        Route.model_validate(
            {
                "name": "r",
                "gateway": "web",
                "cluster": "app",
                "request_headers": {"remove": [":path"]},
            }
        )


def test_the_translator_uses_the_reserved_names() -> None:
    """Every header the translator or the aggregation service sets is in the one list."""
    from controlplane.aggregator.spec import PART_HEADER, SPEC_HEADER
    from controlplane.translate import auth, ratelimit, shard, traffic

    assert auth.CONSUMER_HEADER == ratelimit.CONSUMER_HEADER == CONSUMER_HEADER
    assert auth.API_KEY_HEADER == API_KEY_HEADER
    for name in (
        CONSUMER_HEADER,
        API_KEY_HEADER,
        shard.SCOPE_HEADER,
        traffic.CACHE_KEY_HEADER,
        SPEC_HEADER,
        PART_HEADER,
    ):
        assert reserved_reason(name), name


def test_two_claims_cannot_share_a_header() -> None:
    message = _refused(BASE.replace("jwks_uri:", "claims_to_headers: {a: x-t, b: X-T}, jwks_uri:"))
    assert "two claims" in message


# -- duplicate keys, nesting, encodings ------------------------------------------------------


def test_a_second_auth_key_is_refused_not_taken() -> None:
    text = BASE + (
        "routes:\n"
        "- name: private\n"
        "  gateway: web\n"
        "  cluster: app\n"
        "  auth: {jwt: [corp]}\n"
        "  auth: {}\n"
    )
    message = _refused(text)
    assert message == (
        "policy.yaml: duplicate key 'auth' at line 10 (first at line 9); "
        "a key may appear once in a mapping"
    )


def test_duplicate_keys_in_json_name_the_line() -> None:
    text = '{"gateways": [{"name": "web",\n "port": 8080,\n "port": 8081}]}'
    assert "duplicate key 'port' at line 3" in _refused(text)


def test_merge_keys_may_override() -> None:
    text = (
        "x-defaults: &d {port: 8080, address: 127.0.0.1}\n"
        "gateways: [{<<: *d, name: web, port: 8081}]\n"
    )
    data = load_text(text)
    assert data["gateways"][0] == {"port": 8081, "address": "127.0.0.1", "name": "web"}


@pytest.mark.parametrize(
    "text",
    [
        "gateways: " + "[" * 100_000 + "]" * 100_000,
        "gateways: " + "{a: " * 5000 + "1" + "}" * 5000,
        '{"gateways": ' + "[" * 100_000 + "]" * 100_000 + "}",
        '{"gateways": ' + "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1) + "}",
    ],
)
def test_deep_nesting_is_one_line(text: str) -> None:
    assert "nested deeper than" in _refused(text)


def test_alias_bombs_and_cycles_are_refused() -> None:
    bomb = "a: &a [1,1,1,1,1,1,1,1,1,1]\n"
    prev = "a"
    for name in "bcdefgh":
        bomb += f"{name}: &{name} [{', '.join([f'*{prev}'] * 10)}]\n"
        prev = name
    assert "expands to more than" in _refused(bomb)
    assert "refers to itself" in _refused("gateways: &g [*g]\n")


def test_non_utf8_and_control_characters(tmp_path: Path) -> None:
    from controlplane.policy.loader import decode

    with pytest.raises(PolicyInvalid, match="not UTF-8"):
        decode(b"gateways: []\n\xff", "f.yaml")
    assert "is not allowed in YAML" in _refused("gateways: [{name: \x07}]")
    assert "is not a JSON number" in _refused('{"gateways": [{"name": "w", "port": NaN}]}')


def test_wrong_types_at_the_top_are_refused() -> None:
    assert _refused("gateways: {}") == "gateways: must be a list"


# -- hosts, paths and header values ----------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        'redirect: {host: "evil.test\\r\\nset-cookie: a=b"}',
        'redirect: {host: "a b"}',
        'redirect: {host: "a.test/x"}',
        'redirect: {path: "/a\\r\\nb"}',
        'redirect: {prefix_rewrite: "/a\\nb"}',
        'cluster: app, host_rewrite: "a\\r\\nb"',
        'cluster: app, prefix_rewrite: "/a\\u0000"',
        'cluster: app, match: {path_prefix: "/a\\u0085"}',
        'cluster: app, request_headers: {set: {x-a: "v\\u0001"}}',
        'cluster: app, request_headers: {set: {x-a: "v\\u007f"}}',
    ],
)
def test_control_characters_never_reach_a_header(extra: str) -> None:
    message = _refused(BASE + f"routes: [{{name: r, gateway: web, {extra}}}]")
    assert "routes[0] 'r'" in message


def test_redirect_hosts_that_are_hosts_pass() -> None:
    for host, expected in (
        ("Example.COM", "example.com"),
        ("10.0.0.1", "10.0.0.1"),
        ("::1", "[::1]"),
    ):
        route = Route.model_validate({"name": "r", "gateway": "web", "redirect": {"host": host}})
        assert route.redirect is not None and route.redirect.host == expected


def test_health_check_host_and_cors_names() -> None:
    assert HealthCheck(host="users.internal:8080").host == "users.internal:8080"
    for bad in ("a\r\nb", "a b", "*.x.test"):
        with pytest.raises(ValidationError):
            HealthCheck(host=bad)
    with pytest.raises(ValidationError):
        CorsPolicy(allow_origins=["https://a.test"], allow_headers=["x-a\r\nx-b: 1"])
    with pytest.raises(ValidationError):
        CorsPolicy(allow_origins=["https://a.test"], allow_methods=["GET\r\n"])
    assert CorsPolicy(allow_origins=["*"], allow_headers=["*", "X-A"]).allow_headers == ["*", "x-a"]


def test_claim_rules_need_values() -> None:
    message = _refused(
        BASE + "routes: [{name: r, gateway: web, cluster: app, "
        "auth: {jwt: [corp], claims: {tenant: []}}}]"
    )
    assert "list at least one accepted value" in message


# -- JWKS ---------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int(value: int) -> str:
    return _b64(value.to_bytes((value.bit_length() + 7) // 8, "big"))


_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_numbers()
_EC = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()
_ED = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes_raw()
GOOD_RSA = {"kty": "RSA", "n": _int(_RSA.n), "e": "AQAB"}
GOOD_EC = {
    "kty": "EC",
    "crv": "P-256",
    "x": _b64(_EC.x.to_bytes(32, "big")),
    "y": _b64(_EC.y.to_bytes(32, "big")),
}

#: name -> (key, accepted by Envoy); each verdict was measured with ``envoy --mode validate``
#: and is re-measured by test_envoy_agrees when the binary is present
KEYS: dict[str, tuple[dict[str, Any], bool]] = {
    "rsa": (GOOD_RSA, True),
    "rsa with alg": (GOOD_RSA | {"alg": "PS384"}, True),
    "rsa padded base64": (GOOD_RSA | {"n": _int(_RSA.n) + "=="}, True),
    "rsa e=3": (GOOD_RSA | {"e": "Aw"}, True),
    "ec": (GOOD_EC, True),
    "ec ES256": (GOOD_EC | {"alg": "ES256"}, True),
    "oct": ({"kty": "oct", "k": "c2VjcmV0"}, True),
    "ed25519": ({"kty": "OKP", "crv": "Ed25519", "x": _b64(_ED)}, True),
    "even modulus": (GOOD_RSA | {"n": _int(_RSA.n + 1)}, False),
    "modulus not base64url": (GOOD_RSA | {"n": "!!notbase64"}, False),
    "standard base64": (
        GOOD_RSA | {"n": base64.b64encode(_RSA.n.to_bytes(256, "big")).decode()},
        False,
    ),
    "511-bit modulus": (GOOD_RSA | {"n": _int((1 << 510) | 1 | 1 << 5)}, False),
    "exponent 5": (GOOD_RSA | {"e": "BQ"}, False),
    "exponent 1": (GOOD_RSA | {"e": "AQ"}, False),
    "rsa with ES256": (GOOD_RSA | {"alg": "ES256"}, False),
    "ec off the curve": (GOOD_EC | {"y": _b64((_EC.y + 1).to_bytes(32, "big"))}, False),
    "ec secp256k1": (GOOD_EC | {"crv": "secp256k1"}, False),
    "ec P-256 with ES384": (GOOD_EC | {"alg": "ES384"}, False),
    "oct not base64url": ({"kty": "oct", "k": "!!"}, False),
    "oct with RS256": ({"kty": "oct", "k": "c2VjcmV0", "alg": "RS256"}, False),
    "x25519": ({"kty": "OKP", "crv": "X25519", "x": _b64(_ED)}, False),
    "ed25519 short": ({"kty": "OKP", "crv": "Ed25519", "x": _b64(b"\x01" * 5)}, False),
    "no kty": ({"n": GOOD_RSA["n"], "e": "AQAB"}, False),
    "rsa without e": ({"kty": "RSA", "n": GOOD_RSA["n"]}, False),
}


def _verdict(key: dict[str, Any]) -> bool:
    try:
        check_jwks(json.dumps({"keys": [key]}))
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("case", sorted(KEYS))
def test_jwks_keys_are_checked_like_envoy(case: str) -> None:
    key, accepted = KEYS[case]
    assert _verdict(key) == accepted


def test_envoy_agrees(tmp_path: Path) -> None:
    """The verdicts above are Envoy's own (``envoy --mode validate``, run in parallel)."""
    from controlplane.envoy_launcher import EnvoyNotFoundError, find_envoy_binary

    try:
        envoy = find_envoy_binary()
    except EnvoyNotFoundError:
        pytest.skip("no Envoy binary")
    procs = {}
    for i, (case, (key, _)) in enumerate(sorted(KEYS.items())):
        path = tmp_path / f"{i}.json"
        path.write_text(json.dumps(_bootstrap(json.dumps({"keys": [key]}))))
        procs[case] = subprocess.Popen(
            [envoy, "--mode", "validate", "-c", str(path), "-l", "critical"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    verdicts = {case: proc.wait(120) == 0 for case, proc in procs.items()}
    assert verdicts == {case: accepted for case, (_, accepted) in KEYS.items()}


def _bootstrap(jwks: str) -> dict[str, Any]:
    hcm = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    jwt = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"
    router = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
    return {"static_resources": {"listeners": [{
        "name": "l",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}},
        "filter_chains": [{"filters": [{"name": "hcm", "typed_config": {
            "@type": hcm + "HttpConnectionManager",
            "stat_prefix": "x",
            "route_config": {"name": "r"},
            "http_filters": [
                {"name": "jwt", "typed_config": {"@type": jwt, "providers": {
                    "p": {"issuer": "https://i.test", "local_jwks": {"inline_string": jwks}}}}},
                {"name": "router", "typed_config": {"@type": router}},
            ],
        }}]}],
    }]}}  # fmt: skip


def test_jwks_json_traps() -> None:
    with pytest.raises(ValueError, match="duplicate member 'keys'"):
        check_jwks('{"keys": [], "keys": [' + json.dumps(GOOD_RSA) + "]}")
    with pytest.raises(ValueError, match="nested too deeply"):
        check_jwks("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="larger than"):
        check_jwks(json.dumps({"keys": [GOOD_RSA] * 1000}))


# -- exp -----------------------------------------------------------------------------------------


def test_tokens_need_exp_unless_the_provider_allows_it() -> None:
    from controlplane.translate.auth import _provider

    strict = JwtProvider(name="p", issuer="https://i.test", jwks_uri="https://i.test/k")
    assert _provider(strict).require_expiration is True
    assert "allow_missing_exp" not in strict.spec()
    lax = strict.model_copy(update={"allow_missing_exp": True})
    assert _provider(lax).require_expiration is False

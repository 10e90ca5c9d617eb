"""The lean filter chain (translate/filters.py, ADR 0045): a request meets only the filters
its route uses, and the first protected route changes no listener."""

from __future__ import annotations

import json

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from controlplane.policy import (
    AuthPolicy,
    Consumer,
    Gateway,
    JwtProvider,
    Route,
    new_api_key,
)
from controlplane.translate import LISTENER, ROUTE, GatewayView, Translator
from controlplane.translate.auth import (
    API_KEY_FILTER,
    JWT_FILTER,
    KEY_EXPIRY_FILTER,
    RBAC_FILTER,
    STRIP_FILTER,
)
from controlplane.translate.cors import CORS_FILTER

GW = Gateway(name="edge", port=8080)
# the generator point of P-256: a valid public key
_X = "axfR8uEsQkf4vOblY6RA8ncDfYEt6zOg9KE5RdiYwpY"
_Y = "T-NC4v4af5uO5-tKfA-eFivOM1drMV7Oy7ZAaDe_UfU"
JWKS = json.dumps({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k", "x": _X, "y": _Y}]})
PROVIDER = JwtProvider(name="idp", issuer="https://idp.example", jwks=JWKS)


def _route(name: str, path: str, **extra: object) -> Route:
    return Route(name=name, gateways=["edge"], match={"path_prefix": path}, cluster="a", **extra)


def _objects(*keys: object) -> dict[str, dict[str, object]]:
    return {
        "jwt_provider": {"idp": PROVIDER},
        "consumer": {"acme": Consumer(name="acme")},
        "api_key": {k.name: k for k in keys},  # type: ignore[attr-defined]
    }


def _chain(out: object) -> dict[str, bool]:
    """Filter name -> listed disabled, in chain order."""
    listener = out.message(LISTENER, "edge")  # type: ignore[attr-defined]
    hcm = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    return {f.name: f.disabled for f in hcm.http_filters}


def _routes(out: object) -> dict[str, rc.Route]:
    config = out.message(ROUTE, "edge")  # type: ignore[attr-defined]
    return {r.name: r for vh in config.virtual_hosts for r in vh.routes}


def test_a_plain_gateway_runs_no_auth_or_cors_filter() -> None:
    out = Translator().translate(GatewayView(GW, {"p": _route("p", "/p")}, {}, _objects()))
    chain = _chain(out)
    assert CORS_FILTER not in chain  # no route has a CORS policy
    for name in (STRIP_FILTER, JWT_FILTER, API_KEY_FILTER, KEY_EXPIRY_FILTER, RBAC_FILTER):
        assert chain[name] is True, name  # listed, never created for a plain route
    enabled = [name for name, disabled in chain.items() if not disabled]
    assert enabled == ["envoy.filters.http.router"]
    [vh] = out.message(ROUTE, "edge").virtual_hosts
    assert STRIP_FILTER not in vh.typed_per_filter_config  # no route uses identity


def test_filters_run_only_on_the_routes_that_need_them() -> None:
    key = new_api_key("acme")
    routes = {
        "p": _route("p", "/p"),
        "j": _route("j", "/j", auth=AuthPolicy(jwt=["idp"])),
        "k": _route("k", "/k", auth=AuthPolicy(api_key=True)),
        "r": _route("r", "/r", auth=AuthPolicy(api_key=True, consumers=["acme"])),
        "c": _route("c", "/c", cors={"allow_origins": ["https://app.example"]}),
    }
    out = Translator().translate(GatewayView(GW, routes, {}, _objects(key)))
    chain = _chain(out)
    assert chain[CORS_FILTER] is False  # a route has a policy: in the chain, enabled
    found = _routes(out)
    assert set(found["p"].typed_per_filter_config) == set()
    assert set(found["j"].typed_per_filter_config) == {JWT_FILTER}  # jwt only here
    # no key expires: the key filter hands the consumer over, no expiry script runs
    assert set(found["k"].typed_per_filter_config) == {API_KEY_FILTER}
    assert set(found["r"].typed_per_filter_config) == {API_KEY_FILTER, RBAC_FILTER}
    # routes use identity: every virtual host strips client copies of identity headers
    [vh] = out.message(ROUTE, "edge").virtual_hosts
    assert STRIP_FILTER in vh.typed_per_filter_config
    assert not rc.FilterConfig.FromString(vh.typed_per_filter_config[STRIP_FILTER].value).disabled


def test_an_expiring_key_turns_the_expiry_check_on() -> None:
    from datetime import UTC, datetime, timedelta

    key = new_api_key("acme", datetime.now(UTC) + timedelta(hours=1))
    routes = {"k": _route("k", "/k", auth=AuthPolicy(api_key=True))}
    out = Translator().translate(GatewayView(GW, routes, {}, _objects(key)))
    assert set(_routes(out)["k"].typed_per_filter_config) == {API_KEY_FILTER, KEY_EXPIRY_FILTER}


def test_the_first_protected_route_changes_no_listener() -> None:
    """Adding the first JWT, API-key or rules route switches its filters on in the
    RouteConfiguration it arrives in: the listener (and its filter chain) is the same
    message, so nothing drains and no open connection meets the route without its filter."""
    translator = Translator()
    plain = {"p": _route("p", "/p")}
    objects = _objects(new_api_key("acme"))
    before = translator.translate(GatewayView(GW, plain, {}, objects))
    listener = before.message(LISTENER, "edge")
    for name, auth in (
        ("j", AuthPolicy(jwt=["idp"])),
        ("k", AuthPolicy(api_key=True)),
        ("r", AuthPolicy(jwt=["idp"], scopes=["read"])),
    ):
        routes = {**plain, name: _route(name, "/" + name, auth=auth)}
        after = translator.translate(
            GatewayView(GW, routes, {}, objects, changed_routes=frozenset({name}))
        )
        assert after.message(LISTENER, "edge") == listener, name
        translator.translate(GatewayView(GW, plain, {}, objects, changed_routes=frozenset({name})))

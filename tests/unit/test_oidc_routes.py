"""The generated login routes of an OpenID provider (translate/oidc.py) follow the routes
that use it: added with the first, gone with the last (with the filter, the token cluster
and the secrets), rebuilt when the provider changes; two providers of one gateway may not
share a path."""

from __future__ import annotations

import pytest

from controlplane.errors import TranslationError
from controlplane.policy import Gateway, OidcProvider, Route
from controlplane.translate import CLUSTER, LISTENER, ROUTE, SECRET, GatewayView, Translator

GW = Gateway(name="edge", port=8080)


def _provider(name: str = "corp", **extra: object) -> OidcProvider:
    return OidcProvider.model_validate(
        {
            "name": name,
            "issuer": "https://login.example.com",
            "authorization_endpoint": "https://login.example.com/authorize",
            "token_endpoint": "https://login.example.com/token",
            "client_id": "gw",
            "client_secret": "s",
            **extra,
        }
    )


def _route(name: str, oidc: str | None) -> Route:
    return Route.model_validate(
        {
            "name": name,
            "gateways": ["edge"],
            "match": {"path_prefix": f"/{name}/"},
            "cluster": "app",
            "auth": {"oidc": oidc} if oidc else {},
        }
    )


def _routes(out: object) -> list[str]:
    [vh] = out.message(ROUTE, "edge").virtual_hosts  # type: ignore[attr-defined]
    return sorted({r.name for r in vh.routes})


def _filters(out: object) -> list[str]:
    listener = out.message(LISTENER, "edge")  # type: ignore[attr-defined]
    from envoy.extensions.filters.network.http_connection_manager.v3 import (
        http_connection_manager_pb2 as hcm_pb2,
    )

    hcm = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    return [f.name for f in hcm.http_filters]


def test_login_routes_follow_the_routes_that_use_the_provider() -> None:
    translator = Translator()
    objects = {"oidc_provider": {"corp": _provider()}}
    a, b = _route("a", "corp"), _route("b", "corp")
    out = translator.translate(GatewayView(GW, {"a": a, "b": b}, {}, objects))
    assert _routes(out) == [
        "a", "b", "gateway.not_found", "gateway.path_parameters",
        "oidc:corp:callback", "oidc:corp:logout",
    ]  # fmt: skip
    assert "gateway.oidc.corp" in _filters(out)
    assert "oidc:corp" in out.by_type[CLUSTER]
    assert {"oidc:corp:client-secret", "oidc:corp:cookie-key"} <= set(out.by_type[SECRET])

    # one user left: still there (an incremental change)
    b_open = _route("b", None)
    out = translator.translate(
        GatewayView(GW, {"a": a, "b": b_open}, {}, objects, frozenset({"b"}))
    )
    assert "oidc:corp:callback" in _routes(out)
    # a full resync keeps them too
    out = translator.translate(GatewayView(GW, {"a": a, "b": b_open}, {}, objects))
    assert "oidc:corp:callback" in _routes(out)

    # no user left: the routes, the filter, the cluster and the secrets are gone
    a_open = _route("a", None)
    out = translator.translate(
        GatewayView(GW, {"a": a_open, "b": b_open}, {}, objects, frozenset({"a"}))
    )
    assert not [n for n in _routes(out) if n.startswith("oidc:")]
    assert "gateway.oidc.corp" not in _filters(out)
    assert "oidc:corp" not in out.by_type[CLUSTER]
    assert not [n for n in out.by_type[SECRET] if n.startswith("oidc:")]


def test_a_changed_provider_moves_its_login_routes() -> None:
    translator = Translator()
    a = _route("a", "corp")
    translator.translate(GatewayView(GW, {"a": a}, {}, {"oidc_provider": {"corp": _provider()}}))
    moved = {"oidc_provider": {"corp": _provider(callback_path="/login/done")}}
    out = translator.translate(GatewayView(GW, {"a": a}, {}, moved, frozenset()))
    [vh] = out.message(ROUTE, "edge").virtual_hosts
    paths = {r.match.path for r in vh.routes if r.name == "oidc:corp:callback"}
    assert paths == {"/login/done", "/login/done/"}


def test_two_providers_of_one_gateway_may_not_share_a_path() -> None:
    objects = {"oidc_provider": {"corp": _provider(), "other": _provider("other")}}
    routes = {"a": _route("a", "corp"), "b": _route("b", "other")}
    with pytest.raises(TranslationError, match="'corp' and 'other' both use the path"):
        Translator().translate(GatewayView(GW, routes, {}, objects))
    apart = {**objects, "oidc_provider": {**objects["oidc_provider"]}}
    apart["oidc_provider"]["other"] = _provider(
        "other", callback_path="/other/cb", logout_path="/other/out"
    )
    out = Translator().translate(GatewayView(GW, routes, {}, apart))
    assert {"oidc:corp:callback", "oidc:other:callback"} <= set(_routes(out))

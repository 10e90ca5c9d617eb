"""Rate-limit translation: one filter config per gateway, routes carry only their name."""

from __future__ import annotations

import json

from controlplane.policy import Cluster, Consumer, Gateway, Plan, Route
from controlplane.policy.ratelimit import RateLimit
from controlplane.translate import EXTENSION, ROUTE, Translator, build_views
from controlplane.translate.ratelimit import (
    RATE_LIMIT_FILTER,
    consumer_limits,
    descriptor_capacity,
    rate_limit_config,
)


def _objects(plan_rate: int) -> dict[str, dict[str, object]]:
    plan = Plan(name="free", limits=[{"requests": plan_rate, "per": "minute"}])
    return {
        "plan": {"free": plan},
        "consumer": {
            "acme": Consumer(name="acme", plan="free"),
            "bolt": Consumer(name="bolt"),
        },
    }


GATEWAYS = [Gateway(name="limited", port=8080), Gateway(name="plain", port=8081)]
ROUTES = [
    Route(name="a", gateways=["limited"], cluster="c", rate_limit={"key": "consumer"}),
    Route(name="b", gateways=["plain"], cluster="c"),
]
CLUSTERS = {"c": Cluster(name="c", endpoints=["127.0.0.1:9"])}


def _state(plan_rate: int, routes: list[Route] = ROUTES):  # type: ignore[no-untyped-def]
    return build_views(GATEWAYS, routes, CLUSTERS, _objects(plan_rate))  # type: ignore[arg-type]


def test_a_plan_change_touches_only_the_filter_config_of_gateways_limiting_by_consumer() -> None:
    translator = Translator()
    first = {g: translator.translate(v) for g, v in _state(10).items()}
    assert translator.uses_plans("limited") and not translator.uses_plans("plain")
    assert RATE_LIMIT_FILTER not in first["plain"].by_type[EXTENSION]
    second = {g: translator.translate(v) for g, v in _state(20).items()}
    # routes are not re-encoded (their counters live in the filter config, not in RDS)
    for gw in ("limited", "plain"):
        assert second[gw].by_type[ROUTE][gw].data == first[gw].by_type[ROUTE][gw].data
    before = first["limited"].message(EXTENSION, RATE_LIMIT_FILTER)
    after = second["limited"].message(EXTENSION, RATE_LIMIT_FILTER)
    assert before != after


def test_unrelated_route_change_keeps_the_filter_config() -> None:
    translator = Translator()
    first = translator.translate(_state(10)["limited"])
    extra = Route(name="z", gateways=["limited"], cluster="c")
    second = translator.translate(_state(10, [*ROUTES, extra])["limited"])
    assert second.by_type[ROUTE]["limited"].data != first.by_type[ROUTE]["limited"].data
    assert (
        second.by_type[EXTENSION][RATE_LIMIT_FILTER] is first.by_type[EXTENSION][RATE_LIMIT_FILTER]
    )


def test_capacity_keeps_every_consumer_bucket() -> None:
    for count in (0, 1, 600, 5000, 100_000):
        assert descriptor_capacity(count) >= max(2 * count, 1024)
    plans = consumer_limits({f"c{i}": Consumer(name=f"c{i}") for i in range(5000)}, {})
    config = rate_limit_config(
        {"r": RateLimit(key="consumer", limits=[{"requests": 5, "per": "minute"}])},
        plans,
        5000,
    )
    assert config is not None and config.max_dynamic_descriptors.value >= 10_000
    assert config.HasField("local_cluster_rate_limit")


def test_unlimited_without_limits_or_plans() -> None:
    assert rate_limit_config({"r": RateLimit(key="consumer")}, (), 0) is None
    assert rate_limit_config({"r": RateLimit(key="none")}, (), 0) is None
    assert rate_limit_config({}, (), 0) is None


def test_header_keys_are_distinct_per_header() -> None:
    config = rate_limit_config(
        {
            "a": RateLimit(key="header:x-a", limits=[{"requests": 5, "per": "minute"}]),
            "b": RateLimit(key="header:x-b", limits=[{"requests": 5, "per": "minute"}]),
        },
        (),
        0,
    )
    assert config is not None
    keys = {tuple(e.key for e in d.entries) for d in config.descriptors}
    assert keys == {("route", "limit", "header.x-a"), ("route", "limit", "header.x-b")}


def test_rate_limit_round_trips_through_its_spec() -> None:
    for data in (
        {},
        {"key": "consumer", "use_plans": False, "limits": [{"requests": 5, "per": "minute"}]},
        {"key": "client_ip", "limits": [{"requests": 5, "per": "second", "burst": 9}]},
        {"key": "header:X-Tenant"},
        {"key": "none"},
    ):
        policy = RateLimit.model_validate(data)
        assert RateLimit.model_validate(policy.spec()) == policy


# the generator point of P-256: a valid public key
_X = "axfR8uEsQkf4vOblY6RA8ncDfYEt6zOg9KE5RdiYwpY"
_Y = "T-NC4v4af5uO5-tKfA-eFivOM1drMV7Oy7ZAaDe_UfU"
JWKS = json.dumps({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k", "x": _X, "y": _Y}]})


def test_both_routes_of_an_either_credential_route_share_one_budget() -> None:
    from controlplane.policy import JwtProvider
    from controlplane.translate.ratelimit import METADATA_NAMESPACE

    route = Route(
        name="either",
        gateways=["limited"],
        cluster="c",
        auth={"jwt": ["corp"], "api_key": True},
        rate_limit={"key": "consumer", "limits": [{"requests": 5, "per": "minute"}]},
    )
    objects = _objects(10)
    objects["jwt_provider"] = {"corp": JwtProvider(name="corp", issuer="https://i.test", jwks=JWKS)}
    view = build_views(GATEWAYS[:1], [route], CLUSTERS, objects)["limited"]  # type: ignore[arg-type]
    config = Translator().translate(view).message(ROUTE, "limited")
    variants = [r for vh in config.virtual_hosts for r in vh.routes if r.name.startswith("either")]
    assert len(variants) == 2  # with x-api-key / without
    names = {r.metadata.filter_metadata[METADATA_NAMESPACE]["route"] for r in variants}
    assert names == {"either"}  # one policy name: one set of buckets


def test_only_a_gateway_with_limits_divides_them_by_replicas() -> None:
    """What xds/cache.py serves the replica list from (ADR 0048): a gateway without limits
    gets a constant list, so proxies connecting to it wake nobody."""
    translator = Translator()
    out = {g: translator.translate(v) for g, v in _state(10).items()}
    assert out["limited"].divides_by_replicas
    assert not out["plain"].divides_by_replicas

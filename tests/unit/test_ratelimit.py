"""Rate-limit translation: plans reach only the gateways that limit by consumer."""

from __future__ import annotations

from controlplane.policy import Cluster, Consumer, Gateway, Plan, Route
from controlplane.policy.ratelimit import RateLimit
from controlplane.translate import Translator, build_views
from controlplane.translate.ratelimit import consumer_limits, descriptor_capacity, rate_limit_config


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


def _state(plan_rate: int):  # type: ignore[no-untyped-def]
    return build_views(GATEWAYS, ROUTES, CLUSTERS, _objects(plan_rate))  # type: ignore[arg-type]


def test_a_plan_change_re_encodes_only_gateways_limiting_by_consumer() -> None:
    translator = Translator()
    for view in _state(10).values():
        translator.translate(view)
    before = {g: dict(translator._tables[g]._entries) for g in ("limited", "plain")}
    assert translator.uses_plans("limited") and not translator.uses_plans("plain")
    for view in _state(20).values():
        translator.translate(view)
    after = {g: translator._tables[g]._entries for g in ("limited", "plain")}
    assert after["plain"]["b"][2] is before["plain"]["b"][2]  # not re-encoded
    assert after["limited"]["a"][2] != before["limited"]["a"][2]


def test_capacity_keeps_every_consumer_bucket() -> None:
    for count in (0, 1, 600, 5000, 100_000):
        assert descriptor_capacity(count) >= max(2 * count, 1024)
    plans = consumer_limits({f"c{i}": Consumer(name=f"c{i}") for i in range(5000)}, {})
    config = rate_limit_config(
        RateLimit(key="consumer", limits=[{"requests": 5, "per": "minute"}]),
        plans,
        descriptor_capacity(5000),
    )
    assert config is not None and config.max_dynamic_descriptors.value >= 10_000


def test_unlimited_without_limits_or_plans() -> None:
    assert rate_limit_config(RateLimit(key="consumer"), (), 1024) is None
    assert rate_limit_config(RateLimit(key="none"), (), 1024) is None


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

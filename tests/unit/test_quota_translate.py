"""The quota filter's refusals name the end of the caller's calendar window, and the
controller knows when to re-translate them (the next midnight of any zone in use)."""

from __future__ import annotations

from types import SimpleNamespace

from envoy.extensions.filters.http.rate_limit_quota.v3 import rate_limit_quota_pb2 as rlq

from controlplane.policy import Gateway
from controlplane.policy.ratelimit import Per, Plan, RateLimit
from controlplane.quota.budgets import next_quota_boundary
from controlplane.translate.quota import quota_filter

NEW_YEAR = 1_767_225_600  # 2026-01-01T00:00:00Z


def _headers(config: rlq.RateLimitQuotaFilterConfig) -> dict[str, str]:
    entry = config.bucket_matchers.matcher_tree.exact_match_map.map["api"]
    settings = rlq.RateLimitQuotaBucketSettings()
    entry.action.typed_config.Unpack(settings)
    headers = settings.deny_response_settings.response_headers_to_add
    return {h.header.key: h.header.value for h in headers}


def test_refusals_name_the_end_of_the_window() -> None:
    gateway = Gateway(name="g", port=8080)
    policy = RateLimit(key="none", limits=[{"requests": 10, "per": "day"}])
    config = quota_filter(gateway, Per.day, {"api": policy}, {}, now=NEW_YEAR + 3600)
    assert config is not None and config.domain == "g/day"
    assert _headers(config) == {
        "retry-after": "Fri, 02 Jan 2026 00:00:00 GMT",
        "x-quota-reset": str(NEW_YEAR + 86400),
    }
    # minute budgets go through the service only in shared mode
    assert quota_filter(gateway, Per.minute, {"api": policy}, {}) is None
    shared = Gateway(name="g", port=8080, rate_limit_mode="shared")
    minute = RateLimit(key="none", limits=[{"requests": 10, "per": "minute"}])
    assert quota_filter(shared, Per.minute, {"api": minute}, {}) is not None


def test_next_boundary_is_the_first_midnight_of_any_zone_in_use() -> None:
    plan = Plan(name="p", limits=[{"requests": 5, "per": "day"}])
    assert next_quota_boundary({"plan": {"p": plan}}, NEW_YEAR + 10) == NEW_YEAR + 86400
    # a plan in Tokyo (UTC+9): its midnight comes 9 hours before UTC's
    tokyo = SimpleNamespace(time_zone="Asia/Tokyo", rate_limit=None)
    objects = {"plan": {"p": plan, "t": tokyo}}
    assert next_quota_boundary(objects, NEW_YEAR + 10) == NEW_YEAR + 86400 - 9 * 3600


def test_a_consumer_whose_plan_is_all_quotas_keeps_its_own_local_buckets() -> None:
    """A plan of only a day quota (counted by the quota service): the route's own minute
    limit must not apply to its consumers in the local filter (an unlimited bucket)."""
    from controlplane.policy.ratelimit import Limit
    from controlplane.translate.ratelimit import UNLIMITED, rate_limit_config

    route = RateLimit(key="consumer", limits=[{"requests": 30, "per": "minute"}])
    plans = (("acme", (Limit(requests=1000, per=Per.day),)),)
    config = rate_limit_config({"api": route}, plans, 1, frozenset({Per.day}))
    assert config is not None
    acme = [
        d
        for d in config.descriptors
        if any(e.key == "consumer" and e.value == "acme" for e in d.entries)
    ]
    assert [d.token_bucket.max_tokens for d in acme] == [UNLIMITED]


def test_the_route_is_one_map_lookup_whatever_the_number_of_limited_routes() -> None:
    """The matcher reads the route's name from the filter state that the route filter sets
    from its metadata: one exact map keyed by route (a predicate per route, evaluated in
    turn, cost each request a CEL evaluation per limited route)."""
    from envoy.extensions.filters.http.set_filter_state.v3 import set_filter_state_pb2
    from envoy.extensions.matching.common_inputs.network.v3 import network_inputs_pb2

    from controlplane.translate.quota import ROUTE_STATE, route_filter

    gateway = Gateway(name="g", port=8080, rate_limit_mode="shared")
    policies = {
        f"r{i:03d}": RateLimit(key="none", limits=[{"requests": 10 + i, "per": "minute"}])
        for i in range(200)
    }
    config = quota_filter(gateway, Per.minute, policies, {})
    assert config is not None
    tree = config.bucket_matchers.matcher_tree
    assert not config.bucket_matchers.HasField("matcher_list")
    assert sorted(tree.exact_match_map.map) == sorted(policies)
    state = network_inputs_pb2.FilterStateInput()
    assert tree.input.typed_config.Unpack(state) and state.key == ROUTE_STATE
    # each route's bucket names that route
    settings = rlq.RateLimitQuotaBucketSettings()
    tree.exact_match_map.map["r007"].action.typed_config.Unpack(settings)
    ids = settings.bucket_id_builder.bucket_id_builder
    assert ids["route"].string_value == "r007" and ids["unit"].string_value == "minute"

    setter = route_filter()
    assert isinstance(setter, set_filter_state_pb2.Config)
    (value,) = setter.on_request_headers
    assert value.object_key == ROUTE_STATE
    assert value.format_string.text_format_source.inline_string == (
        "%METADATA(ROUTE:gateway:route)%"
    )


def test_a_listed_consumer_s_bucket_names_it_without_reading_the_header() -> None:
    """Consumers with plans are matched by name in a map; their bucket ids carry that name as
    a constant (the id the header would give, so the quota service sees the same bucket),
    and only callers outside the map have theirs read from ``x-consumer-id``."""
    from controlplane.policy import Consumer

    gateway = Gateway(name="g", port=8080, rate_limit_mode="shared")
    policy = RateLimit(key="consumer", limits=[{"requests": 5, "per": "minute"}])
    objects = {
        "plan": {"team": Plan(name="team", limits=[{"requests": 100, "per": "minute"}])},
        "consumer": {"acme": Consumer(name="acme", plan="team")},
    }
    config = quota_filter(gateway, Per.minute, {"api": policy}, objects)
    assert config is not None
    by_consumer = config.bucket_matchers.matcher_tree.exact_match_map.map["api"].matcher
    settings = rlq.RateLimitQuotaBucketSettings()
    by_consumer.matcher_tree.exact_match_map.map["acme"].action.typed_config.Unpack(settings)
    assert settings.bucket_id_builder.bucket_id_builder["consumer"].string_value == "acme"
    others = rlq.RateLimitQuotaBucketSettings()
    by_consumer.on_no_match.action.typed_config.Unpack(others)
    assert others.bucket_id_builder.bucket_id_builder["consumer"].HasField("custom_value")


def _chain(out: object, gateway: str) -> dict[str, bool]:
    """The gateway's HTTP filters in order: name -> listed disabled."""
    from envoy.extensions.filters.network.http_connection_manager.v3 import (
        http_connection_manager_pb2 as hcm_pb2,
    )

    from controlplane.translate import LISTENER

    listener = out.message(LISTENER, gateway)  # type: ignore[attr-defined]
    hcm = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    return {f.name: f.disabled for f in hcm.http_filters}


def _switched(out: object, gateway: str) -> dict[str, set[str]]:
    """Route name -> the quota filters its per-filter config names."""
    from controlplane.translate import ROUTE

    [vh] = out.message(ROUTE, gateway).virtual_hosts  # type: ignore[attr-defined]
    return {
        r.name: {n for n in r.typed_per_filter_config if n.startswith("gateway.quota")}
        for r in vh.routes
    }


def test_only_limited_routes_run_the_quota_filters() -> None:
    """The quota filters and the route filter are listed disabled and switched on by the
    limited routes alone: a request on a route without limits creates none of them. The
    first plan with a day quota switches the day filter on in every limited route, and
    the last one gone switches it off again."""
    from controlplane.policy import Consumer, Route
    from controlplane.translate import GatewayView, Translator

    gateway = Gateway(name="g", port=8080, rate_limit_mode="shared")

    def route(name: str, limit: dict[str, object] | None) -> Route:
        return Route.model_validate(
            {
                "name": name,
                "gateways": ["g"],
                "match": {"path_prefix": f"/{name}"},
                "cluster": "app",
                "auth": {"api_key": True},
                **({"rate_limit": limit} if limit else {}),
            }
        )

    routes = {
        "open": route("open", None),
        "metered": route("metered", {"key": "consumer"}),
    }
    minute = {"plan": {"p": Plan(name="p", limits=[{"requests": 100, "per": "minute"}])}}
    objects = {**minute, "consumer": {"acme": Consumer(name="acme", plan="p")}}
    translator = Translator()
    out = translator.translate(GatewayView(gateway, routes, {}, objects))
    chain = _chain(out, "g")
    assert chain["gateway.quota_route"] is True and chain["gateway.quota.minute"] is True
    assert "gateway.quota.day" not in chain
    switched = _switched(out, "g")
    assert switched["metered"] == {"gateway.quota_route", "gateway.quota.minute"}
    assert switched["open"] == set()

    # a day quota added to the plan: the limited route switches the day filter on too
    daily = Plan(
        name="p",
        limits=[{"requests": 100, "per": "minute"}, {"requests": 1000, "per": "day"}],
    )
    with_day = {**objects, "plan": {"p": daily}}
    out = translator.translate(GatewayView(gateway, routes, {}, with_day, frozenset()))
    assert _chain(out, "g")["gateway.quota.day"] is True
    assert _switched(out, "g")["metered"] == {
        "gateway.quota_route", "gateway.quota.minute", "gateway.quota.day",
    }  # fmt: skip
    # and removed again
    out = translator.translate(GatewayView(gateway, routes, {}, objects, frozenset()))
    assert "gateway.quota.day" not in _chain(out, "g")
    assert _switched(out, "g")["metered"] == {"gateway.quota_route", "gateway.quota.minute"}

    # local mode without calendar quotas: no quota filter, nothing switched on
    local = gateway.model_copy(update={"rate_limit_mode": "local"})
    out = Translator().translate(GatewayView(local, routes, {}, objects))
    assert not [n for n in _chain(out, "g") if n.startswith("gateway.quota")]
    assert _switched(out, "g")["metered"] == set()

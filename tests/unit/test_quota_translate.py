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
    entry = config.bucket_matchers.matcher_list.matchers[0]
    settings = rlq.RateLimitQuotaBucketSettings()
    entry.on_match.action.typed_config.Unpack(settings)
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

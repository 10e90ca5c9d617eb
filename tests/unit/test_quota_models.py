"""Day/week/month quotas in the policy models (``time_zone``, units, limits) and what
``quota show|reset`` make of them with the counters (controlplane/quota/report.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from controlplane.errors import Forbidden, NotFound, PolicyInvalid
from controlplane.policy import Cluster, Consumer, Gateway, Route
from controlplane.policy.ratelimit import Limit, Per, Plan, RateLimit, parse_limit
from controlplane.quota.calendar import window
from controlplane.quota.counters import CounterKey, QuotaCounters
from controlplane.quota.report import EVENT_KIND, quotas_of, reset, show
from controlplane.store import Store

#: Wednesday 2026-12-02 12:00 UTC
NOW = 1796212800


def test_time_zone_defaults_to_utc_and_is_exported_only_when_set() -> None:
    limits = [{"requests": 100000, "per": "month"}]
    assert Plan(name="p", limits=limits).time_zone == "UTC"
    assert "time_zone" not in Plan(name="p", limits=limits).spec()
    assert Plan(name="p", limits=limits, time_zone="Europe/Paris").spec()["time_zone"] == (
        "Europe/Paris"
    )
    assert Consumer(name="c", time_zone="Asia/Tokyo").time_zone == "Asia/Tokyo"
    assert RateLimit(key="none", limits=limits, time_zone="America/New_York").spec() == {
        "key": "none",
        "limits": limits,
        "use_plans": False,
        "time_zone": "America/New_York",
    }


@pytest.mark.parametrize("name", ["Mars/Olympus", "", "../../etc/passwd", " UTC", "/UTC"])
@pytest.mark.parametrize("model", ["plan", "consumer", "rate_limit"])
def test_unknown_time_zones_are_refused_naming_the_field(model: str, name: str) -> None:
    build = {
        "plan": lambda: Plan(name="p", limits=[{"requests": 1, "per": "day"}], time_zone=name),
        "consumer": lambda: Consumer(name="c", time_zone=name),
        "rate_limit": lambda: RateLimit(time_zone=name),
    }[model]
    with pytest.raises(ValidationError) as err:
        build()
    assert err.value.errors()[0]["loc"] == ("time_zone",)
    assert "time zone" in str(err.value)


@pytest.mark.parametrize(
    ("text", "per"),
    [("100000/month", "month"), ("5000/week", "week"), ("5/w", "week"), ("5/wk", "week"),
     ("7/mo", "month"), ("9/months", "month"), ("3/days", "day"), ("2/d", "day")],
)  # fmt: skip
def test_parse_limit_knows_weeks_and_months(text: str, per: str) -> None:
    assert parse_limit(text)["per"] == per
    assert Limit(**parse_limit(text)).per == per


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"requests": 0, "per": "month"}, "0 is out of range"),
        ({"requests": -5, "per": "week"}, "-5 is out of range"),
        ({"requests": 5, "per": "fortnight"}, "per"),
        ({"requests": 5, "per": "month", "burst": 10}, "a per-month quota has no burst"),
        ({"requests": 5, "per": "day", "burst": 10}, "a per-day quota has no burst"),
    ],
)
def test_bad_quotas_are_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError) as err:
        Limit(**fields)  # type: ignore[arg-type]
    assert message in str(err.value)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(str(tmp_path / "g.db"), create=True)
    s.create(Plan(name="pro", limits=[{"requests": 1000, "per": "day"},
                                      {"requests": 10, "per": "second"},
                                      {"requests": 100000, "per": "month"}],
                  time_zone="Europe/Paris"))  # fmt: skip
    s.create(Consumer(name="acme", plan="pro"))
    s.create(Consumer(name="bob", limits=[{"requests": 5000, "per": "week"}],
                      time_zone="America/New_York"))  # fmt: skip
    s.create(Consumer(name="carl"))
    s.create(Gateway(name="public", port=8080,
                     rate_limit={"key": "consumer", "limits": [{"requests": 50, "per": "day"}],
                                 "time_zone": "Asia/Tokyo"}))  # fmt: skip
    s.create(Gateway(name="internal", port=8081))
    s.create(Cluster(name="c", endpoints=["127.0.0.1:9"]))
    s.create(Route(name="api", gateway="public", cluster="c"))
    weekly = {"key": "client_ip", "limits": [{"requests": 7, "per": "week"}]}
    s.create(Route(name="ips", gateway="public", cluster="c", rate_limit=weekly))
    s.create(Route(name="inner", gateway="internal", cluster="c",
                   rate_limit={"key": "consumer", "use_plans": False,
                               "limits": [{"requests": 3, "per": "month"}]}))  # fmt: skip
    return s


def _count(store: Store, gw: str, route: str, key: str, unit: str, tz: str, n: int) -> None:
    start, end = window(Per(unit), NOW, tz)
    QuotaCounters(store._writer).add({CounterKey(gw, route, key, unit, start): (n, end)})


def test_limits_come_from_own_limits_plan_or_route_each_in_its_time_zone(store: Store) -> None:
    got = {(q.route, q.key, q.unit): (q.limit, q.source, q.time_zone)
           for q in quotas_of(store)}  # fmt: skip
    assert got == {
        ("api", "consumer:acme", "day"): (1000, "plan pro", "Europe/Paris"),
        ("api", "consumer:acme", "month"): (100000, "plan pro", "Europe/Paris"),
        ("api", "consumer:bob", "week"): (5000, "consumer bob", "America/New_York"),
        # no plan, no limits of its own: the gateway's limits for callers without a plan
        ("api", "consumer:carl", "day"): (50, "gateway public", "Asia/Tokyo"),
        ("ips", None, "week"): (7, "route ips", "UTC"),  # per IP: keys from the counters
        # plans do not apply on this route: its own limits for every consumer
        ("inner", "consumer:acme", "month"): (3, "route inner", "UTC"),
        ("inner", "consumer:bob", "month"): (3, "route inner", "UTC"),
        ("inner", "consumer:carl", "month"): (3, "route inner", "UTC"),
    }


def test_show_counts_from_the_counters_of_the_open_window(store: Store) -> None:
    counters = QuotaCounters(store._writer)
    _count(store, "public", "api", "consumer:acme", "day", "Europe/Paris", 120)
    _count(store, "public", "ips", "ip:10.0.0.1", "week", "UTC", 5)
    _count(store, "public", "api", "consumer:carl", "day", "Asia/Tokyo", 4)
    # yesterday's window: not the open one, never shown
    old_start, old_end = window(Per.day, NOW - 86400, "Europe/Paris")
    counters.add({CounterKey("public", "api", "consumer:acme", "day", old_start): (999, old_end)})

    acme = show(store, counters, consumer="acme", now=NOW)
    assert [(e["route"], e["unit"], e["used"], e["limit"], e["remaining"]) for e in acme] == [
        ("inner", "month", 0, 3, 3),
        ("api", "day", 120, 1000, 880),
        ("api", "month", 0, 100000, 100000),
    ]
    day = next(e for e in acme if e["unit"] == "day")
    assert day["window_start"] == "2026-12-02T00:00:00+01:00"
    assert day["window_end"] == "2026-12-03T00:00:00+01:00"
    assert day["resets_at"] == 1796252400 and day["resets_in"] == "11h"
    assert day["source"] == "plan pro" and day["key"] == "consumer:acme"

    everyone = {(e["route"], e["key"], e["unit"]): e for e in show(store, counters, now=NOW)}
    # a counted IP under the route's per-IP week quota, and carl under the gateway's limits
    assert everyone[("ips", "ip:10.0.0.1", "week")]["limit"] == 7
    assert everyone[("ips", "ip:10.0.0.1", "week")]["used"] == 5
    assert everyone[("api", "consumer:carl", "day")]["used"] == 4
    assert everyone[("api", "consumer:carl", "day")]["window_start"].endswith("+09:00")
    # consumers without a quota of their own and without a counter are not listed one by one
    assert ("inner", "consumer:carl", "month") not in everyone
    assert ("api", "consumer:bob", "week") in everyone

    with pytest.raises(NotFound, match="consumer 'nobody' does not exist"):
        show(store, counters, consumer="nobody", now=NOW)
    with pytest.raises(NotFound, match="route 'nope'"):
        show(store, counters, route="nope", now=NOW)


def test_scoped_callers_see_and_reset_their_gateways_only(store: Store) -> None:
    counters = QuotaCounters(store._writer)
    _count(store, "public", "api", "consumer:acme", "day", "Europe/Paris", 120)
    _count(store, "internal", "inner", "consumer:acme", "month", "UTC", 2)
    seen = show(store, counters, consumer="acme", scope=frozenset({"internal"}), now=NOW)
    assert {e["gateway"] for e in seen} == {"internal"}
    with pytest.raises(Forbidden, match="outside its scope"):
        show(store, counters, gateway="public", scope=frozenset({"internal"}), who="t", now=NOW)
    with pytest.raises(Forbidden, match="route 'api' serves none of them"):
        show(store, counters, route="api", scope=frozenset({"internal"}), who="t", now=NOW)
    with pytest.raises(Forbidden):
        reset(store, counters, consumer="acme", gateway="public", scope=frozenset({"internal"}),
              actor="t", now=NOW)  # fmt: skip
    done = reset(store, counters, consumer="acme", scope=frozenset({"internal"}), actor="t",
                 now=NOW)  # fmt: skip
    assert done["reset"] == 1
    left = {(r.gateway, r.used) for r in counters.rows(at=NOW)}
    assert left == {("public", 120)}


def test_reset_forgets_one_consumers_open_windows_and_records_who(store: Store) -> None:
    counters = QuotaCounters(store._writer)
    _count(store, "public", "api", "consumer:acme", "day", "Europe/Paris", 120)
    _count(store, "public", "api", "consumer:acme", "month", "Europe/Paris", 900)
    _count(store, "public", "api", "consumer:bob", "week", "America/New_York", 8)
    revision = store.revision()
    with pytest.raises(PolicyInvalid, match="unit: 'year' is not day, week or month"):
        reset(store, counters, consumer="acme", unit="year", actor="ops", now=NOW)
    with pytest.raises(NotFound, match="consumer 'nobody'"):
        reset(store, counters, consumer="nobody", actor="ops", now=NOW)
    assert len(counters.rows(at=NOW)) == 3  # refused: nothing reset

    done = reset(store, counters, consumer="acme", unit="day", actor="ops", now=NOW)
    assert done["reset"] == 1
    assert done["counters"] == [{"gateway": "public", "route": "api", "unit": "day", "used": 120}]
    assert {(r.key, r.unit) for r in counters.rows(at=NOW)} == {
        ("consumer:acme", "month"), ("consumer:bob", "week")}  # fmt: skip
    assert store.revision() == revision  # counters are not policy: no new revision
    event = next(e for e in store.events(limit=10) if e["kind"] == EVENT_KIND)
    assert event["node"] == "ops"
    assert "consumer acme (unit day): 1 counter(s) reset" in event["detail"]
    day = next(e for e in show(store, counters, consumer="acme", now=NOW) if e["unit"] == "day")
    assert day["used"] == 0


def test_a_day_across_a_daylight_saving_change_lasts_25_hours_in_show(store: Store) -> None:
    counters = QuotaCounters(store._writer)
    noon = 1792929600  # 2026-10-25 12:00 UTC: Paris leaves summer time that night
    day = next(e for e in show(store, counters, consumer="acme", now=noon) if e["unit"] == "day")
    assert (day["window_start"], day["window_end"]) == (
        "2026-10-25T00:00:00+02:00",
        "2026-10-26T00:00:00+01:00",
    )
    start, end = window(Per.day, noon, "Europe/Paris")
    assert end - start == 25 * 3600 and day["resets_at"] == end

"""``gatewayctl quota show|reset``, ``--time-zone`` and day/week/month limits in the CLI: on
the database and through a running controller's admin API (same answers, roles and gateway
scopes enforced, the reset recorded with its actor); bad input refused in one line, exit 2,
nothing written."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controlplane.policy.ratelimit import Per
from controlplane.quota.calendar import window
from controlplane.quota.counters import CounterKey, QuotaCounters
from controlplane.store import Store
from tests.e2e.harness import Cli, Controller, Remote
from tests.test_cli import _state

POLICY = """
gateways:
  - {name: public, port: 8080}
  - name: internal
    port: 8081
    rate_limit: {key: consumer, use_plans: false, limits: [{requests: 3, per: month}]}
clusters:
  - {name: users, endpoints: ["127.0.0.1:9001"]}
plans:
  - name: pro
    limits: [{requests: 1000, per: day}, {requests: 100000, per: month}]
    time_zone: Europe/Paris
consumers:
  - {name: acme, plan: pro}
  - {name: bob, limits: [{requests: 5000, per: week}], time_zone: America/New_York}
routes:
  - {name: users-api, gateway: public, match: {path_prefix: /users}, cluster: users,
     rate_limit: {key: consumer}}
  - {name: inner, gateway: internal, match: {path_prefix: /in}, cluster: users}
"""


@pytest.fixture
def loaded(tmp_path: Path) -> Cli:
    cli = Cli(db=str(tmp_path / "gateway.db"))
    cli.run("apply", "-f", "-", input=POLICY)
    return cli


def _count(db: str, gateway: str, route: str, key: str, unit: str, tz: str, n: int) -> None:
    """What the quota service would have counted in the window open now."""
    store = Store(db)
    try:
        start, end = window(Per(unit), time.time(), tz)
        QuotaCounters(store._writer).add({CounterKey(gateway, route, key, unit, start): (n, end)})
    finally:
        store.close()


def _used(cli: Cli | Remote, *args: str) -> dict[tuple[str, str], int]:
    return {(e["route"], e["unit"]): e["used"] for e in cli.json("quota", "show", *args)}


def test_show_and_reset_on_the_database(loaded: Cli) -> None:
    _count(loaded.db, "public", "users-api", "consumer:acme", "day", "Europe/Paris", 120)
    _count(loaded.db, "internal", "inner", "consumer:acme", "month", "UTC", 2)
    _count(loaded.db, "public", "users-api", "consumer:bob", "week", "America/New_York", 9)
    shown = loaded.json("quota", "show", "--consumer", "acme")
    assert [(e["gateway"], e["route"], e["unit"], e["used"], e["limit"]) for e in shown] == [
        ("internal", "inner", "month", 2, 3),
        ("public", "users-api", "day", 120, 1000),
        ("public", "users-api", "month", 0, 100000),
    ]
    day = shown[1]
    assert day["time_zone"] == "Europe/Paris" and day["source"] == "plan pro"
    assert day["window_start"].endswith("T00:00:00+01:00")
    table = loaded.run("quota", "show", "--consumer", "acme", "--route", "users-api").stdout
    assert table.splitlines()[0].startswith("public/users-api consumer:acme: 120 of 1,000 today (")
    assert "Europe/Paris, plan pro), resets in " in table

    # no confirmation, nothing reset
    refused = loaded.run("quota", "reset", "--consumer", "acme", input="n\n", check=False)
    assert refused.returncode == 1 and "nothing reset" in refused.stderr
    assert _used(loaded, "--consumer", "acme")[("users-api", "day")] == 120
    asked = loaded.run("quota", "reset", "--consumer", "acme", "--unit", "day", input="y\n")
    assert "1 counter(s) reset" in asked.stderr
    assert _used(loaded, "--consumer", "acme") == {
        ("inner", "month"): 2, ("users-api", "day"): 0, ("users-api", "month"): 0}  # fmt: skip
    loaded.run("quota", "reset", "--consumer", "acme", "--gateway", "internal", "--yes")
    assert _used(loaded, "--consumer", "acme")[("inner", "month")] == 0
    assert _used(loaded, "--consumer", "bob")[("users-api", "week")] == 9  # another consumer
    events = loaded.json("events")
    resets = [e for e in events if e["kind"] == "quota_reset"]
    assert len(resets) == 2 and all(e["node"].startswith("local") for e in resets)
    # the usage report reads the same counters
    usage = loaded.json("analytics", "usage", "bob")
    assert [(u["per"], u["used"], u["route"]) for u in usage] == [("week", 9, "users-api")]


@pytest.mark.parametrize(
    "args",
    [
        ("quota", "show", "--consumer", "nobody"),
        ("quota", "reset", "--consumer", "nobody", "--yes"),
        ("quota", "show", "--gateway", "nope"),
        ("analytics", "usage", "nobody"),
    ],
)
def test_unknown_names_exit_3(loaded: Cli, args: tuple[str, ...]) -> None:
    proc = loaded.run(*args, check=False)
    assert proc.returncode == 3 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "does not exist" in proc.stderr


def test_time_zone_and_calendar_units_through_the_imperative_commands(loaded: Cli) -> None:
    loaded.run("plan", "add", "monthly", "--limit", "100000/month", "--limit", "5000/wk",
               "--time-zone", "Asia/Tokyo")  # fmt: skip
    plan = loaded.json("plan", "get", "monthly")
    assert plan["limits"] == [{"requests": 5000, "per": "week"},
                              {"requests": 100000, "per": "month"}]  # fmt: skip
    assert plan["time_zone"] == "Asia/Tokyo"
    listed = loaded.run("plan", "list").stdout
    assert "5000/week, 100000/month (Asia/Tokyo)" in listed
    loaded.run("consumer", "update", "acme", "--limit", "10/mo", "--time-zone", "Europe/Berlin")
    acme = loaded.json("consumer", "get", "acme")
    assert (acme["limits"], acme["time_zone"]) == ([{"requests": 10, "per": "month"}],
                                                   "Europe/Berlin")  # fmt: skip
    loaded.run("ratelimit", "set", "--route", "inner", "--key", "client_ip",
               "--limit", "7/day", "--time-zone", "America/New_York")  # fmt: skip
    loaded.run("route", "update", "users-api", "--rate-limit-time-zone", "Australia/Sydney")
    rows = {r["target"]: r for r in loaded.json("ratelimit", "list")}
    assert rows["route/inner"]["limits"] == "7/day (America/New_York)"
    route = loaded.json("route", "get", "users-api")
    assert route["rate_limit"]["time_zone"] == "Australia/Sydney"
    # the default is not written out: export then diff stays empty
    exported = loaded.run("export").stdout
    assert exported.count("time_zone") == 6 and "UTC" not in exported
    assert loaded.run("diff", "-f", "-", input=exported).stdout == ""


BAD_FILES = {
    "quota of 0": (POLICY.replace("{requests: 1000, per: day}", "{requests: 0, per: day}"),
                   "plans[0] 'pro': limits[0].requests: 0 is out of range"),
    "negative quota": (POLICY.replace("{requests: 5000, per: week}", "{requests: -1, per: week}"),
                       "consumers[1] 'bob': limits[0].requests: -1 is out of range"),
    "unknown unit": (POLICY.replace("per: month}]}", "per: fortnight}]}"),
                     "gateways[1] 'internal': rate_limit.limits[0].per: Input should be"),
    "month with burst": (POLICY.replace("{requests: 100000, per: month}",
                                        "{requests: 100000, per: month, burst: 200000}"),
                         "plans[0] 'pro': limits[1]: burst: a per-month quota has no burst"),
    "unknown plan time zone": (POLICY.replace("Europe/Paris", "Europe/Atlantis"),
                               "plans[0] 'pro': time_zone: 'Europe/Atlantis' is not a known"),
    "unknown consumer time zone": (POLICY.replace("America/New_York", "America/Gotham"),
                                   "consumers[1] 'bob': time_zone: 'America/Gotham'"),
    "unknown rate limit time zone": (
        POLICY.replace("rate_limit: {key: consumer}", "rate_limit: {key: consumer, "
                       "time_zone: Moon/Base}"),
        "routes[0] 'users-api': rate_limit.time_zone: 'Moon/Base' is not a known time zone"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_quotas_in_a_file_write_nothing(loaded: Cli, case: str) -> None:
    text, expected = BAD_FILES[case]
    before = _state(loaded)
    proc = loaded.run("apply", "-f", "-", input=text, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], proc.stderr
    assert _state(loaded) == before


BAD_COMMANDS = {
    "quota of 0": (["plan", "add", "p2", "--limit", "0/month"], "requests: 0 is out of range"),
    "negative quota": (["consumer", "update", "acme", "--limit", "-3/week"],
                       "requests: -3 is out of range"),
    "unknown unit": (["plan", "update", "pro", "--limit", "5/fortnight"], "per: Input should be"),
    "month with burst": (["plan", "add", "p2", "--limit", "5/month:9"],
                         "burst: a per-month quota has no burst"),
    "--burst on a week": (["ratelimit", "set", "--route", "inner", "--limit", "5/week",
                           "--burst", "9"], "burst: a per-week quota has no burst"),
    "plan time zone": (["plan", "update", "pro", "--time-zone", "Europe/Atlantis"],
                       "time_zone: 'Europe/Atlantis' is not a known time zone"),
    "consumer time zone": (["consumer", "add", "zed", "--time-zone", "Nowhere"],
                           "time_zone: 'Nowhere' is not a known time zone"),
    "ratelimit time zone": (["ratelimit", "set", "--route", "inner", "--limit", "5/day",
                             "--time-zone", "../etc/passwd"], "time_zone:"),
    "route time zone": (["route", "update", "users-api", "--rate-limit-time-zone", "UTC+1"],
                        "time_zone: 'UTC+1'"),
    "reset unit": (["quota", "reset", "--consumer", "acme", "--unit", "year", "--yes"],
                   "--unit: 'year' is not day, week or month"),
    "export reversed": (["analytics", "export", "--since", "1h", "--until", "2h"],
                        "--until: must be after --since"),
    "export without end": (["analytics", "export", "--since", "1h"],
                           "--until: required (an export covers a bounded range)"),
    "export without start": (["analytics", "export", "--until", "now"], "--since: required"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_COMMANDS))
def test_bad_quota_commands_write_nothing(loaded: Cli, case: str) -> None:
    args, expected = BAD_COMMANDS[case]
    _count(loaded.db, "public", "users-api", "consumer:acme", "day", "Europe/Paris", 5)
    before = _state(loaded), _used(loaded, "--consumer", "acme")
    proc = loaded.run(*args, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], proc.stderr
    assert (_state(loaded), _used(loaded, "--consumer", "acme")) == before


# -- through a running controller's admin API -----------------------------------------------


@dataclass
class Site:
    cli: Cli
    admin: Remote
    editor: Remote
    viewer: Remote
    scoped: Remote


def _token(cli: Cli, name: str, *args: str) -> str:
    out = cli.run("token", "add", name, *args).stdout
    return next(word for word in out.split() if word.startswith("gw_"))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    folder = tmp_path_factory.mktemp("quota-remote")
    cli = Cli(db=str(folder / "gateway.db"))
    cli.run("apply", "-f", "-", input=POLICY)
    controller = Controller(cli, folder)
    controller.start()
    url = f"http://127.0.0.1:{controller.admin_port}"
    try:
        yield Site(
            cli,
            Remote(url, _token(cli, "ops", "--role", "admin"), folder / "admin"),
            Remote(url, _token(cli, "deployer", "--role", "editor"), folder / "editor"),
            Remote(url, _token(cli, "watcher", "--role", "viewer"), folder / "viewer"),
            Remote(url, _token(cli, "inside", "--role", "editor", "--gateway", "internal"),
                   folder / "scoped"),
        )  # fmt: skip
    finally:
        controller.stop()


def _steady(value: Any) -> Any:
    """``value`` without "resets in 12h 5m", which changes when a minute passes between
    the local and the remote call."""
    if isinstance(value, str):
        return re.sub(r"resets in [0-9dhms ]+", "resets in ...", value)
    if isinstance(value, list):
        return [_steady(v) for v in value]
    if isinstance(value, dict):
        return {k: _steady(v) for k, v in value.items() if k != "resets_in"}
    return value


@pytest.mark.e2e
def test_quota_commands_through_the_admin_api(site: Site) -> None:
    _count(site.cli.db, "public", "users-api", "consumer:acme", "day", "Europe/Paris", 120)
    _count(site.cli.db, "internal", "inner", "consumer:acme", "month", "UTC", 2)
    for args in (("--consumer", "acme"), (), ("--route", "inner"), ("--gateway", "public")):
        local = _steady(site.cli.json("quota", "show", *args))
        assert _steady(site.admin.json("quota", "show", *args)) == local, args
        assert _steady(site.viewer.json("quota", "show", *args)) == local, args  # a viewer reads
    text = site.admin.run("quota", "show", "--consumer", "acme").stdout
    assert _steady(text) == _steady(site.cli.run("quota", "show", "--consumer", "acme").stdout)
    assert _steady(site.admin.json("analytics", "usage", "acme")) == _steady(
        site.cli.json("analytics", "usage", "acme")
    )

    # a gateway-scoped token: its gateways only, shown and reset
    assert {e["gateway"] for e in site.scoped.json("quota", "show", "--consumer", "acme")} == {
        "internal"
    }
    outside = site.scoped.run("quota", "show", "--gateway", "public", check=False)
    assert outside.returncode == 9 and "outside its scope" in outside.stderr
    site.scoped.run("quota", "reset", "--consumer", "acme", "--yes")
    assert _used(site.cli, "--consumer", "acme") == {
        ("inner", "month"): 0, ("users-api", "day"): 120, ("users-api", "month"): 0}  # fmt: skip

    # a viewer may not reset; bad input and unknown names as locally
    denied = site.viewer.run("quota", "reset", "--consumer", "acme", "--yes", check=False)
    assert denied.returncode == 9 and len(denied.stderr.strip().splitlines()) == 1
    assert "may not reset quotas" in denied.stderr
    for args, code in (
        (("quota", "show", "--consumer", "nobody"), 3),
        (("quota", "reset", "--consumer", "nobody", "--yes"), 3),
        (("quota", "reset", "--consumer", "acme", "--unit", "year", "--yes"), 2),
        (("analytics", "export", "--since", "1h"), 2),
        (("analytics", "export", "--since", "1h", "--until", "2h"), 2),
    ):
        proc = site.editor.run(*args, check=False)
        assert proc.returncode == code, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert _used(site.cli, "--consumer", "acme")[("users-api", "day")] == 120

    # the editor's reset, recorded with the token's name
    out = json.loads(
        site.editor.run(
            "quota", "reset", "--consumer", "acme", "--unit", "day", "--yes", "-o", "json"
        ).stdout
    )
    assert out["reset"] == 1 and out["counters"][0]["used"] == 120
    assert _used(site.cli, "--consumer", "acme")[("users-api", "day")] == 0
    actors = [e["node"] for e in site.admin.json("events") if e["kind"] == "quota_reset"]
    assert actors == ["inside", "deployer"]

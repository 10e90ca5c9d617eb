"""Quota counters on SQLite: budget taken atomically, never beyond the limit; calendar windows."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from controlplane.policy.ratelimit import Limit, Per
from controlplane.quota.calendar import check_time_zone, http_date, window
from controlplane.quota.counters import Ask, CounterKey, QuotaCounters
from controlplane.store import Store
from controlplane.store.db import make_engines


@pytest.fixture
def counters(tmp_path: Path) -> QuotaCounters:
    db = tmp_path / "gw.db"
    Store(str(db), create=True).close()  # created and migrated
    writer, _ = make_engines(f"sqlite:///{db}")
    return QuotaCounters(writer)


def _key(route: str = "r", key: str = "consumer:acme", start: int = 0) -> CounterKey:
    return CounterKey("gw", route, key, "day", start)


def test_reserve_never_hands_out_more_than_the_limit(counters: QuotaCounters) -> None:
    k = _key()
    assert counters.reserve([Ask(k, 600, 1000, 86400)]) == [600]
    # two asks in one call share what is left, in order
    assert counters.reserve([Ask(k, 300, 1000, 86400), Ask(k, 300, 1000, 86400)]) == [300, 100]
    assert counters.reserve([Ask(k, 1, 1000, 86400)]) == [0]
    assert counters.used([k]) == {k: 1000}


def test_add_gives_back_and_counts_apart_per_window_and_key(counters: QuotaCounters) -> None:
    a, b, c = _key(), _key(key="consumer:other"), _key(start=86400)
    counters.add({a: (10, 86400), b: (3, 86400), c: (7, 172800)})
    assert counters.add({a: (-4, 86400), b: (-9, 86400)}) == {a: 6, b: 0}
    assert counters.used([a, b, c, _key(route="x")]) == {a: 6, b: 0, c: 7, _key(route="x"): 0}
    open_now = {(r.key, r.window_start) for r in counters.rows(at=100)}
    assert open_now == {("consumer:acme", 0), ("consumer:other", 0)}


def test_reset_forgets_only_the_open_windows_it_names(counters: QuotaCounters) -> None:
    a, b = _key(), _key(key="consumer:other")
    counters.add({a: (10, 86400), b: (5, 86400)})
    assert counters.reset(at=100, key="consumer:acme") == 1
    assert counters.used([a, b]) == {a: 0, b: 5}
    assert counters.reset(at=90000, key="consumer:other") == 0  # that window has ended
    assert counters.prune(now=86400 * 3) == 1


def test_calendar_windows_follow_the_zone() -> None:
    noon = datetime(2026, 3, 29, 12, tzinfo=UTC).timestamp()  # Paris: 23 h day (DST)
    start, end = window(Per.day, noon, "Europe/Paris")
    assert (end - start) == 23 * 3600
    assert datetime.fromtimestamp(start, ZoneInfo("Europe/Paris")).hour == 0
    start, end = window(Per.week, datetime(2026, 12, 4, tzinfo=UTC).timestamp())
    assert datetime.fromtimestamp(start, UTC) == datetime(2026, 11, 30, tzinfo=UTC)  # Monday
    start, end = window(Per.month, datetime(2026, 12, 31, 23, tzinfo=UTC).timestamp())
    assert (start, end) == (
        int(datetime(2026, 12, 1, tzinfo=UTC).timestamp()),
        int(datetime(2027, 1, 1, tzinfo=UTC).timestamp()),
    )
    # Santiago skips 00:00 on 2026-09-06: that day starts at 01:00 and lasts 23 hours
    tz = ZoneInfo("America/Santiago")
    start, end = window(Per.day, datetime(2026, 9, 6, 12, tzinfo=tz).timestamp(), tz.key)
    assert datetime.fromtimestamp(start, tz).hour == 1 and end - start == 23 * 3600
    assert http_date(end) == "Mon, 07 Sep 2026 03:00:00 GMT"


@pytest.mark.parametrize("name", ["Mars/Olympus", "../etc/passwd", "", " UTC"])
def test_unknown_time_zones_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="time zone"):
        check_time_zone(name)


def test_a_calendar_quota_has_no_burst() -> None:
    with pytest.raises(ValueError, match="burst: a per-month quota has no burst"):
        Limit(requests=100, per=Per.month, burst=200)
    assert Limit(requests=100, per=Per.week).per is Per.week

"""One duration grammar for policy fields and every command-line option that takes a duration."""

from __future__ import annotations

import pytest

from controlplane.cli.analytics import parse_time
from controlplane.cli.wait import parse_timeout
from controlplane.durations import parse_duration_ms, parse_duration_seconds
from controlplane.errors import PolicyInvalid, WaitFailed
from controlplane.policy.bounds import parse_duration


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("250ms", 250),
        ("1.5s", 1500),
        ("2m", 120_000),
        ("1h30m", 5_400_000),
        ("7d", 604_800_000),
        ("1w", 604_800_000),
        ("1m30s", 90_000),
        ("1s500ms", 1500),
        ("5", 5000),
        ("0.25", 250),
        (" 30s ", 30_000),
        ("5 s", 5000),
    ],
)
def test_grammar(text: str, ms: float) -> None:
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize(
    "text", ["", "s", "5 5s", "5x", "-5s", "1.s", "1e3", "1h 30m", "5S", "9" * 16 + "s"]
)
def test_not_a_duration(text: str) -> None:
    assert parse_duration_ms(text) is None


def test_every_consumer_reads_the_same_grammar() -> None:
    # policy fields, --wait, analytics --since and key --expires all take 1h30m and 7d
    assert parse_duration("1h30m") == "5400s"
    assert parse_duration("1d") == "86400s"
    assert parse_timeout("1m30s") == 90
    assert parse_time("1h30m", "--since", now=10_000.0) == 10_000.0 - 5400
    assert parse_time("1.5s", "--since", now=10.0) == 8.5
    with pytest.raises(WaitFailed, match="--wait"):
        parse_timeout("soon")
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("1h 30m")


def test_bounds_name_the_option() -> None:
    assert parse_duration_seconds("2m", "--step", min_s=60) == 120
    with pytest.raises(ValueError, match=r"--step: '30s' is out of range: must be from 1m"):
        parse_duration_seconds("30s", "--step", min_s=60)
    with pytest.raises(ValueError, match=r"--step: 'x' is not a duration; use e.g."):
        parse_duration_seconds("x", "--step")
    with pytest.raises(PolicyInvalid, match="--since"):
        parse_time("yesterday-ish", "--since")
    # a bare number is a date for --since (ISO 8601 basic format), not seconds ago
    assert parse_time("20261203", "--since") == 1796256000.0


def test_expiry_and_since_read_the_same_grammar() -> None:
    """Credentials' --expires (API keys, tokens, the admin API) and --since (audit) take the
    one duration grammar, or an ISO 8601 time; the error names the option."""
    from datetime import UTC, datetime

    from controlplane.cli.history import parse_since
    from controlplane.cli.tokens import parse_expiry
    from controlplane.durations import expiry, since
    from controlplane.errors import PolicyInvalid

    now = 1_800_000_000.0
    assert expiry("1h30m", "--expires", now) == now + 5400
    assert expiry("90d", "--expires", now) == now + 90 * 86400
    assert since("1.5h", "--since", now) == now - 5400
    iso = "2030-01-02T03:04:05"
    assert expiry(iso, "--expires", now) == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()
    for bad, why in (("30s", "from 1m"), ("36501d", "from 1m"), ("soon", "neither"),
                     ("2001-01-01", "in the past")):  # fmt: skip
        with pytest.raises(ValueError, match=f"--expires: .*{why}"):
            expiry(bad, "--expires", now)
    with pytest.raises(PolicyInvalid, match="--expires"):
        parse_expiry("tomorrow-ish")
    assert parse_expiry("2h", now) == now + 7200
    with pytest.raises(PolicyInvalid, match="--since"):
        parse_since("last week")
    assert parse_since(None) is None

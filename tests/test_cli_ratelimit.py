"""``gatewayctl ratelimit``: set, off, inherit, list; bad input writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.harness import Cli
from tests.test_cli import GOOD, _state


@pytest.fixture
def loaded(tmp_path: Path) -> Cli:
    cli = Cli(db=str(tmp_path / "gateway.db"))
    cli.run("apply", "-f", "-", input=GOOD)
    return cli


def _listed(cli: Cli) -> list[dict[str, object]]:
    return json.loads(cli.run("-o", "json", "ratelimit", "list").stdout)  # type: ignore[no-any-return]


def test_set_off_inherit_and_list(loaded: Cli) -> None:
    loaded.run("ratelimit", "set", "--gateway", "public", "--key", "client_ip",
               "--limit", "100/minute:150")  # fmt: skip
    loaded.run("ratelimit", "set", "--route", "users-api", "--limit", "10/second")
    loaded.run("ratelimit", "off", "--route", "orders-canary")
    assert _listed(loaded) == [
        {"target": "gateway/public", "key": "client_ip", "limits": "100/minute (burst 150)",
         "plans": False},
        {"target": "route/orders-canary", "key": "none", "limits": "-", "plans": False},
        {"target": "route/users-api", "key": "consumer", "limits": "10/second", "plans": True},
    ]  # fmt: skip
    route = json.loads(loaded.run("-o", "json", "route", "get", "users-api").stdout)
    assert route["rate_limit"]["limits"] == [{"requests": 10, "per": "second"}]
    loaded.run("ratelimit", "inherit", "--route", "users-api")
    loaded.run("ratelimit", "off", "--gateway", "public")
    assert [r["target"] for r in _listed(loaded)] == ["route/orders-canary"]


BAD = {
    "unknown route": (["ratelimit", "set", "--route", "nope", "--limit", "5/minute"],
                      "route 'nope' does not exist"),
    "unknown gateway": (["ratelimit", "off", "--gateway", "nope"], "gateway 'nope' does not exist"),
    "negative rate": (["ratelimit", "set", "--route", "users-api", "--limit", "-5/minute"],
                      "requests: -5 is out of range: must be an integer from 1 to 1000000000"),
    "no target": (["ratelimit", "set", "--limit", "5/minute"], "exactly one of --route"),
    "two targets": (["ratelimit", "set", "--route", "users-api", "--gateway", "public",
                     "--limit", "5/minute"], "exactly one of --route"),
    "nothing limited": (["ratelimit", "set", "--route", "users-api", "--key", "client_ip"],
                        "give --limit"),
    "bad key": (["ratelimit", "set", "--route", "users-api", "--key", "cookie",
                 "--limit", "5/minute"], "is not a key"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_rate_limit_command_changes_nothing(loaded: Cli, case: str) -> None:
    args, expected = BAD[case]
    before = _state(loaded)
    proc = loaded.run(*args, check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], proc.stderr
    assert _state(loaded) == before

"""Aggregate routes through the CLI without Envoy: bad input is one line and writes nothing;
good input round-trips through export and shows in ``route list``."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.harness import Cli
from tests.test_cli import _state

GOOD = """
gateways:
  - {name: public, port: 8080}
clusters:
  - {name: users, endpoints: ["127.0.0.1:9001"]}
  - {name: orders, endpoints: ["127.0.0.1:9002"]}
routes:
  - name: profile
    gateway: public
    match: {path_regex: "^/profile/(?P<id>[0-9]+)$"}
    aggregate:
      on_error: partial
      parts:
        - {name: user, cluster: users, path: "/users/{id}", timeout: 300ms}
        - {name: orders, cluster: orders, path: "/orders?user={id}", timeout: 500ms}
"""


@pytest.fixture
def loaded(tmp_path: Path) -> Cli:
    cli = Cli(db=str(tmp_path / "gateway.db"))
    cli.run("apply", "-f", "-", input=GOOD)
    return cli


BAD = {
    "unknown cluster in a part": (
        GOOD.replace("cluster: orders, path", "cluster: nobody, path"),
        "route 'profile': cluster 'nobody' does not exist",
    ),
    "duplicate part names": (
        GOOD.replace("{name: orders, cluster", "{name: user, cluster"),
        "routes[0] 'profile': aggregate: parts[1]: part name 'user' is used twice",
    ),
    "zero timeout": (
        GOOD.replace("timeout: 300ms", "timeout: 0s"),
        "routes[0] 'profile': aggregate.parts[0].timeout: '0s' is out of range: "
        "must be a duration from 1ms to 8760h",
    ),
    "placeholder without a group": (
        GOOD.replace("/users/{id}", "/users/{uid}"),
        "aggregate.parts[0].path: {uid} match.path_regex has no group (?P<uid>...)",
    ),
    "reserved part name": (
        GOOD.replace("{name: orders, cluster", "{name: errors, cluster"),
        "aggregate.parts[1].name: 'errors' is reserved",
    ),
    "aggregate and cluster": (
        GOOD.replace("    aggregate:", "    cluster: users\n    aggregate:"),
        "action: set exactly one of",
    ),
    "timeout on an aggregate route": (
        GOOD.replace("    aggregate:", "    timeout: 5s\n    aggregate:"),
        "timeout: only applies to routes that forward to a cluster",
    ),
    "aggregation port equal to the gateway's": (
        GOOD.replace("port: 8080}", "port: 8080, aggregation_port: 8080}"),
        "aggregation_port: must differ from the gateway's other ports",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_aggregate_changes_nothing(loaded: Cli, case: str) -> None:
    text, expected = BAD[case]
    before = _state(loaded)
    proc = loaded.run("apply", "-f", "-", input=text, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert expected in lines[0], lines[0]
    assert _state(loaded) == before


def test_aggregate_round_trips_and_lists(loaded: Cli, tmp_path: Path) -> None:
    exported = loaded.run("export").stdout
    path = tmp_path / "exported.yaml"
    path.write_text(exported)
    assert loaded.run("apply", "-f", str(path)).stderr.startswith("no changes")
    listed = loaded.run("route", "list").stdout
    assert "aggregate" in listed and "user:users," in listed and "orders:orders" in listed
    # a single-cluster action replaces the aggregate
    loaded.run("route", "update", "profile", "--cluster", "users")
    assert "aggregate" not in loaded.json("route", "get", "profile")

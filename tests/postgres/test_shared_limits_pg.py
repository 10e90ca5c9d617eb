"""A shared budget with two controllers on one PostgreSQL, each serving some of the Envoys:
both quota services lease from the same quota_counters rows, so the fleet still admits the
budget, whatever the split of traffic (ADR 0051)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import pytest

from controlplane.demo.echo import EchoServer
from controlplane.envoy_launcher import free_port

from ..e2e.harness import Cli, Controller, Envoy
from ..e2e.test_ratelimit_fleet import EcSigner
from ..e2e.test_ratelimit_shared import apply, bearer, pinned_connections, policy, spread

pytestmark = pytest.mark.e2e


@pytest.fixture
def fleet(pg_url: str, tmp_path: Path) -> Iterator[tuple[Cli, list[Controller], int, int]]:
    cli = Cli(db=pg_url)
    with ExitStack() as cleanup, ThreadPoolExecutor(2) as pool:
        backend = EchoServer("alpha").start()
        cleanup.callback(backend.stop)
        dirs = [tmp_path / "a", tmp_path / "b"]
        for d in dirs:
            d.mkdir()
        controllers = [Controller(cli, d) for d in dirs]
        for c in controllers:
            cleanup.callback(c.stop)
        list(pool.map(lambda c: c.start(), controllers))
        yield cli, controllers, backend.port, free_port()


def test_two_controllers_share_one_budget(  # type: ignore[no-untyped-def]
    fleet, tmp_path
) -> None:
    cli, controllers, backend, port = fleet
    signer = EcSigner()
    apply(cli, tmp_path, policy(port, backend, signer, "shared"))
    # the busy Envoy on one controller, the two others on the second
    on = [controllers[0], controllers[1], controllers[1]]
    envoys = [
        Envoy("public", f"public-{i}", c.xds_port, tmp_path / ("a" if i == 0 else "b"))
        for i, c in enumerate(on)
    ]
    try:
        cli.run("route", "update", "api", "--timeout", "5s", "--wait")
        conns = pinned_connections(port, envoys)
        statuses = spread(conns, bearer(signer, "acme"), 300, 40.0)
        admitted = statuses.count(200)
        print(f"\ntwo controllers, 80/15/5 split: {admitted} of 300 admitted (budget 100)")
        assert 95 <= admitted <= 105, admitted
    finally:
        for e in envoys:
            e.stop()

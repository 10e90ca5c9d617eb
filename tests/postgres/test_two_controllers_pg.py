"""Two controllers sharing one PostgreSQL database, each with an Envoy of the same gateway.

The CLI talks to neither controller: it commits to the database, both controllers notice the
revision, and ``--wait`` returns only when the proxies of both have acknowledged it.
"""

from __future__ import annotations

import json
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any, cast

import pytest

from controlplane.demo.echo import EchoServer
from controlplane.envoy_launcher import free_port, stats
from controlplane.store import Store

from ..e2e.harness import Cli, Controller, Envoy, backend_of, wait_until

pytestmark = pytest.mark.e2e

POLICY = """\
gateways:
  # a limit its replicas divide: only then is the membership served as counted
  - name: public
    port: {port}
    address: 127.0.0.1
    rate_limit: {{key: none, limits: [{{requests: 10000, per: second}}]}}
clusters:
  - {{name: alpha, endpoints: ["127.0.0.1:{alpha}"]}}
  - {{name: beta, endpoints: ["127.0.0.1:{beta}"]}}
"""


def _controller_id(controller: Controller) -> str:
    url = f"http://127.0.0.1:{controller.health_port}/status"
    with urllib.request.urlopen(url, timeout=2) as resp:
        return str(json.load(resp)["controller"])


def _upstream_requests(envoy: Envoy, cluster: str) -> int:
    found = stats(envoy.admin_port, rf"^cluster\.{cluster}\.upstream_rq_total$")
    return found.get(f"cluster.{cluster}.upstream_rq_total", 0)


def _spread(port: int, path: str, count: int = 40) -> Counter[str | int]:
    """Requests on new connections; the kernel spreads them over both Envoys (SO_REUSEPORT)."""
    return Counter(backend_of(port, path) for _ in range(count))


@pytest.fixture
def stack(pg_url: str, tmp_path: Path) -> Iterator[tuple[Cli, list[Controller], list[Envoy], int]]:
    cli = Cli(db=pg_url)
    gateway_port = free_port()
    with ExitStack() as cleanup, ThreadPoolExecutor(2) as pool:
        backends = {name: EchoServer(name).start() for name in ("alpha", "beta")}
        for server in backends.values():
            cleanup.callback(server.stop)
        dirs = [tmp_path / "a", tmp_path / "b"]
        for d in dirs:
            d.mkdir()
        controllers = [Controller(cli, d) for d in dirs]
        for c in controllers:
            cleanup.callback(c.stop)
        # Started together on an empty database: both migrate, one waits for the other.
        list(pool.map(lambda c: c.start(), controllers))

        cli.run(
            "apply",
            "-f",
            "-",
            input=POLICY.format(
                port=gateway_port, alpha=backends["alpha"].port, beta=backends["beta"].port
            ),
        )

        def envoy(i: int) -> Envoy:
            return Envoy("public", f"public-{i + 1}", controllers[i].xds_port, dirs[i])

        futures = [pool.submit(envoy, i) for i in range(2)]
        envoys = []
        for future in futures:  # collect all before raising, so each started one is stopped
            try:
                envoys.append(future.result())
                cleanup.callback(envoys[-1].stop)
            except Exception:
                continue
        assert len(envoys) == 2, [f.exception() for f in futures]
        yield cli, controllers, envoys, gateway_port


def _replica_members(envoy: Envoy) -> int:
    """Members of the local cluster as this Envoy sees them (what rate limits divide by)."""
    url = f"http://127.0.0.1:{envoy.admin_port}/clusters"
    with urllib.request.urlopen(url, timeout=2) as resp:
        lines = resp.read().decode().splitlines()
    return len({ln.split("::")[1] for ln in lines if ln.startswith("gateway_replicas::")
                and "::health_flags::" in ln})  # fmt: skip


def test_two_controllers_serve_one_gateway(
    stack: tuple[Cli, list[Controller], list[Envoy], int],
) -> None:
    cli, controllers, envoys, port = stack
    ids = [_controller_id(c) for c in controllers]
    assert ids[0] != ids[1]
    # Both proxies are known before --wait, so it has two proxies to wait for.
    store = Store(cli.db, migrate=False)
    try:

        def connected() -> list[tuple[str, str, bool]]:
            return sorted(
                (p.node_id, p.controller, p.connected) for p in cast(Any, store.proxies())
            )

        wait_until(
            lambda: connected() == [("public-1", ids[0], True), ("public-2", ids[1], True)], 10
        )
    finally:
        store.close()

    cli.run(
        "route",
        "add",
        "users",
        "--gateway",
        "public",
        "--path-prefix",
        "/users",
        "--cluster",
        "alpha",
        "--wait",
    )
    revision = cli.json("status")["revision"]
    # the route inherits the gateway's limit; each controller counts the other's Envoy too
    # (read from the database on its heartbeat), so the budget is divided by 2, not 1, on
    # both Envoys
    wait_until(lambda: all(_replica_members(e) == 2 for e in envoys), 15)
    # --wait returned: every request, whichever Envoy accepts it, already sees the route.
    assert _spread(port, "/users/1") == {"alpha": 40}
    assert all(_upstream_requests(e, "alpha") > 0 for e in envoys), "one Envoy got no request"

    before = [_upstream_requests(e, "beta") for e in envoys]
    cli.run("route", "update", "users", "--cluster", "beta", "--wait")
    assert _spread(port, "/users/2") == {"beta": 40}
    after = [_upstream_requests(e, "beta") for e in envoys]
    assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)

    status = cli.json("status")
    assert status["revision"] == revision + 1
    assert sorted(
        (c["id"], c["alive"], c["built_revision"]) for c in status["controllers"]
    ) == sorted((i, True, revision + 1) for i in ids)
    proxies = {p["node"]: p for p in status["proxies"]}
    assert set(proxies) == {"public-1", "public-2"}
    for node, controller_id in zip(("public-1", "public-2"), ids, strict=True):
        proxy = proxies[node]
        assert proxy["gateway"] == "public" and proxy["controller"] == controller_id
        assert proxy["connected"] and proxy["in_sync"], proxy
        assert proxy["acked_revision"] == status["revision"]
        assert proxy["last_nack"] is None
    assert status["gateways"]["public"]["error"] is None

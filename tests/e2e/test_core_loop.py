"""The core loop through the real CLI, the real controller and a real Envoy."""

from __future__ import annotations

import socket
import time

import pytest

from controlplane.envoy_launcher import free_port, stats
from controlplane.policy import Route
from controlplane.store import Store

from .harness import KeepAliveLoad, backend_of, wait_until

pytestmark = pytest.mark.e2e


def _setup(cli, backends, gateway_port: int) -> None:  # type: ignore[no-untyped-def]
    cli.add_gateway("public", gateway_port)
    for name, server in backends.items():
        cli.run("cluster", "add", name, "--endpoint", f"127.0.0.1:{server.port}")


def test_route_lifecycle_without_restart(cli, controller, envoy_factory, backends, gateway_port):
    _setup(cli, backends, gateway_port)
    envoy = envoy_factory("public")
    pid, uptime = envoy.pid, envoy.uptime()

    cli.add_route("users", "public", "/users", "alpha", "--wait")
    # --wait returned: the very first request must already see the route
    assert backend_of(gateway_port, "/users/1") == "alpha"

    cli.run("route", "update", "users", "--cluster", "beta", "--wait")
    assert backend_of(gateway_port, "/users/1") == "beta"

    cli.run("route", "delete", "users", "--wait")
    assert backend_of(gateway_port, "/users/1") == 404

    time.sleep(1.1)  # uptime has a resolution of one second
    info = envoy.info()
    assert envoy.pid == pid and envoy.proc.poll() is None
    assert int(info["uptime_current_epoch"].rstrip("s")) > uptime
    assert info["command_line_options"]["restart_epoch"] == 0
    rds = stats(envoy.admin_port, r"rds\.public\.update_success$")
    assert rds["http.public.rds.public.update_success"] >= 3  # three pushes, one process

    status = cli.json("status")
    [proxy] = status["proxies"]
    assert proxy["connected"] and proxy["in_sync"]
    assert proxy["acked_revision"] == status["revision"]


def test_no_failed_request_during_200_changes(
    cli, controller, envoy_factory, backends, gateway_port
):
    _setup(cli, backends, gateway_port)
    cli.add_route("stable", "public", "/stable", "alpha", "--wait")
    envoy_factory("public")
    store = Store(cli.db)
    with KeepAliveLoad(gateway_port, ["/stable/x"] * 20) as load:
        time.sleep(0.3)
        for i in range(200):
            # churn: create, move between clusters, and delete other routes; also touch the
            # stable route itself (timeout) so its own RouteConfiguration entry is replaced
            name = f"churn-{i % 20}"
            if i % 3 == 0:
                store.apply_objects(
                    [
                        Route(
                            name=name,
                            gateways=["public"],
                            match={"path_prefix": f"/churn/{i % 20}"},
                            cluster="beta" if i % 2 else "alpha",
                        )
                    ]
                )
            elif i % 3 == 1:
                store.apply_objects(
                    [
                        Route(
                            name="stable",
                            gateways=["public"],
                            match={"path_prefix": "/stable"},
                            cluster="alpha",
                            timeout=f"{10 + i}s",
                        )
                    ]
                )
            else:
                try:
                    store.delete("route", f"churn-{(i - 2) % 20}")
                except Exception:
                    store.apply_objects(
                        [
                            Route(
                                name=name,
                                gateways=["public"],
                                cluster="alpha",
                                match={"path": f"/c/{i}"},
                            )
                        ]
                    )
            time.sleep(0.01)
        last = store.revision()
        wait_until(lambda: all(p.acked_revision >= last for p in store.proxies()), 10)
        time.sleep(0.2)
    outcomes = load.outcomes
    assert outcomes["2xx"] > 1000, outcomes
    assert set(outcomes) == {"2xx"}, f"failed requests during changes: {outcomes}"


def test_controller_outage_and_restart(cli, controller, envoy_factory, backends, gateway_port):
    _setup(cli, backends, gateway_port)
    cli.add_route("a", "public", "/a", "alpha", "--wait")
    envoy = envoy_factory("public")
    pid = envoy.pid

    controller.kill()
    for _ in range(20):  # Envoy serves the last accepted config while the controller is away
        assert backend_of(gateway_port, "/a") == "alpha"
        time.sleep(0.05)
    # policy changes while the controller is down are committed to the database
    cli.run("route", "add", "b", "--gateway", "public", "--path-prefix", "/b", "--cluster", "beta")

    controller.start()
    wait_until(lambda: backend_of(gateway_port, "/b") == "beta", 10)
    assert backend_of(gateway_port, "/a") == "alpha"  # nothing rolled back
    assert envoy.pid == pid and envoy.proc.poll() is None
    assert envoy.info()["command_line_options"]["restart_epoch"] == 0
    cli.run("route", "update", "a", "--cluster", "beta", "--wait")
    assert backend_of(gateway_port, "/a") == "beta"


def test_rejected_change_is_reported(cli, controller, envoy_factory, backends, gateway_port):
    _setup(cli, backends, gateway_port)
    internal_port = free_port()
    cli.add_gateway("internal", internal_port)
    cli.run(
        "route",
        "add",
        "good",
        "--gateway",
        "public",
        "--gateway",
        "internal",
        "--path-prefix",
        "/good",
        "--cluster",
        "alpha",
        "--wait",
    )
    envoy_factory("public", "pub-1")
    envoy_factory("internal", "int-1")

    # Valid policy that only the proxy can refuse: the new port is taken on its host.
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        proc = cli.run(
            "gateway", "update", "public", "--port", str(taken), "--wait=10s", check=False
        )
        assert proc.returncode == 7, proc.stderr
        error = proc.stderr.strip().splitlines()[-1]
        assert error.startswith("error: proxy pub-1 of gateway 'public' rejected Listener")
        assert "(caused by gateway public)" in error and "Address already in use" in error
        # the write stays committed, and the first line says as which revision (a local
        # command before it waits; through the admin API, which waited, with the error)
        committed = proc.stderr.strip().splitlines()[:-1]

        status = cli.json("status")
        assert len(committed) == 1 and f"(revision {status['revision']})" in committed[0]
        proxies = {p["node"]: p for p in status["proxies"]}
        nack = proxies["pub-1"]["last_nack"]
        assert nack["type"] == "Listener" and nack["objects"] == "gateway public"
        assert nack["revision"] == status["revision"]
        assert not proxies["pub-1"]["in_sync"]
        assert proxies["int-1"]["in_sync"] and proxies["int-1"]["last_nack"] is None

        # the refusing proxy keeps serving its earlier listener and routes ...
        assert backend_of(gateway_port, "/good") == "alpha"
        # ... and the other gateway keeps taking changes
        cli.add_route("more", "internal", "/more", "beta", "--wait")
        assert backend_of(internal_port, "/more") == "beta"

    cli.run("gateway", "update", "public", "--port", str(gateway_port), "--wait")
    status = cli.json("status")
    assert all(p["in_sync"] for p in status["proxies"])
    assert backend_of(gateway_port, "/good") == "alpha"


def test_a_route_moving_off_its_only_cluster_never_fails(
    cli, controller, envoy_factory, backends, gateway_port
):
    """Make-before-break when a move leaves a cluster unused: the route moves first, the
    cluster goes after (and when dropping is the only cluster change, Envoy gets no CDS
    response before the routes). Under load on that route, 40 moves: no request fails."""
    _setup(cli, backends, gateway_port)
    cli.add_route("moving", "public", "/moving", "alpha", "--wait")
    envoy_factory("public")
    moves_off_its_only_cluster_never_fail(cli, gateway_port)


def moves_off_its_only_cluster_never_fail(cli, gateway_port: int) -> None:  # type: ignore[no-untyped-def]
    """40 moves of route ``moving`` between alpha and beta (each leaving the other unused)
    under keep-alive load on it: no request fails."""
    store = Store(cli.db)
    with KeepAliveLoad(gateway_port, ["/moving/x"] * 10) as load:
        load.more(20)
        for i in range(40):
            target = "beta" if i % 2 == 0 else "alpha"  # the other one is then unused
            store.apply_objects(
                [
                    Route(
                        name="moving",
                        gateways=["public"],
                        match={"path_prefix": "/moving"},
                        cluster=target,
                    )
                ]
            )
            revision = store.revision()
            wait_until(lambda r=revision: all(p.acked_revision >= r for p in store.proxies()), 20)
            load.more(10)
    assert load.outcomes["2xx"] > 400, load.outcomes
    assert set(load.outcomes) == {"2xx"}, f"failed requests during the moves: {load.outcomes}"

"""Delta ADS with a real Envoy 1.40 whose bootstrap (envoy/bootstrap.yaml, rendered by
run-envoy.sh with XDS_API_TYPE=DELTA_GRPC) opens DeltaAggregatedResources: routes added,
changed and removed live through the real CLI, a route moving off its only cluster under
keep-alive load with no failed request, and a controller restart resynced without
rebuilding what Envoy runs."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from controlplane.envoy_launcher import free_port, stats
from controlplane.store import Store

from .harness import Cli, Controller, Envoy, KeepAliveLoad, backend_of, wait_until
from .test_core_loop import moves_off_its_only_cluster_never_fail

pytestmark = pytest.mark.e2e


@pytest.fixture
def delta_envoy(controller: Controller, tmp_path: Path) -> Iterator[Callable[[str], Envoy]]:
    started: list[Envoy] = []

    def make(gateway: str = "public") -> Envoy:
        envoy = Envoy(
            gateway,
            f"{gateway}-delta-{len(started) + 1}",
            controller.xds_port,
            tmp_path,
            xds_api_type="DELTA_GRPC",
        )
        started.append(envoy)
        return envoy

    yield make
    for envoy in started:
        envoy.stop()


def _setup(cli: Cli, backends, gateway_port: int) -> None:  # type: ignore[no-untyped-def]
    cli.add_gateway("public", gateway_port)
    for name, server in backends.items():
        cli.run("cluster", "add", name, "--endpoint", f"127.0.0.1:{server.port}")


def _counters(envoy: Envoy) -> dict[str, int]:
    return stats(envoy.admin_port, r"^(cluster_manager|listener_manager|http\.public\.rds)\.")


def _delta_streams(controller: Controller) -> int:
    path = controller.log_dir / f"controller-{controller.starts}.log"
    return path.read_text(errors="replace").count("delta stream open")


def test_routes_live_over_delta_and_a_route_change_moves_only_routes(
    cli, controller, delta_envoy, backends, gateway_port
):
    _setup(cli, backends, gateway_port)
    envoy = delta_envoy("public")
    pid = envoy.pid
    cli.add_route("users", "public", "/users", "alpha", "--wait")
    assert backend_of(gateway_port, "/users/1") == "alpha"
    # both clusters stay in use when users moves
    cli.add_route("stay", "public", "/stay", "alpha", "--wait")
    cli.add_route("orders", "public", "/orders", "beta", "--wait")
    assert backend_of(gateway_port, "/orders/1") == "beta"
    assert _delta_streams(controller) == 1  # the bootstrap's delta stream, no SotW one

    before = _counters(envoy)
    cli.run("route", "update", "users", "--cluster", "beta", "--wait")
    assert backend_of(gateway_port, "/users/1") == "beta"
    after = _counters(envoy)
    # one RouteConfiguration travelled; no CDS, no LDS update reached Envoy
    assert after["http.public.rds.public.update_success"] == (
        before["http.public.rds.public.update_success"] + 1
    )
    for name in ("cluster_manager.cds.update_attempt", "listener_manager.lds.update_attempt"):
        assert after[name] == before[name], name

    cli.run("route", "delete", "users", "--wait")
    assert backend_of(gateway_port, "/users/1") == 404
    assert envoy.pid == pid and envoy.proc.poll() is None
    [proxy] = cli.json("status")["proxies"]
    assert proxy["connected"] and proxy["in_sync"]


def test_a_route_moving_off_its_only_cluster_never_fails_over_delta(
    cli, controller, delta_envoy, backends, gateway_port
):
    """Make-before-break over delta: a new cluster's endpoints before the routes, a dropped
    cluster removed after them. Under load on that route, 40 moves: no request fails."""
    _setup(cli, backends, gateway_port)
    cli.add_route("moving", "public", "/moving", "alpha", "--wait")
    delta_envoy("public")
    moves_off_its_only_cluster_never_fail(cli, gateway_port)


def test_a_restarted_controller_resyncs_a_delta_envoy_with_only_what_changed(
    cli, controller, delta_envoy, backends, gateway_port
):
    _setup(cli, backends, gateway_port)
    cli.add_route("users", "public", "/users", "alpha", "--wait")
    cli.add_route("orders", "public", "/orders", "alpha", "--wait")
    envoy = delta_envoy("public")
    wait_until(lambda: backend_of(gateway_port, "/users/1") == "alpha", 20)
    controller.stop()
    # changed while the controller is down: Envoy keeps serving what it has
    cli.run("route", "update", "orders", "--cluster", "beta")
    assert backend_of(gateway_port, "/orders/1") == "alpha"
    before = _counters(envoy)
    controller.start()
    wait_until(lambda: backend_of(gateway_port, "/orders/1") == "beta", 30)
    assert backend_of(gateway_port, "/users/1") == "alpha"
    revision = Store(cli.db).revision()
    wait_until(lambda: all(p["in_sync"] for p in cli.json("status")["proxies"]), 20)
    [proxy] = [p for p in cli.json("status")["proxies"] if p["connected"]]
    assert proxy["acked_revision"] == revision
    time.sleep(1)
    after = _counters(envoy)
    # the reconnect named what Envoy had: only beta (now used by orders) was added, no
    # other cluster and no listener was rebuilt
    assert after["cluster_manager.cluster_added"] == before["cluster_manager.cluster_added"] + 1
    for name in (
        "cluster_manager.cluster_modified",
        "listener_manager.listener_added",
        "listener_manager.listener_modified",
    ):
        assert after[name] == before[name], name
    assert _delta_streams(controller) >= 1
    assert envoy.proc.poll() is None


def test_a_rejected_change_is_reported_and_a_fix_resyncs_over_delta(
    cli, controller, delta_envoy, backends, gateway_port
):
    """A listener Envoy refuses (its port is taken on the host): the NACK reaches the CLI
    and status with the object that caused it; the proxy keeps serving; the fix syncs."""
    _setup(cli, backends, gateway_port)
    cli.add_route("good", "public", "/good", "alpha", "--wait")
    delta_envoy("public")
    wait_until(lambda: backend_of(gateway_port, "/good") == "alpha", 20)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        proc = cli.run(
            "gateway", "update", "public", "--port", str(taken), "--wait=10s", check=False
        )
        assert proc.returncode == 7, proc.stderr
        error = proc.stderr.strip().splitlines()[-1]
        assert error.startswith("error: proxy public-delta-1 of gateway 'public' rejected")
        assert "(caused by gateway public)" in error and "Address already in use" in error
        status = cli.json("status")
        [proxy] = status["proxies"]
        assert proxy["last_nack"]["type"] == "Listener"
        assert proxy["last_nack"]["revision"] == status["revision"]
        assert not proxy["in_sync"]
        assert backend_of(gateway_port, "/good") == "alpha"  # still served
    cli.run("gateway", "update", "public", "--port", str(gateway_port), "--wait")
    [proxy] = cli.json("status")["proxies"]
    assert proxy["in_sync"]
    assert backend_of(gateway_port, "/good") == "alpha"


def test_a_changed_cluster_warms_at_once_over_delta(
    cli, controller, delta_envoy, backends, gateway_port
):
    """A changed EDS cluster warms until its endpoints come again: the stream sends them
    right after the CDS response, so no change waits for Envoy's 15 s fetch timeout and
    no request on the cluster fails meanwhile."""
    _setup(cli, backends, gateway_port)
    cli.add_route("users", "public", "/users", "alpha", "--wait")
    envoy = delta_envoy("public")
    wait_until(lambda: backend_of(gateway_port, "/users/1") == "alpha", 20)
    with KeepAliveLoad(gateway_port, ["/users/x"] * 5) as load:
        load.more(10)
        for i in range(6):
            modified = _counters(envoy)["cluster_manager.cluster_modified"]
            timeout = f"{2 + i % 2}s"
            cli.run("cluster", "update", "alpha", "--connect-timeout", timeout, "--wait")
            wait_until(
                lambda m=modified: _counters(envoy)["cluster_manager.cluster_modified"] > m, 10
            )
            # warmed within a few seconds (the fetch timeout would take 15)
            wait_until(lambda: stats(envoy.admin_port, "warming_clusters")[
                "cluster_manager.warming_clusters"] == 0, 5)  # fmt: skip
            load.more(10)
    assert set(load.outcomes) == {"2xx"}, f"failed requests during the changes: {load.outcomes}"
    # every warming ended with endpoints from the controller, none with Envoy's timeout
    timeouts = stats(envoy.admin_port, r"^cluster\.alpha\.init_fetch_timeout$")
    assert timeouts.get("cluster.alpha.init_fetch_timeout", 0) == 0, timeouts


def test_delta_envoys_over_mutual_tls_get_only_what_their_certificate_names(
    cli, backends, gateway_port, tmp_path, monkeypatch
):
    """The delta stream is authorised as the SotW one: a delta Envoy whose certificate
    names its gateway and node is served over mutual TLS; one claiming a gateway its
    certificate does not name gets nothing (PERMISSION_DENIED, logged by the controller)."""
    from .test_xds_mtls import Pki

    pki = Pki(tmp_path)
    monkeypatch.setenv("GATEWAY_XDS_CLIENT_CA", pki.ca_path)
    controller = Controller(
        cli, tmp_path, ("--xds-tls-cert", pki.server_cert, "--xds-tls-key", pki.server_key)
    )
    controller.start()
    envoys: list[Envoy] = []
    try:
        _setup(cli, backends, gateway_port)
        other_port = free_port()
        cli.add_gateway("other", other_port)
        cli.add_route("users", "public", "/users", "alpha", "--wait")
        cli.add_route("secret", "other", "/secret", "beta")
        xds = controller.xds_port
        good = Envoy(
            "public", "good", xds, tmp_path, xds_api_type="DELTA_GRPC", **pki.client("good")
        )
        envoys.append(good)
        wait_until(lambda: backend_of(gateway_port, "/users/1") == "alpha", 20)
        intruder = Envoy(
            "other",
            "intruder",
            xds,
            tmp_path,
            xds_api_type="DELTA_GRPC",
            wait=False,  # refused, it never gets a configuration to be ready with
            **pki.client("intruder", gateways=("public",)),
        )
        envoys.append(intruder)
        wait_until(lambda: "does not permit gateway 'other'" in controller.log(), 20)
        assert "delta stream open: node intruder" not in controller.log()
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", other_port)) != 0  # no listener for it
        [proxy] = cli.json("status")["proxies"]
        assert proxy["node"] == "good" and proxy["in_sync"]
    finally:
        for envoy in envoys:
            envoy.stop()
        controller.stop()

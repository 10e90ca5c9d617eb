"""Protocol behaviour seen from a real Envoy: what is pushed, what is not, and how fast."""

from __future__ import annotations

import time

import pytest

from controlplane.envoy_launcher import free_port, stats

from .harness import backend_of, wait_until

pytestmark = pytest.mark.e2e


def _counter(envoy, name: str) -> int:  # type: ignore[no-untyped-def]
    return stats(envoy.admin_port, name.replace(".", r"\.") + "$").get(name, 0)


def test_only_changed_resources_are_pushed(cli, controller, envoy_factory, backends, gateway_port):
    other_port = free_port()
    cli.add_gateway("public", gateway_port)
    cli.add_gateway("other", other_port)
    cli.run("cluster", "add", "alpha", "--endpoint", f"127.0.0.1:{backends['alpha'].port}")
    cli.add_route("a", "public", "/a", "alpha", "--wait")
    cli.add_route("o", "other", "/o", "alpha", "--wait")
    public = envoy_factory("public")
    time.sleep(0.3)
    before = {
        n: _counter(public, n)
        for n in (
            "cluster_manager.cds.update_attempt",
            "listener_manager.lds.update_attempt",
            "http.public.rds.public.update_attempt",
        )
    }

    # a change to another gateway reaches no Envoy of this one
    cli.run("route", "update", "o", "--timeout", "3s", "--wait")
    time.sleep(0.3)
    assert {n: _counter(public, n) for n in before} == before

    # a route change is one RDS push: no CDS, no LDS
    cli.run("route", "update", "a", "--timeout", "3s", "--wait")
    time.sleep(0.3)
    after = {n: _counter(public, n) for n in before}
    assert (
        after["http.public.rds.public.update_attempt"]
        == before["http.public.rds.public.update_attempt"] + 1
    )
    assert (
        after["cluster_manager.cds.update_attempt"] == before["cluster_manager.cds.update_attempt"]
    )
    assert (
        after["listener_manager.lds.update_attempt"]
        == before["listener_manager.lds.update_attempt"]
    )
    assert backend_of(gateway_port, "/a") == "alpha"


def test_cluster_change_does_not_wait_for_eds_timeout(
    cli, controller, envoy_factory, backends, gateway_port
):
    """Changing an EDS cluster re-warms it; Envoy must get its endpoints again at once."""
    cli.add_gateway("public", gateway_port)
    cli.run("cluster", "add", "alpha", "--endpoint", f"127.0.0.1:{backends['alpha'].port}")
    cli.add_route("a", "public", "/", "alpha", "--wait")
    envoy = envoy_factory("public")
    for lb in ("least_request", "random", "round_robin"):
        cds = _counter(envoy, "cluster_manager.cds.update_success")
        eds = _counter(envoy, "cluster.alpha.update_success")
        cli.run("cluster", "update", "alpha", "--lb", lb, "--wait=10s")
        # the CDS update was applied and the re-warming cluster's EDS request was answered
        # (a stalled one stays warming until its initial fetch times out)
        wait_until(lambda c=cds: _counter(envoy, "cluster_manager.cds.update_success") > c, 30)
        wait_until(lambda e=eds: _counter(envoy, "cluster.alpha.update_success") > e, 30)
        assert _counter(envoy, "cluster_manager.warming_clusters") == 0
        timeouts = stats(envoy.admin_port, r"init_fetch_timeout$")
        assert timeouts.get("cluster.alpha.init_fetch_timeout", -1) == 0, timeouts
        assert backend_of(gateway_port, "/x") == "alpha"
    # endpoints change: an EDS-only update, the cluster itself is untouched
    cds = _counter(envoy, "cluster_manager.cds.update_success")
    cli.run(
        "cluster", "update", "alpha", "--endpoint", f"127.0.0.1:{backends['beta'].port}", "--wait"
    )
    wait_until(lambda: backend_of(gateway_port, "/x") == "beta", 5)
    assert _counter(envoy, "cluster_manager.cds.update_success") == cds


def test_envoy_started_before_its_gateway_exists(
    cli, controller, envoy_factory, backends, gateway_port
):
    """An unknown gateway gets an empty configuration at once, not a 15 s start-up stall."""
    envoy = envoy_factory("later")
    # Envoy initialised on the controller's answers, not on its initial-fetch timeouts
    timeouts = stats(envoy.admin_port, r"init_fetch_timeout$")
    for name in ("cluster_manager.cds", "listener_manager.lds"):
        assert timeouts.get(f"{name}.init_fetch_timeout", -1) == 0, timeouts
    cli.add_gateway("later", gateway_port)
    cli.run("cluster", "add", "alpha", "--endpoint", f"127.0.0.1:{backends['alpha'].port}")
    cli.run("route", "add", "r", "--gateway", "later", "--cluster", "alpha", "--wait")
    assert backend_of(gateway_port, "/") == "alpha"
    # deleting the gateway removes its listener from the proxy
    cli.run("route", "delete", "r")
    cli.run("gateway", "delete", "later", "--wait")
    wait_until(lambda: _counter(envoy, "listener_manager.total_listeners_active") == 0, 5)

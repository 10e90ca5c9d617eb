"""Twenty real Envoys on one gateway, the controller restarted under them: every one resyncs
at the same revision without a rollback, and the replica list (EDS) they are sent stays
bounded - one response per stream where no limit divides by replicas (ADR 0048), not one
per proxy connecting."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from controlplane.envoy_launcher import wait_ready

from .harness import Cli, Controller, Envoy, backend_of, free_port, wait_until

FLEET = 20


def _eds_pushes(controller: Controller, gateway: str) -> float:
    """EDS responses the controller sent to the gateway's proxies since it started."""
    url = f"http://127.0.0.1:{controller.health_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        lines = resp.read().decode().splitlines()
    key = f'gateway_xds_pushes_total{{gateway="{gateway}",type="ClusterLoadAssignment"}}'
    return sum(float(ln.split(" ")[1]) for ln in lines if ln.startswith(key))


def _replica_members(envoy: Envoy) -> int:
    """Members of the local cluster as this Envoy sees them (what rate limits divide by)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{envoy.admin_port}/clusters", timeout=5) as r:
        lines = r.read().decode().splitlines()
    return len({ln.split("::")[1] for ln in lines if ln.startswith("gateway_replicas::")
                and "::health_flags::" in ln})  # fmt: skip


def _in_sync(cli: Cli) -> tuple[int, list[dict[str, object]]]:
    status = cli.json("status")
    return int(status["revision"]), list(status["proxies"])


def _all_in_sync(cli: Cli) -> bool:
    revision, proxies = _in_sync(cli)
    return len(proxies) == FLEET and all(
        p["connected"] and p["in_sync"] and p["acked_revision"] == revision and not p["hold"]
        for p in proxies
    )


def test_twenty_envoys_resync_after_a_controller_restart_with_bounded_eds(
    cli: Cli, controller: Controller, backends, tmp_path: Path
) -> None:
    public, limited = free_port(), free_port()
    cli.run("gateway", "add", "public", "--port", str(public), "--address", "127.0.0.1")
    cli.run("gateway", "add", "limited", "--port", str(limited), "--address", "127.0.0.1",
            "--rate-limit-key", "none", "--rate-limit", "100000/second")  # fmt: skip
    cli.run("cluster", "add", "alpha", "--endpoint", f"127.0.0.1:{backends['alpha'].port}")
    for gw in ("public", "limited"):
        cli.run("route", "add", f"all-{gw}", "--gateway", gw, "--cluster", "alpha")
    envoys = _start_fleet(controller, tmp_path)
    try:
        wait_until(lambda: _all_in_sync(cli), 90, interval=0.2)
        half = FLEET // 2
        # a gateway without limits: a constant list, so the EDS responses of a stream do not
        # depend on how many proxies connected after it (each connect re-sent the list to
        # all before: 10 proxies got 10 + 9 + ... lists). A first sync is at most two: the
        # bootstrap's list, then alpha's endpoints once CDS named alpha (one response when
        # Envoy asked for both at once)
        assert half <= _eds_pushes(controller, "public") <= 2 * half
        # with a divided limit every proxy counts every replica
        wait_until(lambda: all(_replica_members(e) == half for e in envoys[half:]), 30)
        assert all(_replica_members(e) == 1 for e in envoys[:half])
        assert backend_of(public, "/x") == "alpha" and backend_of(limited, "/x") == "alpha"
        revision, _ = _in_sync(cli)

        controller.stop()
        assert backend_of(public, "/x") == "alpha"  # served from what Envoy runs
        controller.start()
        wait_until(lambda: _all_in_sync(cli), 120, interval=0.2)
        after, proxies = _in_sync(cli)
        assert after == revision  # resynced at the same revision: nothing rolled back
        assert {p["node"] for p in proxies} == {f"{e.spec.node_id}" for e in envoys}
        assert half <= _eds_pushes(controller, "public") <= 2 * half  # the restart's resyncs
        wait_until(lambda: all(_replica_members(e) == half for e in envoys[half:]), 30)
        # the limited gateway's list changed as its proxies came back, coalesced per burst:
        # at most one response per proxy for the first connect and per later update
        assert _eds_pushes(controller, "limited") <= half * half
        assert all(e.proc.poll() is None for e in envoys)  # no Envoy restarted
        assert backend_of(public, "/x") == "alpha" and backend_of(limited, "/x") == "alpha"
    finally:
        for envoy in envoys:
            envoy.stop()


def _start_fleet(
    controller: Controller, tmp_path: Path, gateways: tuple[str, ...] = ("public", "limited")
) -> list[Envoy]:
    envoys: list[Envoy] = []
    try:
        for i in range(FLEET):  # started together, then waited for
            gateway = gateways[i * len(gateways) // FLEET]
            envoys.append(Envoy(gateway, f"{gateway}-{i}", controller.xds_port, tmp_path,
                                wait=False))  # fmt: skip
        for envoy in envoys:
            wait_ready(envoy.admin_port, 90, process=envoy.proc)
    except BaseException:
        for envoy in envoys:
            envoy.stop()
        raise
    return envoys


def _metric(controller: Controller, name: str) -> float:
    url = f"http://127.0.0.1:{controller.health_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        lines = resp.read().decode().splitlines()
    return sum(float(ln.split(" ")[1]) for ln in lines if ln.split(" ")[0] == name)


def test_envoys_waiting_their_turn_after_a_restart_all_resync(
    cli: Cli, controller: Controller, backends, tmp_path: Path
) -> None:
    """Admission control (ADR 0053) with a bound of one first sync at a time: the Envoys
    reconnecting together wait in turn - their streams open, unanswered - and every one
    resyncs at the same revision, none restarted, traffic served throughout."""
    public = free_port()
    cli.run("gateway", "add", "public", "--port", str(public), "--address", "127.0.0.1")
    cli.run("cluster", "add", "alpha", "--endpoint", f"127.0.0.1:{backends['alpha'].port}")
    cli.run("route", "add", "all-public", "--gateway", "public", "--cluster", "alpha")
    envoys = _start_fleet(controller, tmp_path, gateways=("public",))
    try:
        wait_until(lambda: _all_in_sync(cli), 90, interval=0.2)
        revision, _ = _in_sync(cli)
        controller.stop()
        controller.args = (*controller.args, "--max-initial-syncs", "1")
        controller.start()
        wait_until(lambda: _all_in_sync(cli), 120, interval=0.2)
        after, proxies = _in_sync(cli)
        assert after == revision  # nothing rolled back
        assert {p["node"] for p in proxies} == {e.spec.node_id for e in envoys}
        assert _metric(controller, "gateway_xds_initial_syncs_peak") == 1  # one at a time
        # the fleet came back together: some streams had to wait, and still synced
        assert _metric(controller, "gateway_xds_initial_syncs_queued") > 0
        assert _metric(controller, "gateway_xds_initial_syncs_timed_out") == 0
        assert all(e.proc.poll() is None for e in envoys)  # no Envoy restarted
        assert backend_of(public, "/x") == "alpha"
    finally:
        for envoy in envoys:
            envoy.stop()

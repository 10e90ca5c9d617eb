"""Bytes a real Envoy receives from the controller per route change, state of the world vs
delta ADS, at N routes.

One real ``gatewayctl serve`` and one real Envoy per protocol (bootstrap ``api_type`` GRPC,
then DELTA_GRPC, through ``XDS_API_TYPE``), the same database: N routes on cluster ``a``
and one on ``b`` (so flipping a route between ``a`` and ``b`` changes routes only, no
cluster comes or goes). Envoy's own counters of its connection to the controller
(``cluster.xds_cluster.upstream_cx_rx_bytes_total``, ``..._tx_bytes_total``: gRPC over
HTTP/2, framing included) are read around the changes; each change is timed from the
write to the first 200 from the new cluster. Also: bytes of the first sync, and of a
cluster change (one cluster's connect timeout) among ``--clusters`` clusters in use.

    python -m bench.xds_bytes --routes 10000 --samples 20
"""

from __future__ import annotations

import argparse
import os
import time

from bench.harness import Probe, Stack, make_route, route_name, route_path
from bench.stats import summary
from controlplane.envoy_launcher import stats

XDS = r"^cluster\.xds_cluster\.upstream_cx_(rx|tx)_bytes_total$"


def _bytes(stack: Stack) -> tuple[int, int]:
    got = _stats(stack, XDS)
    return (
        got["cluster.xds_cluster.upstream_cx_rx_bytes_total"],
        got["cluster.xds_cluster.upstream_cx_tx_bytes_total"],
    )


def _settle(stack: Stack, seconds: float = 1.0) -> tuple[int, int]:
    """The counters once they stopped moving (ACKs and late responses are in)."""
    last = _bytes(stack)
    while True:
        time.sleep(seconds)
        now = _bytes(stack)
        if now == last:
            return now
        last = now


def _stats(stack: Stack, pattern: str) -> dict[str, int]:
    """Envoy's counters; its admin API is slow to filter thousands of cluster stats on a
    loaded machine, so a timed-out read is tried again."""
    for _ in range(10):
        try:
            return stats(stack.ports["admin"], pattern)
        except TimeoutError:
            time.sleep(0.5)
    return stats(stack.ports["admin"], pattern)


def _wait_synced(stack: Stack, timeout: float = 120) -> None:
    """Until the proxy ACKed the database's newest revision (the controller's status)."""
    store = stack.store
    assert store is not None
    revision = store.revision()
    deadline = time.monotonic() + timeout
    while not all(p.acked_revision >= revision for p in store.proxies()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"revision {revision} not ACKed")
        time.sleep(0.02)


def run(api_type: str, args: argparse.Namespace) -> dict[str, object]:
    from controlplane.policy import Cluster

    def cluster(i: int, timeout: str = "5s") -> Cluster:
        # never called: the route using it is not requested
        return Cluster(name=f"c{i:04d}", endpoints=["127.0.0.1:9"], connect_timeout=timeout)

    with Stack(admin=True, xds_api_type=api_type) as stack:
        # the first --clusters routes each use a cluster of their own
        preload: list[object] = [cluster(i) for i in range(args.clusters)]
        preload += [
            make_route("r", i, f"c{i:04d}" if i < args.clusters else "a")
            for i in range(args.routes)
        ]
        keep_b = make_route("keep", 0, "b")
        stack.start(preload=[*preload, keep_b])  # type: ignore[list-item]
        store = stack.store
        assert store is not None
        probe = Probe(stack.ports["listener"])
        index = args.routes // 2
        name, path = route_name("r", index), route_path("r", index)
        probe.wait_for(path, lambda s, b: s == 200 and b == "a", timeout=300)
        sync_rx, sync_tx = _settle(stack)
        times = []
        for i in range(args.samples):
            target = "b" if i % 2 == 0 else "a"
            route = make_route("r", index, target)
            start = time.perf_counter()
            store.apply_objects([route])
            times.append(
                probe.wait_for(path, lambda s, b, t=target: s == 200 and b == t, start=start)
            )
            time.sleep(args.pause)
        rx, tx = _settle(stack)
        probe.close()
        assert name == route.name
        # one cluster's setting changes: a CDS change among --clusters clusters
        for i in range(args.samples):
            store.apply_objects([cluster(0, "6s" if i % 2 == 0 else "5s")])
            _wait_synced(stack)
            time.sleep(args.pause)
        crx, ctx = _settle(stack)
        return {
            "sync_rx": sync_rx,
            "rx": (rx - sync_rx) / args.samples,
            "tx": (tx - sync_tx) / args.samples,
            "cluster_rx": (crx - rx) / args.samples,
            "cluster_tx": (ctx - tx) / args.samples,
            "times": times,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--routes", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--pause", type=float, default=0.3)
    parser.add_argument(
        "--clusters", type=int, default=1000, help="routes with a cluster of their own"
    )
    args = parser.parse_args()
    os.environ["GATEWAY_VALIDATE"] = "never"  # the push alone, not the pre-commit check
    print(
        f"{args.routes} routes ({args.clusters} with a cluster of their own), {args.samples} "
        "route changes and cluster changes per protocol, one real Envoy"
    )
    for api_type in ("GRPC", "DELTA_GRPC"):
        got = run(api_type, args)
        s = summary(got["times"])  # type: ignore[arg-type]
        print(
            f"{api_type:10s} first sync {got['sync_rx'] / 1e3:8.1f} kB received; per route "
            f"change {got['rx'] / 1e3:6.2f} kB received, {got['tx'] / 1e3:5.2f} kB sent; "
            f"write -> first 200 p50 {s['p50']:.1f} ms p99 {s['p99']:.1f} ms; per cluster "
            f"change {got['cluster_rx'] / 1e3:6.2f} kB received, "
            f"{got['cluster_tx'] / 1e3:5.2f} kB sent (load {os.getloadavg()[0]:.1f})"
        )


if __name__ == "__main__":
    main()

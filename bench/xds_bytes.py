"""Bytes a real Envoy receives from the controller per route change, state of the world vs
delta ADS, at N routes.

One real ``gatewayctl serve`` and one real Envoy per protocol (bootstrap ``api_type`` GRPC,
then DELTA_GRPC, through ``XDS_API_TYPE``), the same database: N routes on cluster ``a``
and one on ``b`` (so flipping a route between ``a`` and ``b`` changes routes only, no
cluster comes or goes). Envoy's own counters of its connection to the controller
(``cluster.xds_cluster.upstream_cx_rx_bytes_total``, ``..._tx_bytes_total``: gRPC over
HTTP/2, framing included) are read around the changes; each change is timed from the
write to the first 200 from the new cluster. Also: bytes of the first sync, and of a
cluster change (one cluster's endpoint added) for a gateway with many clusters
(``--clusters``).

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
    got = stats(stack.ports["admin"], XDS)
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


def run(api_type: str, args: argparse.Namespace) -> dict[str, object]:
    with Stack(xds_api_type=api_type) as stack:
        preload = [make_route("r", i, "a") for i in range(args.routes)]
        keep_b = make_route("keep", 0, "b")
        stack.start(preload=[*preload, keep_b])
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
        return {
            "sync_rx": sync_rx,
            "rx": (rx - sync_rx) / args.samples,
            "tx": (tx - sync_tx) / args.samples,
            "times": times,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--routes", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--pause", type=float, default=0.3)
    args = parser.parse_args()
    os.environ["GATEWAY_VALIDATE"] = "never"  # the push alone, not the pre-commit check
    print(f"{args.routes} routes, {args.samples} route changes per protocol, one real Envoy")
    for api_type in ("GRPC", "DELTA_GRPC"):
        got = run(api_type, args)
        s = summary(got["times"])  # type: ignore[arg-type]
        print(
            f"{api_type:10s} first sync {got['sync_rx'] / 1e3:8.1f} kB received; per route "
            f"change {got['rx'] / 1e3:6.2f} kB received, {got['tx'] / 1e3:5.2f} kB sent; "
            f"write -> first 200 p50 {s['p50']:.1f} ms p99 {s['p99']:.1f} ms "
            f"(load {os.getloadavg()[0]:.1f})"
        )


if __name__ == "__main__":
    main()

"""What Envoy validation adds to a write at N routes (controlplane/validate.py).

Builds a store with one gateway, 20 clusters and N routes, then times, in-process:

* ``route update`` without validation (the store write alone),
* ``route update`` with validation (the write, the changed route rendered with its gateway
  and cluster, ``envoy --mode validate``), the default,
* a gateway update with validation (the gateway rendered whole: every route),
* the parts of the whole-gateway check: translation, and ``envoy --mode validate``.

    python -m bench.validate --routes 10000 --samples 15
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from controlplane.policy import Bundle
from controlplane.store import Store
from controlplane.validate import EnvoyValidator, bootstrap


def _bundle(routes: int) -> Bundle:
    data = {
        "gateways": [{"name": "public", "port": 8080}],
        "clusters": [{"name": f"c{i}", "endpoints": [f"127.0.0.1:{9000 + i}"]} for i in range(20)],
        "routes": [
            {
                "name": f"r{i}",
                "gateway": "public",
                "match": {"path_prefix": f"/svc/{i}/"},
                "cluster": f"c{i % 20}",
                "timeout": "5s",
            }
            for i in range(routes)
        ],
    }
    return Bundle.model_validate(data)


def _ms(samples: list[float]) -> str:
    ordered = sorted(samples)
    p50 = statistics.median(ordered)
    p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
    return f"p50 {p50 * 1e3:7.1f} ms   p90 {p90 * 1e3:7.1f} ms   (n={len(ordered)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--routes", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=15)
    parser.add_argument(
        "--pause", type=float, default=1.0, help="seconds between writes with Envoy started ahead"
    )
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="bench-validate-")
    store = Store(str(Path(folder) / "p.db"), create=True)
    store.apply(_bundle(args.routes))
    validator = EnvoyValidator("always")
    envoy = validator.envoy()
    print(f"{args.routes} routes, Envoy {envoy}")

    def route_update(i: int) -> None:
        store.update("route", "r7", lambda s: {**s, "cluster": f"c{i % 20}"})

    rows = {}
    render_only = EnvoyValidator("always", envoy="/bin/true")  # everything but Envoy's run
    warm = EnvoyValidator("always", warm=True)  # the controller's: one Envoy started ahead
    warm.prime()
    cases = (
        ("route update, no validation", None),
        ("route update, validated", validator),
        ("route update, validated, Envoy started ahead (controller)", warm),
        ("route update, rendered only (Envoy replaced by /bin/true)", render_only),
    )
    for n, (label, chosen) in enumerate(cases):
        store.validator = chosen
        samples = []
        for i in range(args.samples):
            if chosen is warm:  # writes seconds apart: the next Envoy has started meanwhile
                time.sleep(args.pause)
            start = time.perf_counter()
            route_update(i + n)
            samples.append(time.perf_counter() - start)
        rows[label] = samples
    warm.close()
    store.validator = validator
    samples = []
    for i in range(max(3, args.samples // 3)):
        start = time.perf_counter()
        store.update("gateway", "public", lambda s, i=i: {**s, "port": 8080 + i % 2 + 1})
        samples.append(time.perf_counter() - start)
    rows["gateway update, validated (whole gateway)"] = samples

    # the parts of the whole-gateway check
    from controlplane.validate import translate_subset

    captured: dict[str, bytes] = {}
    translate_times: list[float] = []

    def capture(view):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        resources = translate_subset(view, "public", None, None)
        translate_times.append(time.perf_counter() - start)
        assert resources is not None
        captured["pb"] = bootstrap(resources).SerializeToString()
        return []

    store.validator = capture
    for i in range(3):
        store.update("gateway", "public", lambda s, i=i: {**s, "port": 8090 + i})
    rows["translate whole gateway (load + translate + snapshot checks)"] = translate_times
    path = Path(folder) / "whole.pb"
    path.write_bytes(captured["pb"])
    envoy_times = []
    for _ in range(5):
        start = time.perf_counter()
        command = [str(envoy), "--mode", "validate", "-c", str(path), "-l", "critical"]
        subprocess.run(command, check=True, capture_output=True)
        envoy_times.append(time.perf_counter() - start)
    rows[f"envoy --mode validate, {args.routes} routes ({len(captured['pb']) // 1024} KiB)"] = (
        envoy_times
    )
    for label, samples in rows.items():
        print(f"{label:62s} {_ms(samples)}")
    store.close()


if __name__ == "__main__":
    main()

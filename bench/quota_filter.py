"""Envoy CPU per request of the quota filter's own work: route pick, caller pick, bucket.

Run from the repository root with the project's venv::

    python -m bench.quota_filter                      # 4 rounds x 4 variants x 3 s
    python -m bench.quota_filter --rounds 6 --duration 5
    # against another version of the translator's quota module (e.g. a former commit's):
    git show ed83023:controlplane/translate/quota.py > /tmp/quota_old.py
    python -m bench.quota_filter --other /tmp/quota_old.py

One static Envoy per variant (same binary, ``--concurrency 1``), each with two routes
``/r1`` and ``/r2`` answered by Envoy itself (``direct_response``) and carrying their policy
name in route metadata as the translator puts it; wrk (``-t1 -c16``, closed loop) sends
``/r1`` with the next of 1,000 consumers' ``x-consumer-id`` per request (Lua). Variants:

* ``none``: the router only;
* ``route_filter``: the translator's route filter alone (``set_filter_state`` copying the
  route's name into the filter state);
* ``quota``: the route filter and the translator's ``gateway.quota.minute`` filter for the
  two routes limited per consumer by a plan the 1,000 consumers share (shared mode);
* ``other`` (with ``--other``): that module's filter(s) for the same policy.

There is no quota service: every bucket keeps its no-assignment action (admit all), so the
figure is the filter's matching and bucket bookkeeping per request, not the token bucket of
an assignment (Envoy 1.40 crashes on a token-bucket no-assignment action without a
service, so that path is measured by ``bench.ratelimit --mode both`` instead). Cells are
interleaved over rounds; figures are medians of Envoy CPU (``/proc/<pid>/stat``) per request.
Any non-2xx answer fails the run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from google.protobuf.json_format import MessageToDict

from bench.auth import ensure_wrk
from controlplane.envoy_launcher import find_envoy_binary, free_port
from controlplane.policy import Consumer, Gateway
from controlplane.policy.ratelimit import Per, Plan, RateLimit
from controlplane.translate import quota

ROUTES = ("r1", "r2")
CONSUMERS = 1000


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _load(path: str) -> ModuleType:
    """A quota module from a file, imported as a sibling of the current one (its relative
    imports resolve against this checkout)."""
    spec = importlib.util.spec_from_file_location("controlplane.translate._quota_other", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _filter(name: str, message: Any) -> dict[str, Any]:
    return {
        "name": name,
        "typed_config": {
            "@type": "type.googleapis.com/" + message.DESCRIPTOR.full_name,
            **MessageToDict(message),
        },
    }


def filters_of(module: ModuleType) -> list[dict[str, Any]]:
    """The module's HTTP filters for the benchmark's policy, in chain order."""
    gateway = Gateway(name="g", port=8080, rate_limit_mode="shared")
    policies = {r: RateLimit(key="consumer") for r in ROUTES}
    objects = {
        "plan": {"p": Plan(name="p", limits=[{"requests": 10**9, "per": "minute"}])},
        "consumer": {f"c{i}": Consumer(name=f"c{i}", plan="p") for i in range(CONSUMERS)},
    }
    config = module.quota_filter(gateway, Per.minute, policies, objects)
    config.rlqs_server.envoy_grpc.cluster_name = "rlqs"
    out = []
    if hasattr(module, "route_filter"):
        out.append(_filter("gateway.quota_route", module.route_filter()))
    return [*out, _filter("gateway.quota.minute", config)]


def bootstrap(port: int, admin: int, filters: list[dict[str, Any]]) -> dict[str, Any]:
    routes = [
        {
            "match": {"prefix": f"/{r}"},
            "metadata": {"filter_metadata": {"gateway": {"route": r}}},
            "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}},
        }
        for r in ROUTES
    ]
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "bench",
        "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": routes}]},
        "http_filters": [
            *filters,
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            },
        ],
    }
    h2 = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }
    nowhere = {"socket_address": {"address": "127.0.0.1", "port_value": free_port()}}
    return {
        "static_resources": {
            "listeners": [
                {
                    "name": "bench",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "rlqs",
                    "type": "STATIC",
                    "typed_extension_protocol_options": h2,
                    "load_assignment": {
                        "cluster_name": "rlqs",
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": nowhere}}]}],
                    },
                }
            ],
        },
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
    }


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per cell")
    parser.add_argument("--other", help="another quota.py to compare (its filters as 'other')")
    args = parser.parse_args(argv)
    wrk = ensure_wrk()
    envoy = find_envoy_binary()
    variants: dict[str, list[dict[str, Any]]] = {
        "none": [],
        "route_filter": [_filter("gateway.quota_route", quota.route_filter())],
        "quota": filters_of(quota),
    }
    if args.other:
        variants["other"] = filters_of(_load(args.other))
    work = Path(tempfile.mkdtemp(prefix="bench-quota-filter-"))
    script = work / "consumers.lua"
    script.write_text(
        "i = 0\nrequest = function()\n  i = (i + 1) % " + str(CONSUMERS) + "\n"
        '  return wrk.format("GET", "/r1", {["x-consumer-id"] = "c" .. i})\nend\n'
    )
    procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    try:
        for i, (name, filters) in enumerate(variants.items()):
            port = free_port()
            path = work / f"{name}.json"
            path.write_text(json.dumps(bootstrap(port, free_port(), filters)))
            cmd = [envoy, "-c", str(path), "--concurrency", "1", "-l", "error"]
            cmd += ["--base-id", str(os.getpid() % 10_000 * 10 + i)]
            log_file = (work / f"{name}.log").open("wb")
            procs[name] = (subprocess.Popen(cmd, stdout=log_file, stderr=log_file), port)
        time.sleep(3)
        cells: dict[str, list[float]] = {name: [] for name in variants}
        names = list(variants)
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                proc, port = procs[name]
                before = _cpu_s(proc.pid)
                done = subprocess.run(
                    [wrk, "-t1", "-c16", f"-d{args.duration:g}s", "-s", str(script),
                     f"http://127.0.0.1:{port}/r1"],
                    capture_output=True, text=True, check=True,
                )  # fmt: skip
                used = _cpu_s(proc.pid) - before
                found = re.search(r"(\d+) requests in", done.stdout)
                if found is None or "Non-2xx" in done.stdout or "Socket errors" in done.stdout:
                    raise SystemExit(f"{name}: bad run:\n{done.stdout}")
                per = used / int(found.group(1)) * 1e6
                cells[name].append(per)
                log(f"  round {r + 1} {name:12}: {per:6.1f} us/req")
    finally:
        for proc, _ in procs.values():
            proc.terminate()
    base = statistics.median(cells["none"])
    print(f"\n{args.rounds} rounds x {len(variants)} variants x {args.duration:g} s, "
          f"{CONSUMERS} consumers; Envoy CPU per request, median")  # fmt: skip
    print("\n| variant | Envoy CPU us/req | over none |\n|---|---:|---:|")
    for name, values in cells.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.1f} | {median - base:+.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Generated versus hand-written Envoy configuration with the same features, same binary.

Run from the repository root with the project's venv::

    nice -n 10 python -m bench.filter_chain                  # 6 rounds x 3 cases x 2 configs x 3 s
    nice -n 10 python -m bench.filter_chain --rounds 2 --duration 2   # quick look
    nice -n 10 python -m bench.filter_chain --json out.json

Three cases, each one route answered by Envoy itself (``direct_response`` 200, so only the
HTTP filters and routing differ):

* ``plain``: no authentication, no limit;
* ``jwt_limit``: a JWT (RS256, inline JWKS, Envoy's JWT cache) and a per-consumer rate limit
  far above the load (so it counts but never refuses);
* ``api_key_limit``: an API key (one of 100 consumers' keys) and the same limit.

**Generated**: the project's translator (``controlplane.translate.Translator``) turns the
policy into its listener, ECDS filter configs and RouteConfiguration; the bench inlines the
ECDS configs and the RouteConfiguration into one static bootstrap (what Envoy runs per
request is the same filter objects; only their delivery differs).

**Hand-written**: the same HTTP connection manager settings (path normalisation, header
hygiene, local replies, taken from the generated listener so they cannot drift), and the
filter chain a person would write for the case: ``plain``: the router only; ``jwt_limit``:
strip client copies of the identity header, ``jwt_authn`` (the same provider, consumer
claim to ``x-consumer-id``) required on the route, ``local_ratelimit`` keyed by
``x-consumer-id`` (with the same X-RateLimit-* response headers), router;
``api_key_limit``: the strip, ``api_key_auth`` forwarding the consumer as ``x-consumer-id``
(key hidden), the limit, router. The routes are the generated ones (the path-parameter
guard, the route, the final 404) without their per-filter settings.

Both run as separate Envoy processes of the same binary with ``--concurrency 1`` (one
worker). Load: ``wrk -t1 -c16`` for ``--duration`` seconds per cell; the cells are
interleaved (case and configuration order rotate every round) and each figure is the
median over the rounds; "ratio" is generated / hand-written (>= 1.0 for rps means the
generated config is at least as fast; for CPU per request <= 1.0 is better). Every cell is
checked: no non-2xx answer, no socket error. Envoy CPU per request comes from
``/proc/<pid>/stat`` (user + system) over the cell.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.api_key_auth.v3 import api_key_auth_pb2 as apikey
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2 as lrl
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.type.v3 import token_bucket_pb2
from google.protobuf import duration_pb2, json_format, wrappers_pb2

from bench.auth import Signer, ensure_wrk, machine_busy_s, parse_wrk
from bench.harness import cpu_seconds
from bench.run import loadavg
from controlplane.envoy_launcher import free_port
from controlplane.policy import (
    AuthPolicy,
    Consumer,
    Gateway,
    JwtProvider,
    Route,
    new_api_key,
)
from controlplane.policy.ratelimit import RateLimit
from controlplane.translate import EXTENSION, LISTENER, ROUTE, GatewayView, Translator
from controlplane.translate.common import pack

CASES = ("plain", "jwt_limit", "api_key_limit")
CONFIGS = ("generated", "hand")
ISSUER = "https://issuer.bench.example"
PROVIDER = "bench"
CALLER = "c00042"
HCM = "envoy.filters.network.http_connection_manager"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- policy and the generated configuration ---------------------------------------------------


def policy(case: str, port: int, signer: Signer) -> tuple[GatewayView, dict[str, str]]:
    """The gateway's view for a case, and the request headers that pass it."""
    gateway = Gateway(name="bench", port=port, address="127.0.0.1")
    objects: dict[str, dict[str, Any]] = {}
    headers: dict[str, str] = {}
    auth = AuthPolicy()
    limit = None
    if case != "plain":
        limit = RateLimit(
            key="consumer", limits=[{"requests": 100_000_000, "per": "second"}], use_plans=False
        )
        consumers = {f"c{i:05d}": Consumer(name=f"c{i:05d}") for i in range(100)}
        objects["consumer"] = consumers
    if case == "jwt_limit":
        provider = JwtProvider(name=PROVIDER, issuer=ISSUER, audiences=["api"], jwks=signer.jwks())
        objects["jwt_provider"] = {PROVIDER: provider}
        auth = AuthPolicy(jwt=[PROVIDER])
        headers["authorization"] = "Bearer " + signer.token(CALLER, 3600)
    if case == "api_key_limit":
        keys = [new_api_key(name) for name in sorted(objects["consumer"])]
        objects["api_key"] = {k.name: k for k in keys}
        auth = AuthPolicy(api_key=True)
        headers["x-api-key"] = next(k.key for k in keys if k.consumer == CALLER) or ""
    route = Route(
        name="d",
        gateways=["bench"],
        match={"path_prefix": "/d"},
        direct_response={"status": 200, "body": "ok\n"},
        auth=auth,
        rate_limit=limit,
    )
    return GatewayView(gateway, {"d": route}, {}, objects), headers


def _hcm(listener: Any) -> hcm_pb2.HttpConnectionManager:
    hcm = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    return hcm


def generated(view: GatewayView) -> tuple[Any, hcm_pb2.HttpConnectionManager]:
    """The translator's listener with its ECDS configs and RouteConfiguration inlined."""
    out = Translator(shard_from=0).translate(view)
    listener = out.message(LISTENER, "bench")
    hcm = _hcm(listener)
    for f in hcm.http_filters:
        if f.HasField("config_discovery"):
            f.typed_config.CopyFrom(out.message(EXTENSION, f.name).typed_config)  # type: ignore[attr-defined]
    hcm.route_config.CopyFrom(out.message(ROUTE, "bench"))
    listener.filter_chains[0].filters[0].typed_config.CopyFrom(pack(hcm))  # type: ignore[attr-defined]
    return listener, hcm


def hand_written(case: str, view: GatewayView, template: hcm_pb2.HttpConnectionManager) -> Any:
    """The same connection manager settings, the chain a person would write for the case."""
    listener, _ = generated(view)
    hcm = hcm_pb2.HttpConnectionManager()
    hcm.CopyFrom(template)
    del hcm.http_filters[:]
    # the same routes (path-parameter guard, the route, the final 404), without the
    # generated per-filter settings and metadata
    for vh in hcm.route_config.virtual_hosts:
        vh.ClearField("typed_per_filter_config")
        for r in vh.routes:
            r.ClearField("typed_per_filter_config")
            r.ClearField("metadata")
    filters: list[hcm_pb2.HttpFilter] = []
    if case != "plain":
        strip = header_mutation_pb2.HeaderMutation(
            mutations=header_mutation_pb2.Mutations(
                request_mutations=[mutation_rules_pb2.HeaderMutation(remove="x-consumer-id")]
            )
        )
        filters.append(hcm_pb2.HttpFilter(name="strip", typed_config=pack(strip)))
    if case == "jwt_limit":
        generated_jwt = jwt.JwtAuthentication()
        [entry] = [f for f in template.http_filters if f.name == "gateway.jwt_authn"]
        entry.typed_config.Unpack(generated_jwt)
        config = jwt.JwtAuthentication(providers=generated_jwt.providers)
        config.rules.append(
            jwt.RequirementRule(
                match=rc.RouteMatch(prefix="/d"),
                requires=jwt.JwtRequirement(provider_name=PROVIDER),
            )
        )
        filters.append(hcm_pb2.HttpFilter(name="jwt", typed_config=pack(config)))
    if case == "api_key_limit":
        keys = sorted(view.objects["api_key"].values(), key=lambda k: k.name)  # type: ignore[attr-defined]
        config = apikey.ApiKeyAuth(
            credentials=[apikey.Credential(key=k.key, client=k.consumer) for k in keys],
            key_sources=[apikey.KeySource(header="x-api-key")],
            forwarding=apikey.Forwarding(header="x-consumer-id", hide_credentials=True),
        )
        filters.append(hcm_pb2.HttpFilter(name="api_key", typed_config=pack(config)))
    if case != "plain":
        bucket = token_bucket_pb2.TokenBucket(
            max_tokens=100_000_000,
            tokens_per_fill=wrappers_pb2.UInt32Value(value=100_000_000),
            fill_interval=duration_pb2.Duration(seconds=1),
        )
        limit = lrl.LocalRateLimit(
            stat_prefix="limit",
            filter_enabled=_percent(),
            filter_enforced=_percent(),
            descriptors=[_descriptor(bucket)],
            always_consume_default_token_bucket=wrappers_pb2.BoolValue(value=False),
            # the same X-RateLimit-* response headers as the generated config
            enable_x_ratelimit_headers=1,  # DRAFT_VERSION_03
            max_dynamic_descriptors=wrappers_pb2.UInt32Value(value=1000),
            rate_limits=[
                rc.RateLimit(
                    actions=[
                        rc.RateLimit.Action(
                            request_headers=rc.RateLimit.Action.RequestHeaders(
                                header_name="x-consumer-id", descriptor_key="consumer"
                            )
                        )
                    ]
                )
            ],
        )
        limit.local_cluster_rate_limit.SetInParent()
        filters.append(hcm_pb2.HttpFilter(name="limit", typed_config=pack(limit)))
    filters.append(
        hcm_pb2.HttpFilter(name="envoy.filters.http.router", typed_config=pack(router_pb2.Router()))
    )
    hcm.http_filters.extend(filters)
    listener.filter_chains[0].filters[0].typed_config.CopyFrom(pack(hcm))
    return listener


def _percent() -> Any:
    from envoy.config.core.v3 import base_pb2 as core
    from envoy.type.v3 import percent_pb2

    return core.RuntimeFractionalPercent(
        default_value=percent_pb2.FractionalPercent(
            numerator=100, denominator=percent_pb2.FractionalPercent.HUNDRED
        )
    )


def _descriptor(bucket: token_bucket_pb2.TokenBucket) -> Any:
    from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2

    return ratelimit_pb2.LocalRateLimitDescriptor(
        entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key="consumer", value="")],
        token_bucket=bucket,
    )


# -- Envoy processes -------------------------------------------------------------------------


def bootstrap(listener: Any, admin_port: int) -> dict[str, Any]:
    return {
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}
        },
        "static_resources": {
            "listeners": [json_format.MessageToDict(listener, preserving_proto_field_name=True)],
            "clusters": [
                {
                    "name": "gateway_replicas",
                    "type": "STATIC",
                    "load_assignment": {
                        "cluster_name": "gateway_replicas",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": "127.0.0.1",
                                                    "port_value": 9,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ],
        },
        "layered_runtime": {"layers": [{"name": "static", "static_layer": {}}]},
        "node": {"id": "bench", "cluster": "bench"},
        # the replicas of the gateway, which divide its limits (ADR 0016): this one alone
        "cluster_manager": {"local_cluster_name": "gateway_replicas"},
    }


def start_envoy(config: dict[str, Any], workdir: Path, name: str) -> subprocess.Popen[bytes]:
    path = workdir / f"{name}.json"
    path.write_text(json.dumps(config))
    envoy = str(Path(sys.executable).parent / "envoy")
    check = subprocess.run([envoy, "--mode", "validate", "-c", str(path)], capture_output=True)
    if check.returncode != 0:
        raise SystemExit(f"{name}: envoy refused the config:\n{check.stderr.decode()[-2000:]}")
    return subprocess.Popen(
        [envoy, "-c", str(path), "--concurrency", "1", "-l", "warning", "--base-id",
         str(os.getpid() % 1000 * 10 + len(name))],
        stdout=subprocess.DEVNULL,
        stderr=open(workdir / f"{name}.log", "wb"),
    )  # fmt: skip


def wait_ready(port: int, headers: dict[str, str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/d", headers=headers)
            with urllib.request.urlopen(req, timeout=2) as resp:
                if resp.status == 200:
                    return
        except Exception as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(f"port {port} not answering 200: {exc}") from exc
        time.sleep(0.2)


def run_cell(
    wrk: str, port: int, headers: dict[str, str], pid: int, seconds: float
) -> dict[str, Any]:
    args = [wrk, "-t1", "-c16", f"-d{seconds:g}s", "--latency"]
    for k, v in headers.items():
        args += ["-H", f"{k}: {v}"]
    cpu0 = cpu_seconds(pid)
    done = subprocess.run(
        [*args, f"http://127.0.0.1:{port}/d"], capture_output=True, text=True, check=True
    )
    cpu = cpu_seconds(pid) - cpu0
    res = parse_wrk(done.stdout)
    if res["non_2xx"] or res["socket_errors"]:
        raise SystemExit(f"cell failed: {res}\n{done.stdout}")
    res["cpu_us_per_req"] = cpu / res["requests"] * 1e6
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.filter_chain", description=__doc__)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    wrk = ensure_wrk()
    signer = Signer()
    workdir = Path(tempfile.mkdtemp(prefix="gw-bench-chain-"))
    procs: dict[tuple[str, str], subprocess.Popen[bytes]] = {}
    ports: dict[tuple[str, str], int] = {}
    creds: dict[str, dict[str, str]] = {}
    log(f"load average at start: {loadavg()}; work dir {workdir}")
    try:
        for case in cases:
            base, creds[case] = policy(case, 1, signer)  # one set of keys for both configs
            for config in CONFIGS:
                port = free_port()
                gateway = base.gateway.model_copy(update={"port": port})
                view = GatewayView(gateway, base.routes, base.clusters, base.objects)
                listener, template = generated(view)
                if config == "hand":
                    listener = hand_written(case, view, template)
                procs[(case, config)] = start_envoy(
                    bootstrap(listener, free_port()), workdir, f"{case}-{config}"
                )
                ports[(case, config)] = port
        for key, port in ports.items():
            wait_ready(port, creds[key[0]])
            # without the credential: refused (the filters really are in the path)
            if key[0] != "plain":
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/d", timeout=2)
                    raise SystemExit(f"{key}: answered without a credential")
                except urllib.error.HTTPError as err:
                    assert err.code == 401, (key, err.code)
        cells: dict[tuple[str, str], list[dict[str, Any]]] = {k: [] for k in ports}
        busy0, t0 = machine_busy_s(), time.monotonic()
        for r in range(args.rounds):
            order = cases[r % len(cases) :] + cases[: r % len(cases)]
            for case in order:
                configs = CONFIGS if r % 2 == 0 else CONFIGS[::-1]
                for config in configs:
                    key = (case, config)
                    res = run_cell(wrk, ports[key], creds[case], procs[key].pid, args.duration)
                    cells[key].append(res)
            log(f"  round {r + 1}/{args.rounds} done, load {loadavg()}")
        busy = (machine_busy_s() - busy0) / (time.monotonic() - t0)
        rows = []
        for case in cases:
            med = {
                c: {
                    k: statistics.median(x[k] for x in cells[(case, c)])
                    for k in ("rps", "p50", "p99", "cpu_us_per_req")
                }
                for c in CONFIGS
            }
            g, h = med["generated"], med["hand"]
            rows.append(
                f"| {case} | {g['rps']:,.0f} | {h['rps']:,.0f} | **{g['rps'] / h['rps']:.3f}x** | "
                f"{g['cpu_us_per_req']:.1f} | {h['cpu_us_per_req']:.1f} | "
                f"**{g['cpu_us_per_req'] / h['cpu_us_per_req']:.3f}x** | "
                f"{g['p50']:.3f} / {h['p50']:.3f} | {g['p99']:.3f} / {h['p99']:.3f} |"
            )
        print(
            "| case | generated rps | hand rps | rps ratio | generated CPU us/req "
            "| hand CPU us/req | CPU ratio | p50 ms gen / hand | p99 ms gen / hand |\n"
            "|---|---:|---:|---:|---:|---:|---:|---|---|"
        )
        print("\n".join(rows))
        print(
            f"\n(rounds {args.rounds} x {args.duration:g} s; machine busy {busy:.2f} cores "
            f"on average; load {loadavg()})"
        )
        if args.json:
            Path(args.json).write_text(
                json.dumps({f"{k[0]}/{k[1]}": v for k, v in cells.items()}, indent=1)
            )
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            proc.wait(timeout=10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

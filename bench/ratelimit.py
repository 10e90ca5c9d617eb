"""Rate-limit overhead: Envoy with a per-consumer limit over 1,000 consumers vs no limit.

Run from the repository root with the project's venv::

    python -m bench.ratelimit                        # 8 rounds x 4 cells x 3 s (about 2 min)
    python -m bench.ratelimit --duration 2 --rounds 2   # quick look
    python -m bench.ratelimit --mode both --rounds 6    # local and shared, interleaved

One stack (bench.harness.Stack: SQLite file, echo backend, ``gatewayctl serve``, one Envoy)
carries one gateway whose routes all require an API key; 1,000 consumers have a key each and
a plan. Two protections x two endings:

* ``unlimited``: the route's rate limit is off (``ratelimit off``), only authentication runs;
* ``limited``: the route limits per consumer by plan; the plan allows far more than the run
  sends, so every request is counted (a descriptor lookup among the gateway's explicit
  per-consumer buckets and a token taken) but none is refused;
* ending ``upstream`` (forwarded to the echo backend) and ``direct`` (``direct_response``).

wrk rotates through all 1,000 keys (a Lua script sets ``x-api-key`` per request), so the
limiter touches every consumer's bucket. Cells are interleaved over rounds; figures are
medians. Any non-2xx answer, or an Envoy limiter counter that disagrees (``ok`` below the
request count, any ``rate_limited``), fails the run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/ratelimit.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.auth import ensure_wrk, envoy_stats, machine_busy_s, parse_wrk, stat_delta
from bench.harness import GATEWAY, Stack, cpu_seconds
from bench.run import loadavg, machine
from controlplane.policy import AuthPolicy, Consumer, Plan, Route, new_api_key

PROTECTIONS = ("unlimited", "limited")
ENDINGS = ("upstream", "direct")
LIMITER = "rate_limit.http_local_rate_limit"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def path_of(ending: str, protection: str) -> str:
    return f"/{ending[0]}/{protection}"


def build_policy(stack: Stack, n_consumers: int, mode: str = "local") -> list[str]:
    """Plan, consumers with one key each, four routes, in one commit; returns the keys.
    ``mode``: the gateway's ``rate_limit_mode`` (shared: the plan's minute budget is leased
    by the controller's quota service, ADR 0051)."""
    assert stack.store is not None
    gateway = stack.store.get("gateway", GATEWAY)
    objects: list[Any] = [
        gateway.model_copy(update={"rate_limit_mode": mode}),
        Plan(name="big", limits=[{"requests": 1_000_000_000, "per": "minute"}]),
    ]
    keys = []
    for i in range(n_consumers):
        name = f"c{i:05d}"
        key = new_api_key(name)
        keys.append(key.key)
        objects += [Consumer(name=name, plan="big"), key]
    for ending in ENDINGS:
        for protection in PROTECTIONS:
            action: dict[str, Any] = (
                {"cluster": "a"}
                if ending == "upstream"
                else {"direct_response": {"status": 200, "body": "ok\n"}}
            )
            limit = (
                {"key": "consumer"}
                if protection == "limited"
                else {"key": "none", "limits": [], "use_plans": False}
            )
            objects.append(
                Route(
                    name=f"{ending}-{protection}",
                    gateways=[GATEWAY],
                    match={"path_prefix": path_of(ending, protection)},
                    auth=AuthPolicy(api_key=True),
                    rate_limit=limit,
                    **action,
                )
            )
    stack.store.apply_objects(objects)
    return keys


def key_script(stack: Stack, keys: list[str]) -> Path:
    """A wrk Lua script that sends the next consumer's key with every request."""
    path = stack.workdir / "keys.lua"
    table = ",\n".join(json.dumps(k) for k in keys)
    path.write_text(
        f"local keys = {{\n{table}\n}}\nlocal i = 0\n"
        "request = function()\n"
        "  i = i % #keys + 1\n"
        '  wrk.headers["x-api-key"] = keys[i]\n'
        "  return wrk.format(nil)\n"
        "end\n"
    )
    return path


def wait_accepted(port: int, key: str, mode: str = "local") -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + 60
    for ending in ENDINGS:
        for protection in PROTECTIONS:
            url = f"http://127.0.0.1:{port}{path_of(ending, protection)}"
            while True:
                req = urllib.request.Request(url, headers={"x-api-key": key})
                try:
                    with urllib.request.urlopen(req, timeout=5) as resp:
                        limit = resp.headers.get("x-ratelimit-limit")
                        # shared mode: no X-RateLimit-* headers (the quota filter adds none)
                        local = protection == "limited" and mode == "local"
                        headed = (limit is not None) == local
                        if resp.status == 200 and headed:
                            break
                except urllib.error.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{url} not ready after 60 s")
                time.sleep(0.1)
    log(f"  pre-check ({mode}): 200 on every route; X-RateLimit-* only on local limited routes")


def set_mode(stack: Stack, mode: str, key: str) -> None:
    """Switch the gateway's rate_limit_mode and wait until Envoy serves it (the limited
    routes carry X-RateLimit-* headers in local mode only)."""
    assert stack.store is not None
    gateway = stack.store.get("gateway", GATEWAY)
    stack.store.apply_objects([gateway.model_copy(update={"rate_limit_mode": mode})])
    wait_accepted(stack.ports["listener"], key, mode)


def run_cell(
    stack: Stack, wrk: str, script: Path, ending: str, protection: str, args: argparse.Namespace,
    duration: float, mode: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    import os
    import subprocess

    url = f"http://127.0.0.1:{stack.ports['listener']}{path_of(ending, protection)}"
    command = [wrk, f"-t{args.threads}", f"-c{args.connections}", f"-d{duration:g}s",
               "--timeout", "5s", "--latency", "-s", str(script), url]  # fmt: skip
    stats0 = envoy_stats(stack.ports["admin"])
    envoy0, busy0, t0 = cpu_seconds(stack.envoy_pid), machine_busy_s(), time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    output = proc.stdout.read().decode(errors="replace")
    _pid, status, _usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    envoy1, busy1 = cpu_seconds(stack.envoy_pid), machine_busy_s()
    stats1 = envoy_stats(stack.ports["admin"])
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"wrk failed:\n{output}")
    res = parse_wrk(output)
    res.update(
        ending=ending,
        protection=protection,
        mode=mode or args.mode,
        envoy_cpu_us_per_req=1e6 * (envoy1 - envoy0) / max(res["requests"], 1),
        busy_cores=(busy1 - busy0) / wall,
        envoy_2xx=stat_delta(stats0, stats1, f"http.{GATEWAY}.downstream_rq_2xx"),
        limiter_ok=stat_delta(stats0, stats1, f"{LIMITER}.ok"),
        limiter_refused=stat_delta(stats0, stats1, f"{LIMITER}.rate_limited"),
        output=output,
    )
    problems = []
    if res["non_2xx"] or res["socket_errors"]:
        problems.append(f"{res['non_2xx']} non-2xx, {res['socket_errors']} socket errors")
    if res["envoy_2xx"] < res["requests"]:
        problems.append(f"Envoy counted {res['envoy_2xx']} 2xx < {res['requests']}")
    if res["limiter_refused"]:
        problems.append(f"{res['limiter_refused']} refused by the limiter")
    # the filter runs on every route; only limited routes match descriptors (the pre-check
    # saw their X-RateLimit-* headers, and their absence on unlimited routes). Shared mode:
    # the quota filter counts them (its buckets are reported to the controller)
    if (mode or args.mode) == "local" and res["limiter_ok"] < res["requests"]:
        problems.append(f"limiter passed {res['limiter_ok']} of {res['requests']} requests")
    if problems:
        raise RuntimeError(f"{ending}/{protection}: " + "; ".join(problems) + "\n" + output)
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ratelimit",
        description="Requests/s and p99 through Envoy: per-consumer limit vs none.",
    )
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per cell (3)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (16)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (1)")
    parser.add_argument("--rounds", type=int, default=8, help="rounds of the 4 cells (8)")
    parser.add_argument("--consumers", type=int, default=1000, help="consumers, one key each")
    parser.add_argument(
        "--mode",
        choices=("local", "shared", "both"),
        default="local",
        help="gateway rate_limit_mode; both: the two modes in alternate rounds of one run",
    )
    parser.add_argument("--json", help="write every cell to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    wrk = ensure_wrk()
    info = machine()
    results: list[dict[str, Any]] = []
    started = time.perf_counter()
    try:
        with Stack(keep=args.keep) as stack:
            stack.start_backends()
            stack.seed()
            modes = ("local", "shared") if args.mode == "both" else (args.mode,)
            keys = build_policy(stack, args.consumers, modes[0])
            stack.start_controller()
            stack.start_envoy()
            wait_accepted(stack.ports["listener"], keys[0], modes[0])
            script = key_script(stack, keys)
            for r in range(args.rounds):
                # alternate the mode's order too: each mode runs first in half of the rounds
                for mode in modes if r % 2 == 0 else modes[::-1]:
                    if len(modes) > 1 or r == 0:
                        set_mode(stack, mode, keys[0])
                        for ending in ENDINGS:  # warm-up (leases handed out in shared mode)
                            for protection in PROTECTIONS:
                                run_cell(stack, wrk, script, ending, protection, args, 1.0, mode)
                    order = PROTECTIONS if r % 2 == 0 else PROTECTIONS[::-1]
                    for ending in ENDINGS:
                        for protection in order:
                            res = run_cell(
                                stack, wrk, script, ending, protection, args, args.duration, mode
                            )
                            res["round"] = r
                            results.append(res)
                            log(
                                f"  round {r + 1} {mode:6} {ending:8} {protection:9}: "
                                f"{res['rps']:8,.0f} rps  p50 {res['p50']:.2f}  p99 "
                                f"{res['p99']:.2f} ms  Envoy "
                                f"{res['envoy_cpu_us_per_req']:.1f} us/req"
                            )
    except RuntimeError as exc:
        log(f"FAILED: {exc}")
        return 1
    lines = [
        f"machine: {info['nproc']} cores ({info['cpu']}), Envoy {info['envoy']}, {info['date']}; "
        f"code {info['code_start']}; load average at start {info['loadavg_start']}, end "
        f"{loadavg()}",
        f"wrk {args.threads} thread(s), {args.connections} connections, closed loop; "
        f"{args.rounds} rounds x {4 * len(modes)} cells x {args.duration:g} s; "
        f"{args.consumers} consumers, "
        f"rate_limit_mode {args.mode}, "
        f"keys rotated per request; run took {time.perf_counter() - started:.0f} s",
        "",
        "| ending | mode | route | rps | p50 ms | p99 ms | Envoy CPU us/req | rps vs unlimited "
        "| p99 vs unlimited |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for ending in ENDINGS:
        summary[ending] = {}
        for mode in modes:
            for protection in PROTECTIONS:
                cells = [
                    c
                    for c in results
                    if c["ending"] == ending and c["protection"] == protection and c["mode"] == mode
                ]
                summary[ending][f"{mode}/{protection}"] = {
                    k: statistics.median(c[k] for c in cells)
                    for k in ("rps", "p50", "p99", "envoy_cpu_us_per_req")
                }
        for mode in modes:
            base = summary[ending][f"{mode}/unlimited"]
            for protection in PROTECTIONS:
                row = summary[ending][f"{mode}/{protection}"]
                vs = (
                    ["", ""]
                    if protection == "unlimited"
                    else [f"{100 * (row[k] / base[k] - 1):+.1f} %" for k in ("rps", "p99")]
                )
                lines.append(
                    f"| {ending} | {mode} | {protection} | {row['rps']:,.0f} | {row['p50']:.3f} | "
                    f"{row['p99']:.2f} | {row['envoy_cpu_us_per_req']:.1f} | "
                    + " | ".join(vs)
                    + " |"
                )
        if len(modes) > 1:
            local, shared = summary[ending]["local/limited"], summary[ending]["shared/limited"]
            rel = {k: 100 * (shared[k] / local[k] - 1) for k in local}
            lines.append(
                f"| {ending} | shared vs local | limited | {rel['rps']:+.1f} % | | "
                f"{rel['p99']:+.1f} % | {rel['envoy_cpu_us_per_req']:+.1f} % | | |"
            )
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "cells": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

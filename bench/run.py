"""Control-plane benchmark: how fast a committed policy change is live in a real Envoy.

Run from the repository root with the project's venv::

    python -m bench                      # full run (3-4 minutes on 2 cores)
    python -m bench --code HEAD          # the same on a snapshot of HEAD (see --code)
    python bench/run.py --sizes 10,1000 --samples 50 --additions 100   # quick run

For each size N a fresh stack is started (temporary SQLite file, two echo backends ``a``
and ``b``, ``gatewayctl serve`` as a subprocess, one Envoy), N routes are bulk-loaded in one
``Store.apply_objects`` transaction, and then:

* hot push: one route is moved between clusters ``a`` and ``b`` with ``Store.update``; the
  time from the commit returning to the first request through Envoy answered by the new
  backend (``x-backend`` header), polled on one keep-alive connection in a tight loop; the
  commit -> ACK time (``Store.proxies()`` ``acked_revision``) is polled in the same loop;
* controller RSS after the first push and after the samples, and its CPU time while idle;
* at the largest size: ``gatewayctl route update --wait`` wall time, and route additions
  (``Store.create``, one at a time) timed from commit to the first 200 instead of 404.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __package__ in (None, ""):  # `python bench/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (
    GATEWAY,
    Probe,
    Stack,
    cpu_seconds,
    make_route,
    route_name,
    route_path,
    rss_kib,
    set_cluster,
)
from bench.stats import summary

if TYPE_CHECKING:
    from controlplane.policy import Route

TARGETS = {"hot_p50_ms": 50.0, "hot_p99_ms": 150.0, "add_p99_ms": 100.0}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def fmt(s: dict[str, float]) -> str:
    return (
        f"p50 {s['p50']:.1f} ms  p90 {s['p90']:.1f}  p99 {s['p99']:.1f}  "
        f"max {s['max']:.1f}  (n={s['n']})"
    )


# -- phases ---------------------------------------------------------------------------------


def _routes(n: int) -> list[Route]:
    """/r/00000 -> b (keeps both clusters in use), the rest -> a."""
    return [make_route("r", i, "b" if i == 0 else "a") for i in range(n)]


def preloaded(stack: Stack, probe: Probe, n: int, t0: float) -> dict[str, Any]:
    """--preload: the routes were in the database before the controller started."""
    probe.wait_for(route_path("r", n - 1), lambda st, _b: st == 200, timeout=300)
    live_total = time.perf_counter() - t0
    revision = stack.store.revision() if stack.store is not None else 0
    ack = _wait_ack(stack, revision, t0, timeout=120)
    log(
        f"  {n} routes preloaded: stack start -> last route live {live_total:.2f} s, "
        f"-> ACK {ack:.2f} s"
    )
    return {"routes": n, "commit_s": 0.0, "live_s": live_total, "ack_s": ack}


def bulk_load(stack: Stack, probe: Probe, n: int) -> dict[str, Any]:
    """N routes in one transaction (see ``_routes``)."""
    assert stack.store is not None
    routes = _routes(n)
    t = time.perf_counter()
    result = stack.store.apply_objects(routes)
    commit = time.perf_counter() - t
    t0 = time.perf_counter()
    live = probe.wait_for(route_path("r", n - 1), lambda st, _b: st == 200, timeout=300)
    live_total = time.perf_counter() - t0
    ack = _wait_ack(stack, result.revision, t0, timeout=120)
    out = {
        "routes": n,
        "commit_s": commit,
        "live_s": live_total,
        "ack_s": ack,
        "revision": result.revision,
    }
    log(
        f"  bulk load {n} routes: commit {commit:.2f} s, commit -> last route live "
        f"{live:.2f} s, -> ACK {ack:.2f} s"
    )
    return out


def _wait_ack(stack: Stack, revision: int, t0: float, timeout: float) -> float:
    deadline = time.perf_counter() + timeout
    while stack.acked_revision() < revision:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"revision {revision} not ACKed after {timeout:g}s")
        time.sleep(0.001)
    return time.perf_counter() - t0


def idle_cpu(stack: Stack, seconds: float) -> dict[str, float]:
    """Controller CPU seconds over ``seconds`` of doing nothing (20 ms revision polling)."""
    time.sleep(1.0)  # let the status recorder and heartbeat settle
    pid = stack.controller_pid
    c0, t0 = cpu_seconds(pid), time.perf_counter()
    e0 = cpu_seconds(stack.envoy_pid)
    time.sleep(seconds)
    c1, t1 = cpu_seconds(pid), time.perf_counter()
    e1 = cpu_seconds(stack.envoy_pid)
    out = {
        "wall_s": t1 - t0,
        "controller_cpu_s": c1 - c0,
        "envoy_cpu_s": e1 - e0,
        "controller_cpu_pct": 100 * (c1 - c0) / (t1 - t0),
    }
    log(
        f"  idle {t1 - t0:.1f} s: controller CPU {c1 - c0:.3f} s "
        f"({out['controller_cpu_pct']:.1f} % of a core), Envoy {e1 - e0:.3f} s"
    )
    return out


def hot_push(
    stack: Stack, probe: Probe, n: int, samples: int, ack: bool, rng: random.Random
) -> dict[str, Any]:
    """Move one route between clusters a and b; commit returned -> first answer from the new one."""
    assert stack.store is not None
    target = n // 2 if n > 1 else 0
    name, path = route_name("r", target), route_path("r", target)
    status, current = probe.get(path)
    assert status == 200 and current in ("a", "b"), (status, current)
    load_before = loadavg().split()[0]
    http_s: list[float] = []
    ack_s: list[float] = []
    commit_s: list[float] = []
    pushes: list[tuple[int, float, float]] = []  # (revision, unix time committed, s to served)
    for _ in range(samples):
        want = "b" if current == "a" else "a"
        time.sleep(rng.uniform(0.03, 0.08))  # random phase against the controller's 20 ms poll
        t = time.perf_counter()
        result = stack.store.update("route", name, set_cluster(want))
        t0 = time.perf_counter()
        wall0 = time.time()
        commit_s.append(t0 - t)
        rev = result.revision
        got_http = got_ack = None
        deadline = t0 + 30
        while got_http is None or (ack and got_ack is None):
            if got_http is None:
                _st, backend = probe.get(path)
                if backend == want:
                    got_http = time.perf_counter() - t0
            if ack and got_ack is None and stack.acked_revision() >= rev:
                got_ack = time.perf_counter() - t0
            if time.perf_counter() > deadline:
                raise TimeoutError(f"revision {rev}: {path} not on {want} after 30 s")
        http_s.append(got_http)
        pushes.append((rev, wall0, got_http))
        if got_ack is not None:
            ack_s.append(got_ack)
        current = want
    out = {
        "routes": n,
        "route": name,
        "loadavg": load_before,
        "http": summary(http_s),
        "ack": summary(ack_s) if ack_s else None,
        "commit": summary(commit_s),
        "raw_http_s": http_s,
        "raw_ack_s": ack_s,
        **breakdown(stack, pushes),
    }
    log(f"  hot push, commit -> new backend: {fmt(out['http'])}")
    if ack_s:
        log(f"  hot push, commit -> ACK in DB:   {fmt(out['ack'])}")
    log(f"  hot push, Store.update itself:   {fmt(out['commit'])}")
    log_breakdown(out)
    return out


def breakdown(stack: Stack, pushes: list[tuple[int, float, float]]) -> dict[str, Any]:
    """Split each push with the controller's and Envoy's own log time stamps (1 ms).

    commit -> rebuilt: poll wait + read + translate (controller 'rebuilt in' log line);
    rebuilt -> Envoy received: event loop + gRPC send (Envoy 'Received gRPC message');
    Envoy received -> accepted: decode, validate, build the route table (Envoy main thread);
    accepted -> served: hand-over to the worker threads + probe granularity.
    """
    rebuilt = stack.rebuild_log()
    envoy = stack.envoy_route_log()
    parts: dict[str, list[float]] = {
        k: []
        for k in (
            "controller_rebuild",
            "commit_to_rebuilt",
            "rebuilt_to_served",
            "rebuilt_to_envoy_received",
            "envoy_received_to_accepted",
            "envoy_accepted_to_served",
        )
    }
    for rev, wall0, served in pushes:
        if rev not in rebuilt:
            continue
        end, ms = rebuilt[rev]
        parts["controller_rebuild"].append(ms / 1000)
        parts["commit_to_rebuilt"].append(max(end - wall0, 0.0))
        parts["rebuilt_to_served"].append(max(served - (end - wall0), 0.0))
        if rev in envoy:
            received, accepted = envoy[rev]
            parts["rebuilt_to_envoy_received"].append(max(received - end, 0.0))
            parts["envoy_received_to_accepted"].append(max(accepted - received, 0.0))
            parts["envoy_accepted_to_served"].append(max(wall0 + served - accepted, 0.0))
    out: dict[str, Any] = {k: summary(v) if v else None for k, v in parts.items()}
    pauses = stack.gc_pauses()
    if stack.gc_log and pushes:
        inside = [ms for at, ms in pauses if any(w0 <= at <= w0 + h for _r, w0, h in pushes)]
        out["gc_full_collections"] = {
            "during_pushes": len(inside),
            "pushes": len(pushes),
            "pause_ms_p50": summary([v / 1000 for v in inside])["p50"] if inside else 0.0,
            "pause_ms_max": max(inside, default=0.0),
        }
    return out


def log_breakdown(out: dict[str, Any]) -> None:
    if out.get("controller_rebuild"):
        log(f"    controller 'rebuilt in' (log): {fmt(out['controller_rebuild'])}")
        log(f"    commit -> rebuilt (poll wait + read + rebuild): {fmt(out['commit_to_rebuilt'])}")
        log(f"    rebuilt -> served (send + Envoy apply + probe): {fmt(out['rebuilt_to_served'])}")
    if out.get("envoy_received_to_accepted"):
        log(f"      rebuilt -> Envoy received:      {fmt(out['rebuilt_to_envoy_received'])}")
        log(f"      Envoy received -> accepted:     {fmt(out['envoy_received_to_accepted'])}")
        log(f"      Envoy accepted -> served:       {fmt(out['envoy_accepted_to_served'])}")
    g = out.get("gc_full_collections")
    if g:
        log(
            f"    full GCs in the controller during pushes: {g['during_pushes']} in "
            f"{g['pushes']} pushes, pause p50 {g['pause_ms_p50']:.0f} ms, "
            f"max {g['pause_ms_max']:.0f} ms"
        )


def cli_update(stack: Stack, probe: Probe, n: int, runs: int) -> dict[str, Any]:
    """Wall time of `gatewayctl route update NAME --cluster X --wait` (includes start-up)."""
    target = n // 2 if n > 1 else 0
    name, path = route_name("r", target), route_path("r", target)
    _st, current = probe.get(path)
    env = dict(os.environ, GATEWAY_DB=stack.db)
    update_s: list[float] = []
    for _ in range(runs):
        want = "b" if current == "a" else "a"
        t = time.perf_counter()
        proc = subprocess.run(
            [stack.gatewayctl, "route", "update", name, "--cluster", want, "--wait"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            cwd=stack.workdir,
        )
        update_s.append(time.perf_counter() - t)
        if proc.returncode != 0:
            raise RuntimeError(f"gatewayctl failed ({proc.returncode}): {proc.stderr}")
        # --wait returned: the proxy ACKed; the next request must already use the new cluster
        _st, backend = probe.get(path)
        if backend != want:
            log(f"  warning: after --wait returned, {path} still answered by {backend}")
        current = want
        time.sleep(0.2)
    startup_s: list[float] = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(
            [stack.gatewayctl, "route", "get", name],
            env=env,
            capture_output=True,
            check=True,
            cwd=stack.workdir,
        )
        startup_s.append(time.perf_counter() - t)
    out: dict[str, Any] = {
        "routes": n,
        "update_wait": summary(update_s),
        "route_get": summary(startup_s),
        "raw_update_wait_s": update_s,
    }
    log(
        f"  gatewayctl route update --wait: median {out['update_wait']['p50']:.0f} ms "
        f"(runs: {', '.join(f'{v * 1000:.0f}' for v in update_s)}); "
        f"`route get` (start-up + one read): median {out['route_get']['p50']:.0f} ms"
    )
    return out


def additions(stack: Stack, probe: Probe, n: int, count: int) -> dict[str, Any]:
    """Create `count` routes one at a time; commit returned -> first 200 (was 404)."""
    assert stack.store is not None
    live_s: list[float] = []
    commit_s: list[float] = []
    pushes: list[tuple[int, float, float]] = []
    for i in range(count):
        path = route_path("n", i)
        status, _ = probe.get(path)
        assert status == 404, f"{path} answered {status} before its route existed"
        t = time.perf_counter()
        rev = stack.store.create(make_route("n", i, "a"))
        t0 = time.perf_counter()
        wall0 = time.time()
        commit_s.append(t0 - t)
        live_s.append(probe.wait_for(path, lambda st, _b: st == 200, timeout=30, start=t0))
        pushes.append((rev, wall0, live_s[-1]))
        if (i + 1) % 200 == 0:
            log(f"    {i + 1}/{count} added, last {live_s[-1] * 1000:.0f} ms")
    out = {
        "routes_before": n,
        "added": count,
        "live": summary(live_s),
        "commit": summary(commit_s),
        "raw_live_s": live_s,
        **breakdown(stack, pushes),
    }
    log(f"  route additions, commit -> 404 becomes 200: {fmt(out['live'])}")
    log(f"  route additions, Store.create itself:      {fmt(out['commit'])}")
    log_breakdown(out)
    return out


# -- driver ---------------------------------------------------------------------------------


def run_size(n: int, args: argparse.Namespace, rng: random.Random, last: bool) -> dict[str, Any]:
    log(f"== {n} routes")
    out: dict[str, Any] = {"routes": n}
    with Stack(keep=args.keep, gc_log=args.gc_log, gc_freeze=args.gc_freeze) as stack:
        t = time.perf_counter()
        stack.start(_routes(n) if args.preload else ())
        out["startup_s"] = time.perf_counter() - t
        log(f"  stack up in {out['startup_s']:.1f} s (work dir {stack.workdir})")
        probe = Probe(stack.ports["listener"], gap=args.probe_gap_ms / 1000)
        try:
            if args.preload:
                out["bulk"] = preloaded(stack, probe, n, t)
            else:
                out["bulk"] = bulk_load(stack, probe, n)
            stack.freeze_controller_gc()
            out["rss_after_first_push_kib"] = rss_kib(stack.controller_pid)
            out["envoy_rss_after_first_push_kib"] = rss_kib(stack.envoy_pid)
            log(
                f"  RSS after first push: controller {out['rss_after_first_push_kib'] / 1024:.0f}"
                f" MiB, Envoy {out['envoy_rss_after_first_push_kib'] / 1024:.0f} MiB"
            )
            if args.idle > 0:
                out["idle"] = idle_cpu(stack, args.idle)
            out["hot"] = hot_push(stack, probe, n, args.samples, not args.no_ack, rng)
            out["rss_after_samples_kib"] = rss_kib(stack.controller_pid)
            log(
                f"  RSS after {args.samples} pushes: controller "
                f"{out['rss_after_samples_kib'] / 1024:.0f} MiB"
            )
            if last and args.cli_runs > 0:
                out["cli"] = cli_update(stack, probe, n, args.cli_runs)
            if last and args.additions > 0:
                out["additions"] = additions(stack, probe, n, args.additions)
                out["rss_after_additions_kib"] = rss_kib(stack.controller_pid)
            out["controller_alive"] = stack.procs["controller"].poll() is None
            out["envoy_alive"] = stack.procs["envoy"].poll() is None
        finally:
            probe.close()
    return out


def machine() -> dict[str, str]:
    envoy = Path(sys.executable).parent / "envoy"
    try:
        text = subprocess.run(
            [str(envoy), "--version"], capture_output=True, text=True, check=False
        ).stdout
        found = re.search(r"/(\d+\.\d+\.\d+)/", text)
        version = found.group(1) if found else "?"
    except OSError:
        version = "?"
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "python": platform.python_version(),
        "loadavg_start": loadavg(),
        "code_start": code_version(),
        "envoy": version,
        "kernel": platform.release(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def code_version() -> str:
    """The commit measured, and whether controlplane/ had uncommitted edits at that moment."""
    if os.environ.get("BENCH_CODE_SNAPSHOT"):
        return f"snapshot of {os.environ['BENCH_CODE_SNAPSHOT']} (git archive)"
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "controlplane"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" + uncommitted changes in controlplane/" if dirty else "")


def loadavg() -> str:
    """1/5/15-minute load averages: other work on the machine skews every figure here."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def report(results: list[dict[str, Any]], info: dict[str, str], args: argparse.Namespace) -> str:
    lines = [
        f"machine: {info['nproc']} cores ({info['cpu']}), Python {info['python']}, "
        f"Envoy {info['envoy']}, {info['date']}; load average at start {info['loadavg_start']}, "
        f"at end {info['loadavg_end']}; probe gap {args.probe_gap_ms:g} ms"
        + (", controller gc.freeze() after the bulk load" if args.gc_freeze else ""),
        f"code: {info['code_start']}"
        + (f" (at end: {info['code_end']})" if info["code_end"] != info["code_start"] else ""),
        "",
        "Hot push (one route moved between two clusters; ms from commit returned):",
        "",
        "| routes | samples | -> new backend p50 / p90 / p99 / max | -> ACK p50 / p99 | "
        "-> rebuilt p50 / p99 | rebuilt -> served p50 / p99 | of which Envoy received -> "
        "accepted p50 / p99 | rebuild (log) p50 / p99 | Store.update p50 | load avg |",
        "|---:|---:|---|---|---|---|---|---|---:|---|",
    ]

    def pair(d: dict[str, float] | None) -> str:
        return f"{d['p50']:.1f} / {d['p99']:.1f}" if d else "-"

    for r in results:
        h = r["hot"]
        x = h["http"]
        lines.append(
            f"| {r['routes']:,} | {x['n']} | {x['p50']:.1f} / {x['p90']:.1f} / {x['p99']:.1f} / "
            f"{x['max']:.1f} | {pair(h['ack'])} | {pair(h.get('commit_to_rebuilt'))} | "
            f"{pair(h.get('rebuilt_to_served'))} | {pair(h.get('envoy_received_to_accepted'))} | "
            f"{pair(h.get('controller_rebuild'))} | {h['commit']['p50']:.1f} | "
            f"{h.get('loadavg', '-')} |"
        )
    lines += [
        "",
        "Resources:",
        "",
        "| routes | bulk load: apply_objects / -> last route live (s) | controller RSS after "
        "first push / after pushes (MiB) | Envoy RSS (MiB) | controller CPU idle |",
        "|---:|---|---|---:|---|",
    ]
    for r in results:
        idle = r.get("idle")
        lines.append(
            f"| {r['routes']:,} | {r['bulk']['commit_s']:.2f} / {r['bulk']['live_s']:.2f} | "
            f"{r['rss_after_first_push_kib'] / 1024:.0f} / {r['rss_after_samples_kib'] / 1024:.0f}"
            f" | {r['envoy_rss_after_first_push_kib'] / 1024:.0f} | "
            + (
                f"{idle['controller_cpu_s'] * 1000:.0f} ms CPU in {idle['wall_s']:.1f} s "
                f"({idle['controller_cpu_pct']:.1f} % of a core)"
                if idle
                else "-"
            )
            + " |"
        )
    lines.append("")
    for r in results:
        if "additions" in r:
            ad = r["additions"]
            lines.append(
                f"route additions at {ad['routes_before']:,} routes ({ad['added']} one at a time, "
                f"Store.create): 404 -> 200 p50 {ad['live']['p50']:.1f} ms, p90 "
                f"{ad['live']['p90']:.1f}, p99 {ad['live']['p99']:.1f}, max "
                f"{ad['live']['max']:.1f}; Store.create p50 {ad['commit']['p50']:.1f} ms"
                + (
                    f"; controller rebuild p50 {ad['controller_rebuild']['p50']:.1f} ms"
                    if ad.get("controller_rebuild")
                    else ""
                )
            )
        if "cli" in r:
            c = r["cli"]
            lines.append(
                f"gatewayctl route update NAME --cluster X --wait at {c['routes']:,} routes: "
                f"median {c['update_wait']['p50']:.0f} ms of {c['update_wait']['n']} "
                f"(gatewayctl route get NAME: median {c['route_get']['p50']:.0f} ms)"
            )
    for r in results:
        g = r["hot"].get("gc_full_collections")
        if g:
            lines.append(
                f"controller full GCs during hot pushes at {r['routes']:,} routes: "
                f"{g['during_pushes']} in {g['pushes']} pushes, pause p50 "
                f"{g['pause_ms_p50']:.0f} ms, max {g['pause_ms_max']:.0f} ms"
            )
    lines.append("")
    lines.append("targets (issue): " + "; ".join(verdicts(results)))
    return "\n".join(lines)


def verdicts(results: list[dict[str, Any]]) -> list[str]:
    out = []
    big = max(results, key=lambda r: r["routes"])
    h = big["hot"]["http"]
    tag = f"at {big['routes']:,} routes"
    out.append(
        f"hot p50 {h['p50']:.1f} ms <= 50 ms {tag}: "
        + ("MET" if h["p50"] <= TARGETS["hot_p50_ms"] else "MISSED")
    )
    out.append(
        f"hot p99 {h['p99']:.1f} ms <= 150 ms {tag}: "
        + ("MET" if h["p99"] <= TARGETS["hot_p99_ms"] else "MISSED")
    )
    for r in results:
        if "additions" in r:
            p99 = r["additions"]["live"]["p99"]
            out.append(
                f"new route p99 {p99:.1f} ms <= 100 ms: "
                + ("MET" if p99 <= TARGETS["add_p99_ms"] else "MISSED")
            )
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--sizes",
        default="10,1000,10000",
        help="route counts, comma-separated (default 10,1000,10000)",
    )
    p.add_argument(
        "--samples", type=int, default=100, help="hot-push samples per size (default 100)"
    )
    p.add_argument(
        "--additions",
        type=int,
        default=1000,
        help="routes added one at a time at the largest size (default 1000; 0 skips)",
    )
    p.add_argument(
        "--cli-runs",
        type=int,
        default=5,
        help="gatewayctl route update --wait runs at the largest size (default 5)",
    )
    p.add_argument(
        "--idle",
        type=float,
        default=5.0,
        help="seconds of idle controller CPU measurement per size (default 5; 0 skips)",
    )
    p.add_argument(
        "--no-ack",
        action="store_true",
        help="do not poll Store.proxies() for the ACK during hot pushes",
    )
    p.add_argument(
        "--probe-gap-ms",
        type=float,
        default=0.0,
        help="sleep between probe requests (default 0: tight loop, as specified; "
        "a gap frees CPU for the controller on a small machine)",
    )
    p.add_argument(
        "--gc-log",
        action="store_true",
        help="run the controller via bench.controller_shim and count its full GCs",
    )
    p.add_argument(
        "--gc-freeze",
        action="store_true",
        help="experiment: gc.freeze() in the controller after the bulk load is live",
    )
    p.add_argument(
        "--code",
        default="worktree",
        metavar="REV",
        help="'worktree' (default: the installed, editable tree) or a git revision "
        "to measure from a `git archive` snapshot, immune to concurrent edits",
    )
    p.add_argument("--json", metavar="PATH", help="also write every figure and raw sample here")
    p.add_argument("--keep", action="store_true", help="keep work dirs (database, logs)")
    p.add_argument(
        "--preload",
        action="store_true",
        help="write the routes before the controller starts: no layout change before the "
        "pushes (a settled sharded gateway, docs/decisions/0017)",
    )
    p.add_argument("--seed", type=int, default=1)
    return p.parse_args(argv)


def code_of(code: str, raw: list[str], module: str) -> None:
    """A benchmark's ``--code REV``: re-run ``module`` on a snapshot of REV (never returns)
    unless this already is that run or REV is ``worktree``; say which code runs."""
    if code != "worktree" and not os.environ.get("BENCH_CODE_SNAPSHOT"):
        argv = [a for a in raw if not a.startswith("--code") and a != code]
        use_snapshot(code, argv, module=module)
    if os.environ.get("BENCH_CODE_SNAPSHOT"):
        print(f"controller code: snapshot of {os.environ['BENCH_CODE_SNAPSHOT']}")


def use_snapshot(rev: str, argv: list[str], module: str = "bench") -> None:
    """Re-run this benchmark on ``git archive <rev>`` of controlplane/ and envoy/.

    Other people may edit the working tree while a run is under way (the editable install
    makes every new controller and CLI process pick their edits up); a snapshot keeps the
    code fixed. PYTHONPATH puts the snapshot before the editable install in this process
    and in every child (controller, CLI, echo backends); ``bench`` itself stays importable.
    """
    root = Path(__file__).resolve().parent.parent
    sha = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--short", rev],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    target = Path(tempfile.mkdtemp(prefix=f"gw-bench-code-{sha}-"))
    archive = subprocess.run(
        ["git", "-C", str(root), "archive", sha, "controlplane", "envoy"],
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    env = dict(
        os.environ,
        BENCH_CODE_SNAPSHOT=sha,
        BENCH_COMMAND=" ".join(sys.argv[1:]),
        BENCH_CWD=os.getcwd(),
        PYTHONPATH=os.pathsep.join(
            filter(None, [str(target), str(root), os.environ.get("PYTHONPATH")])
        ),
    )
    log(f"running on a snapshot of {sha} in {target}")
    # cwd: `python -m` puts the current directory first on sys.path, ahead of PYTHONPATH
    code = subprocess.run(
        [sys.executable, "-m", module, *argv], env=env, cwd=target, check=False
    ).returncode
    shutil.rmtree(target, ignore_errors=True)
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(raw)
    if args.code != "worktree" and not os.environ.get("BENCH_CODE_SNAPSHOT"):
        use_snapshot(args.code, [a for a in raw if not a.startswith("--code") and a != args.code])
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    rng = random.Random(args.seed)
    info = machine()
    started = time.perf_counter()
    results = [run_size(n, args, rng, last=(i == len(sizes) - 1)) for i, n in enumerate(sizes)]
    info["duration_s"] = f"{time.perf_counter() - started:.0f}"
    info["loadavg_end"] = loadavg()
    info["code_end"] = code_version()
    if args.json:
        data = {"machine": info, "args": vars(args), "results": results}
        Path(os.environ.get("BENCH_CWD", "."), args.json).write_text(json.dumps(data, indent=1))
    text = report(results, info, args)
    print(text)
    print(
        f"\n(total {info['duration_s']} s; gateway {GATEWAY!r}; command: "
        f"python -m bench {os.environ.get('BENCH_COMMAND') or ' '.join(raw)})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

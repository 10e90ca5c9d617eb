"""Authentication overhead: requests per second and latency through Envoy with and without auth.

Run from the repository root with the project's venv::

    python -m bench.auth                       # 10 rounds x 6 cells x 3 s (about 3.5 min)
    python -m bench.auth --duration 2 --rounds 2   # quick look
    python -m bench.auth --delay-ms 1              # paced: latency below saturation
    python -m bench.auth --help

One stack (harness.Stack: SQLite file, echo backend ``a``, ``gatewayctl serve``, one Envoy)
carries one gateway with six routes, three protections x two endings:

* protection ``open`` (``auth: {}``), ``jwt`` (an RS256 token signed here, checked against an
  inline JWKS; the translator turns Envoy's JWT cache on) and ``api_key`` (one key out of
  1,000 keys of 1,000 consumers, so the key table has a realistic size);
* ending ``upstream`` (``/u/...``: forwarded to the Python echo backend) and ``direct``
  (``/d/...``: ``direct_response`` 200, Envoy answers itself, so only the filters differ).

Load comes from ``wrk`` (Debian package; installed here with apt-get when run as root), with
a fixed number of connections and threads, ``--latency``. The six cells are interleaved over
several rounds (the order rotates each round) so drift on a shared machine hits them all
alike; each figure is the median over the rounds. Any non-2xx answer, socket error, or an
Envoy status counter that disagrees fails the run: the credentials must really be accepted.

Envoy's own CPU time per request (``/proc/<pid>/stat`` before and after each cell) is
reported too: under a closed-loop load it is the most direct measure of what a filter costs.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/auth.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from bench.harness import GATEWAY, Stack, cpu_seconds
from bench.run import loadavg, machine
from controlplane.policy import AuthPolicy, Consumer, JwtProvider, Route, new_api_key

ISSUER = "https://issuer.bench.example"
AUDIENCE = "api"
PROVIDER = "bench"
CALLER = "c00500"  # the consumer whose key / token is sent
PROTECTIONS = ("open", "jwt", "api_key")
ENDINGS = ("upstream", "direct")
TARGET_P99_PCT = 10.0  # the issue: each (JWT, API key) adds <= 10 % to p99 over no auth


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- credentials ----------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Signer:
    """An RSA-2048 key pair, its JWKS and RS256 tokens (as in tests/e2e/test_auth.py)."""

    def __init__(self, kid: str = "bench-1") -> None:
        self.kid = kid
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwks(self) -> str:
        numbers = self.key.public_key().public_numbers()
        jwk = {
            "kty": "RSA",
            "alg": "RS256",
            "use": "sig",
            "kid": self.kid,
            "n": _b64(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
            "e": _b64(numbers.e.to_bytes(3, "big")),
        }
        return json.dumps({"keys": [jwk]})

    def token(self, sub: str, lifetime_s: int) -> str:
        now = int(time.time())
        payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now, "exp": now + lifetime_s}
        head = _b64(json.dumps({"alg": "RS256", "typ": "JWT", "kid": self.kid}).encode())
        body = _b64(json.dumps(payload).encode())
        signature = self.key.sign(f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{head}.{body}.{_b64(signature)}"


# -- wrk ------------------------------------------------------------------------------------


def ensure_wrk() -> str:
    """Path of wrk; installs Debian's package when missing and running as root."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0:
        raise SystemExit(
            "wrk not found: install it first (Debian/Ubuntu: sudo apt-get install -y wrk)"
        )
    log("wrk not found: apt-get install -y wrk")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], env=env).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], env=env, check=True)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk still not found after apt-get install")
    return found


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> dict[str, Any]:
    """Requests, rps, latency percentiles (ms), errors from ``wrk --latency`` output."""
    res: dict[str, Any] = {}
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)\s*$", out, re.MULTILINE)
        if not m:
            raise ValueError(f"no {pct}% latency in wrk output:\n{out}")
        res[f"p{pct}"] = _ms(m.group(1))
    m = re.search(r"^\s+Latency\s+(\S+)\s+(\S+)\s+(\S+)", out, re.MULTILINE)
    if m:
        res["mean"], res["max"] = _ms(m.group(1)), _ms(m.group(3))
    m = re.search(r"^\s+(\d+) requests in ([0-9.]+)(\w+)", out, re.MULTILINE)
    if not m:
        raise ValueError(f"no request count in wrk output:\n{out}")
    res["requests"] = int(m.group(1))
    res["rps"] = float(re.search(r"^Requests/sec:\s+([0-9.]+)", out, re.MULTILINE).group(1))  # type: ignore[union-attr]
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["socket_errors"] = sum(int(g) for g in m.groups()) if m else 0
    return res


def machine_busy_s() -> float:
    """CPU seconds all cores spent not idle (from /proc/stat), to see outside load."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


# -- the stack ------------------------------------------------------------------------------


def path_of(ending: str, protection: str) -> str:
    return f"/{ending[0]}/{protection.replace('_', '-')}"


def build_policy(stack: Stack, signer: Signer, n_consumers: int) -> None:
    """Provider, consumers with one key each (but the caller's), six routes, in one commit."""
    assert stack.store is not None
    objects: list[Any] = [
        JwtProvider(name=PROVIDER, issuer=ISSUER, audiences=[AUDIENCE], jwks=signer.jwks())
    ]
    for i in range(n_consumers):
        name = f"c{i:05d}"
        objects.append(Consumer(name=name, groups=["customers"] if i % 2 else []))
        if name != CALLER:  # the caller's key is added with the CLI, after start-up
            objects.append(new_api_key(name))
    auth = {
        "open": AuthPolicy(),
        "jwt": AuthPolicy(jwt=[PROVIDER]),
        "api_key": AuthPolicy(api_key=True),
    }
    for ending in ENDINGS:
        for protection in PROTECTIONS:
            action: dict[str, Any] = (
                {"cluster": "a"}
                if ending == "upstream"
                else {"direct_response": {"status": 200, "body": "ok\n"}}
            )
            objects.append(
                Route(
                    name=f"{ending}-{protection.replace('_', '-')}",
                    gateways=[GATEWAY],
                    match={"path_prefix": path_of(ending, protection)},
                    auth=auth[protection],
                    **action,
                )
            )
    stack.store.apply_objects(objects)


def add_key_with_cli(stack: Stack, consumer: str) -> str:
    """``gatewayctl consumer key add CONSUMER --wait``: the key, printed once."""
    done = subprocess.run(
        [stack.gatewayctl, "--db", stack.db, "consumer", "key", "add", consumer, "--wait"],
        capture_output=True,
        text=True,
        check=False,
        cwd=stack.workdir,
    )
    if done.returncode != 0:
        raise RuntimeError(f"consumer key add failed: {done.stderr.strip()}")
    return done.stdout.strip()


def _get(port: int, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def precheck(port: int, creds: dict[str, dict[str, str]]) -> None:
    """Every route: 200 with its credentials, 401 without (open: 200); the caller identified."""
    deadline = time.monotonic() + 30
    while _get(port, path_of("direct", "api_key"), creds["api_key"])[0] != 200:
        if time.monotonic() > deadline:
            raise RuntimeError("the caller's API key is not accepted after 30 s")
        time.sleep(0.1)
    wrong = {
        "jwt": {"authorization": "Bearer " + creds["jwt"]["authorization"][7:-4] + "AAAA"},
        "api_key": {"x-api-key": "gw_not-a-key-of-anyone-here-123"},
    }
    for ending in ENDINGS:
        for protection in PROTECTIONS:
            path = path_of(ending, protection)
            status, body = _get(port, path, creds[protection])
            if status != 200:
                raise RuntimeError(f"{path} with credentials: {status} {body[:200]!r}")
            if ending == "upstream":
                seen = json.loads(body)["headers"].get("x-consumer-id")
                want = None if protection == "open" else CALLER
                if seen != want:
                    raise RuntimeError(f"{path}: backend saw x-consumer-id {seen!r}, not {want!r}")
            if protection != "open":
                for headers in ({}, wrong[protection]):
                    status, _ = _get(port, path, headers)
                    if status != 401:
                        raise RuntimeError(f"{path} with {headers or 'no credentials'}: {status}")
    log("  pre-check: each route 200 with its credentials; 401 without or with bad ones")


def envoy_stats(admin_port: int) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/stats", timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if value.strip().isdigit():
            out[name] = int(value)
    return out


def stat_delta(before: dict[str, int], after: dict[str, int], name: str) -> int:
    return after.get(name, 0) - before.get(name, 0)


# -- one cell -------------------------------------------------------------------------------


def pacing_script(stack: Stack, delay_ms: int) -> Path:
    """A wrk Lua script: each connection waits ``delay_ms`` after an answer (wrk's delay())."""
    path = stack.workdir / f"pace-{delay_ms}.lua"
    if not path.exists():
        path.write_text(f"function delay()\n  return {int(delay_ms)}\nend\n")
    return path


def run_cell(
    stack: Stack,
    wrk: str,
    ending: str,
    protection: str,
    headers: dict[str, str],
    args: argparse.Namespace,
    duration: float,
) -> dict[str, Any]:
    url = f"http://127.0.0.1:{stack.ports['listener']}{path_of(ending, protection)}"
    command = [
        wrk,
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{duration:g}s",
        "--timeout",
        "5s",
        "--latency",
        *(x for k, v in headers.items() for x in ("-H", f"{k}: {v}")),
        *(["-s", str(pacing_script(stack, args.delay_ms))] if args.delay_ms else []),
        url,
    ]
    stats0 = envoy_stats(stack.ports["admin"])
    envoy0, echo0 = cpu_seconds(stack.envoy_pid), cpu_seconds(stack.procs["echo-a"].pid)
    ctl0, busy0, t0 = cpu_seconds(stack.controller_pid), machine_busy_s(), time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    output = proc.stdout.read().decode(errors="replace")
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    envoy1, echo1 = cpu_seconds(stack.envoy_pid), cpu_seconds(stack.procs["echo-a"].pid)
    ctl1, busy1 = cpu_seconds(stack.controller_pid), machine_busy_s()
    stats1 = envoy_stats(stack.ports["admin"])
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited with {proc.returncode}:\n{output}")
    res = parse_wrk(output)
    wrk_cpu = usage.ru_utime + usage.ru_stime
    ours = (envoy1 - envoy0) + (echo1 - echo0) + (ctl1 - ctl0) + wrk_cpu
    res.update(
        ending=ending,
        protection=protection,
        wall_s=wall,
        envoy_cpu_us_per_req=1e6 * (envoy1 - envoy0) / max(res["requests"], 1),
        envoy_cores=(envoy1 - envoy0) / wall,
        echo_cores=(echo1 - echo0) / wall,
        wrk_cores=wrk_cpu / wall,
        outside_cores=max(0.0, (busy1 - busy0) - ours) / wall,
        envoy_2xx=stat_delta(stats0, stats1, f"http.{GATEWAY}.downstream_rq_2xx"),
        envoy_4xx=stat_delta(stats0, stats1, f"http.{GATEWAY}.downstream_rq_4xx"),
        envoy_5xx=stat_delta(stats0, stats1, f"http.{GATEWAY}.downstream_rq_5xx"),
        jwt_allowed=stat_delta(stats0, stats1, f"http.{GATEWAY}.jwt_authn.allowed"),
        jwt_cache_hit=stat_delta(stats0, stats1, f"http.{GATEWAY}.jwt_authn.jwt_cache_hit"),
        jwt_cache_miss=stat_delta(stats0, stats1, f"http.{GATEWAY}.jwt_authn.jwt_cache_miss"),
        api_key_allowed=stat_delta(stats0, stats1, f"http.{GATEWAY}.api_key_auth.allowed"),
        backend_2xx=stat_delta(stats0, stats1, "cluster.a.upstream_rq_2xx"),
        output=output,
    )
    check_cell(res)
    return res


def check_cell(res: dict[str, Any]) -> None:
    """Fail on any refused or failed request: the numbers must be of accepted requests."""
    what = f"{res['ending']}/{res['protection']}"
    problems = []
    if res["non_2xx"] or res["socket_errors"]:
        problems.append(f"wrk: {res['non_2xx']} non-2xx, {res['socket_errors']} socket errors")
    if res["envoy_4xx"] or res["envoy_5xx"]:
        problems.append(f"Envoy counted {res['envoy_4xx']} 4xx and {res['envoy_5xx']} 5xx")
    # wrk counts completed requests; Envoy may also count the few in flight at the end
    if res["envoy_2xx"] < res["requests"]:
        problems.append(f"Envoy counted {res['envoy_2xx']} 2xx < wrk's {res['requests']}")
    if (res["backend_2xx"] >= res["requests"]) != (res["ending"] == "upstream"):
        problems.append(f"{res['backend_2xx']} answers from the backend")
    if res["protection"] == "jwt" and res["jwt_allowed"] < res["requests"]:
        problems.append(f"jwt_authn allowed {res['jwt_allowed']} < {res['requests']} requests")
    if (
        res["protection"] == "jwt"
        and res["jwt_cache_hit"] + res["jwt_cache_miss"] < res["requests"]
    ):
        problems.append("fewer tokens looked up in the JWT cache than requests")
    if res["protection"] == "api_key" and res["api_key_allowed"] < res["requests"]:
        problems.append(f"api_key_auth allowed {res['api_key_allowed']} < {res['requests']}")
    if res["protection"] != "api_key" and res["api_key_allowed"]:
        problems.append(f"api_key_auth allowed {res['api_key_allowed']} on a route without keys")
    if problems:
        raise RuntimeError(f"{what}: " + "; ".join(problems) + "\n" + res["output"])


# -- the run --------------------------------------------------------------------------------


def schedule(rounds: int) -> list[list[tuple[str, str]]]:
    """Per round the six cells; the protection order rotates and the ending order alternates."""
    out = []
    for r in range(rounds):
        order = PROTECTIONS[r % 3 :] + PROTECTIONS[: r % 3]
        endings = ENDINGS if r % 2 == 0 else ENDINGS[::-1]
        out.append([(e, p) for p in order for e in endings])
    return out


def median_of(cells: list[dict[str, Any]], key: str) -> float:
    return statistics.median(c[key] for c in cells)


def summarise(results: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per ending and protection the median over rounds; overheads against ``open``.

    ``*_pct`` compares the medians; ``*_pct_paired`` is the median of the same comparison
    made within each round (the three cells of a round ran within a minute of each other).
    """
    keys = ("rps", "p50", "p90", "p99", "envoy_cpu_us_per_req", "outside_cores", "echo_cores")
    rounds = sorted({c["round"] for c in results})
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for ending in ENDINGS:
        out[ending] = {}
        for protection in PROTECTIONS:
            cells = [c for c in results if c["ending"] == ending and c["protection"] == protection]
            row: dict[str, Any] = {k: median_of(cells, k) for k in keys}
            row["rounds"] = len(cells)
            out[ending][protection] = row
        base = out[ending]["open"]
        for protection in PROTECTIONS[1:]:
            row = out[ending][protection]
            for k in ("p50", "p99", "rps"):
                row[f"{k}_pct"] = 100 * (row[k] / base[k] - 1)
                paired = []
                for r in rounds:
                    pick = {
                        c["protection"]: c[k]
                        for c in results
                        if c["round"] == r and c["ending"] == ending
                    }
                    if protection in pick and "open" in pick:
                        paired.append(100 * (pick[protection] / pick["open"] - 1))
                row[f"{k}_pct_paired"] = statistics.median(paired)
                row[f"{k}_pct_rounds"] = paired
            row["cpu_us_added"] = row["envoy_cpu_us_per_req"] - base["envoy_cpu_us_per_req"]
    return out


def report(
    summary: dict[str, dict[str, dict[str, Any]]], info: dict[str, str], args: argparse.Namespace
) -> str:
    load = (
        f"each connection waits {args.delay_ms} ms between requests (paced)"
        if args.delay_ms
        else "closed loop, as fast as answers come"
    )
    lines = [
        f"machine: {info['nproc']} cores ({info['cpu']}), Envoy {info['envoy']}, "
        f"{info['date']}; load average at start {info['loadavg_start']}, "
        f"at end {info['loadavg_end']}",
        f"code: {info['code_start']}; wrk {args.threads} thread(s), {args.connections} "
        f"connections, {load}; {args.rounds} rounds x 6 cells x {args.duration:g} s; "
        f"{args.consumers} consumers with one API key each; run took {info['duration_s']} s",
        "",
        "Medians over rounds; 'vs open' = median vs median (median of per-round ratios):",
        "",
        "| ending | route | rps | p50 ms | p90 ms | p99 ms | Envoy CPU us/req "
        "| p50 vs open | p99 vs open | rps vs open |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def pct(row: dict[str, Any], k: str) -> str:
        return f"{row[f'{k}_pct']:+.1f} % ({row[f'{k}_pct_paired']:+.1f})"

    for ending in ENDINGS:
        for protection in PROTECTIONS:
            row = summary[ending][protection]
            vs = (
                ["", "", ""]
                if protection == "open"
                else [pct(row, k) for k in ("p50", "p99", "rps")]
            )
            lines.append(
                f"| {ending} | {protection} | {row['rps']:,.0f} | {row['p50']:.3f} | "
                f"{row['p90']:.3f} | {row['p99']:.2f} | {row['envoy_cpu_us_per_req']:.1f} | "
                + " | ".join(vs)
                + " |"
            )
    lines += [
        "",
        f"Target: each of JWT and API key adds <= {TARGET_P99_PCT:g} % to p99 over no auth",
    ]
    for ending in ENDINGS:
        for protection in PROTECTIONS[1:]:
            row = summary[ending][protection]
            met = "met" if row["p99_pct"] <= TARGET_P99_PCT else "MISSED"
            spread = row["p99_pct_rounds"]
            lines.append(
                f"  {ending:8} {protection:7}: p99 {row['p99_pct']:+.1f} % -> {met} "
                f"(per round {min(spread):+.0f} .. {max(spread):+.0f} %); "
                f"Envoy CPU {row['cpu_us_added']:+.1f} us/request"
            )
    outside = [summary[e][p]["outside_cores"] for e in ENDINGS for p in PROTECTIONS]
    echo = statistics.median(summary["upstream"][p]["echo_cores"] for p in PROTECTIONS)
    lines += [
        "",
        f"outside load (cores busy with processes other than this stack and wrk): median "
        f"{statistics.median(outside):.2f}; echo backend on upstream cells: {echo:.2f} cores",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.auth",
        description="Requests/s and latency through Envoy: no auth vs JWT vs API key.",
    )
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per cell (3)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (16)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (1)")
    parser.add_argument("--rounds", type=int, default=10, help="rounds of the 6 cells (10)")
    parser.add_argument("--warmup", type=float, default=1.0, help="s per cell before round 1")
    parser.add_argument(
        "--delay-ms",
        type=int,
        default=0,
        help="paced load: each connection waits this long between requests (wrk Lua delay); "
        "default 0, as fast as answers come",
    )
    parser.add_argument("--consumers", type=int, default=1000, help="consumers, one key each")
    parser.add_argument("--json", help="write every cell (with wrk's output) to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    if args.connections < args.threads:
        parser.error("--connections must be >= --threads")
    if args.consumers <= int(CALLER[1:]):
        parser.error(f"--consumers must be > {int(CALLER[1:])}")
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        return run(parse_args(argv))
    except RuntimeError as exc:  # a refused request, a failed check: the figures are void
        log(f"FAILED: {exc}")
        return 1


def run(args: argparse.Namespace) -> int:
    wrk = ensure_wrk()
    info = machine()
    log(f"load average {info['loadavg_start']}; code {info['code_start']}")
    signer = Signer()
    cells_total = args.rounds * 6 * args.duration + 6 * args.warmup
    token = signer.token(CALLER, lifetime_s=int(cells_total) + 3600)
    results: list[dict[str, Any]] = []
    started = time.perf_counter()
    with Stack(keep=args.keep) as stack:
        t = time.perf_counter()
        stack.start_backends()
        stack.seed()
        build_policy(stack, signer, args.consumers)
        stack.start_controller()
        stack.start_envoy()
        key = add_key_with_cli(stack, CALLER)
        log(
            f"  stack up in {time.perf_counter() - t:.1f} s: {args.consumers} consumers, "
            f"{args.consumers} API keys (the caller's via `gatewayctl consumer key add --wait`)"
        )
        creds = {
            "open": {},
            "jwt": {"authorization": f"Bearer {token}"},
            "api_key": {"x-api-key": key},
        }
        precheck(stack.ports["listener"], creds)
        if args.warmup > 0:
            for ending, protection in schedule(1)[0]:
                run_cell(stack, wrk, ending, protection, creds[protection], args, args.warmup)
            log(f"  warm-up: {args.warmup:g} s per cell")
        for r, cells in enumerate(schedule(args.rounds)):
            for ending, protection in cells:
                res = run_cell(
                    stack, wrk, ending, protection, creds[protection], args, args.duration
                )
                res["round"] = r
                res["loadavg"] = loadavg()
                results.append(res)
                log(
                    f"  round {r + 1} {ending:8} {protection:7}: {res['rps']:8,.0f} rps  "
                    f"p50 {res['p50']:.2f}  p90 {res['p90']:.2f}  p99 {res['p99']:.2f} ms  "
                    f"Envoy {res['envoy_cpu_us_per_req']:.1f} us/req  "
                    f"outside {res['outside_cores']:.2f} cores  load {res['loadavg'].split()[0]}"
                )
        cached = sum(c["jwt_cache_hit"] for c in results)
        missed = sum(c["jwt_cache_miss"] for c in results)
        log(f"  jwt cache over the measured cells: {cached} hits, {missed} misses")
    info["loadavg_end"] = loadavg()
    info["duration_s"] = f"{time.perf_counter() - started:.0f}"
    summary = summarise(results)
    text = report(summary, info, args)
    print(text)
    if args.json:
        data = {"machine": info, "args": vars(args), "summary": summary, "cells": results}
        Path(args.json).write_text(json.dumps(data, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

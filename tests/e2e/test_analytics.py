"""Usage analytics end to end: real Envoy -> access-log service -> rollups -> gatewayctl.

Exactly 10,000 requests from three consumers over two routes, with status codes the test
chooses, must come out of ``gatewayctl analytics`` with exactly those counts per consumer,
route and status class, and with latency percentiles consistent with what the client saw.
"""

from __future__ import annotations

import http.client
import json
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from controlplane.analytics import histogram
from controlplane.analytics.rollup import Filter, RollupReader
from controlplane.demo.echo import EchoServer

from .harness import Cli, Controller, Envoy, wait_until

CONSUMERS = ("acme", "globex", "initech")
ROUTES = {"orders": "/orders", "users": "/users"}
#: status codes the backend is asked for, in turn
CODES = (200, 200, 200, 201, 302, 404, 503)
#: the users route is answered after this delay, a floor for its percentiles
DELAY_MS = 8
TOTAL = 10_000
THREADS = 8


def _plan(i: int) -> tuple[str, str, int]:
    return CONSUMERS[i % 3], ("orders", "users")[(i // 3) % 2], CODES[(i // 6) % len(CODES)]


def _klass(code: int) -> str:
    return f"{code // 100}xx"


def drive(
    port: int, keys: dict[str, str], total: int
) -> tuple[Counter[Any], dict[str, list[float]]]:
    """Send requests 0..total-1 over keep-alive connections from several threads; return
    what the client counted per (consumer, route, status class) and its latencies per route."""
    counts: Counter[Any] = Counter()
    latencies: dict[str, list[float]] = {r: [] for r in ROUTES}
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker(first: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine: Counter[Any] = Counter()
        lat: dict[str, list[float]] = {r: [] for r in ROUTES}
        try:
            for i in range(first, total, THREADS):
                consumer, route, code = _plan(i)
                headers = {"x-api-key": keys[consumer], "x-echo-status": str(code)}
                if route == "users":
                    headers["x-echo-delay-ms"] = str(DELAY_MS)
                started = time.perf_counter()
                conn.request("GET", ROUTES[route], headers=headers)
                resp = conn.getresponse()
                resp.read()
                lat[route].append((time.perf_counter() - started) * 1e3)
                assert resp.status == code, (resp.status, code)
                mine[(consumer, route, _klass(resp.status))] += 1
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            conn.close()
            with lock:
                counts.update(mine)
                for r, values in lat.items():
                    latencies[r].extend(values)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return counts, latencies


def setup_gateway(
    cli: Cli, port: int, backend: EchoServer, gateway: dict[str, Any]
) -> dict[str, str]:
    """One `apply -f` (every CLI call costs a second on a busy machine), then the API keys."""
    policy = {
        "gateways": [{"name": "public", "port": port, "address": "127.0.0.1", **gateway}],
        "clusters": [{"name": "echo", "endpoints": [f"127.0.0.1:{backend.port}"]}],
        # an hour limit: usage counts it from the rollups (day/week/month quotas are counted
        # by the quota counters of the routes that apply them, and these routes apply none)
        "plans": [{"name": "pro", "limits": [{"requests": 1_000_000, "per": "hour"}]}],
        "consumers": [{"name": "acme", "plan": "pro"}] + [{"name": name} for name in CONSUMERS[1:]],
        "routes": [
            {
                "name": name,
                "gateway": "public",
                "match": {"path_prefix": prefix},
                "cluster": "echo",
                "auth": {"api_key": True},
            }
            for name, prefix in ROUTES.items()
        ],
    }
    cli.run("apply", "-f", "-", input=json.dumps(policy))
    return {name: cli.run("consumer", "key", "add", name).stdout.strip() for name in CONSUMERS}


def exact_counts(cli: Cli, *extra: str) -> Counter[Any]:
    """(consumer, route, status class) -> requests, as `gatewayctl analytics` reports them."""
    out: Counter[Any] = Counter()
    for route in ROUTES:
        for entry in cli.json(
            "analytics", "consumers", "--since", "15m", "--route", route, "--limit", "0", *extra
        ):
            for klass, n in entry["status"].items():
                out[(entry["consumer"], route, klass)] += n
    return out


def db_total(cli: Cli) -> int:
    """Requests in the rollups, read directly (cheap enough to poll; the CLI is checked below)."""
    now = time.time()
    return RollupReader.open(cli.db).total_requests(Filter(now - 900, now + 60))


def total_requests(cli: Cli) -> int:
    return int(cli.json("analytics", "summary", "--since", "15m")["requests"])


def test_exact_counts_and_percentiles(
    cli: Cli, controller: Controller, envoy_factory: Callable[..., Envoy], gateway_port: int
) -> None:
    backend = EchoServer("alpha").start()
    try:
        keys = setup_gateway(cli, gateway_port, backend, {"analytics": {"enabled": True}})
        envoy_factory("public")
        # Every answered probe is logged too (a refused connection is not): count them.
        probes: Counter[int] = Counter()

        def ready() -> bool:
            status = _status(gateway_port, keys["acme"])
            if status:
                probes[status] += 1
            return status == 200

        hour = time.time() // 3600
        wait_until(ready, timeout=15)
        baseline = sum(probes.values())
        wait_until(lambda: db_total(cli) == baseline, timeout=15, interval=0.2)

        counts, latencies = drive(gateway_port, keys, TOTAL)
        assert sum(counts.values()) == TOTAL

        wait_until(lambda: db_total(cli) >= baseline + TOTAL, timeout=30, interval=0.2)
        time.sleep(2.2)  # Envoy's buffer and one more flush: nothing beyond 10,000 may show up
        assert total_requests(cli) == baseline + TOTAL

        reported = exact_counts(cli)
        # the probes' 200s were acme's on /orders (any other probe answer, normally none,
        # is somewhere else); everything else must match exactly
        assert all(reported[key] >= n for key, n in counts.items())
        extra = reported - counts
        assert sum(extra.values()) == baseline - sum(
            n for s, n in probes.items() if s != 200 and not _counted(s)
        )
        assert extra[("acme", "orders", "2xx")] == probes[200]

        # by route, with the route filter and JSON output
        routes = {r["route"]: r for r in cli.json("analytics", "routes", "--since", "15m")}
        for route in ROUTES:
            expected = sum(n for (_, r, _), n in counts.items() if r == route)
            extra = baseline if route == "orders" else 0
            assert routes[route]["requests"] == expected + extra

        # Envoy's time is inside the client's, so each rollup percentile (the upper bound of
        # its bucket) is at most the upper bound of the client's bucket; the backend delay
        # is a floor for the delayed route.
        users = cli.json("analytics", "summary", "--since", "15m", "--route", "users")
        client = sorted(latencies["users"])
        for q, name in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
            exact = client[max(0, math.ceil(q * len(client)) - 1)]
            reported_ms = users["latency_ms"][name]
            # reports round to 3 decimals (report.py _round): allow half a unit of that
            assert reported_ms <= histogram.upper_bound(histogram.bucket_of(exact)) + 0.0005
            assert reported_ms >= DELAY_MS
        assert users["status"] == {
            k: sum(n for (_, r, c), n in counts.items() if r == "users" and c == k)
            for k in users["status"]
        }

        # usage against the plan: acme's requests this hour (the probes were acme's too)
        acme = sum(n for (c, _, _), n in counts.items() if c == "acme") + baseline
        usage = cli.run("analytics", "usage", "acme").stdout.strip()
        if time.time() // 3600 == hour:  # else the hour turned during the test: fewer
            assert usage == f"acme: {acme:,} of 1,000,000 this hour"
        else:
            assert usage.startswith("acme: ") and usage.endswith(" of 1,000,000 this hour")

        # the table output names every consumer
        table = cli.run("analytics", "consumers", "--since", "15m").stdout
        assert all(name in table for name in CONSUMERS), table
    finally:
        backend.stop()


def _counted(status: int) -> bool:
    """Whether a probe answer lands under a route (exact_counts reads per route)."""
    return status != 404


def _status(port: int, key: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/orders", headers={"x-api-key": key})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except OSError:
        return 0
    finally:
        conn.close()

"""Usage that bills correctly, end to end: real Envoy -> access-log sink -> rollups -> export.

Exactly N requests with a known mix: admitted answers (including a backend's own 429 and
401, which are not the gateway's refusals), requests the gateway throttles (a consumer on a
100/hour plan), requests with a wrong API key (401 from the gateway) and backend 5xx. The
hourly export (CSV locally, JSON Lines through the admin API) must add up to exactly what
the client counted per consumer and class; ``analytics usage`` counts only what the limit
let through.
"""

from __future__ import annotations

import csv
import http.client
import io
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from controlplane.analytics.rollup import Filter, RollupReader
from controlplane.demo.echo import EchoServer
from controlplane.envoy_launcher import free_port

from .harness import Cli, Controller, Envoy, Remote, clear_of_boundary, wait_until

pytestmark = pytest.mark.e2e

#: the issue's acceptance: exactly 10,000 requests
TOTAL = 10_000
THREADS = 4
CLASSES = ("admitted", "throttled", "unauthenticated", "upstream_errors", "refused")
#: request i does what PLAN[i % 10] says: (consumer or None for a wrong key, status asked)
PLAN = (
    ("acme", 200),
    ("acme", 200),
    ("acme", 201),
    ("acme", 200),
    ("acme", 429),  # the backend's own 429: admitted, not throttled
    ("acme", 503),
    (None, 200),  # a wrong key: the gateway answers 401
    ("globex", 200),
    ("globex", 401),  # the backend's own 401: admitted, not unauthenticated
    ("globex", 502),
)
#: globex's plan: the first 100 requests pass (including 5xx: the limit let them through)
GLOBEX_PER_HOUR = 100


@dataclass
class Site:
    cli: Cli
    admin: Remote
    port: int
    keys: dict[str, str]


def _token(cli: Cli) -> str:
    out = cli.run("token", "add", "billing", "--role", "viewer").stdout
    return next(word for word in out.split() if word.startswith("gw_"))


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    cli = Cli(db=str(tmp_path / "gateway.db"))
    admin_port = free_port()
    controller = Controller(cli, tmp_path, ("--admin-address", f"127.0.0.1:{admin_port}"))
    controller.start()
    backend = EchoServer("alpha").start()
    port = free_port()
    policy = {
        "gateways": [
            {
                "name": "public",
                "port": port,
                "address": "127.0.0.1",
                "analytics": {"enabled": True},
            }
        ],
        "clusters": [{"name": "echo", "endpoints": [f"127.0.0.1:{backend.port}"]}],
        "plans": [
            {"name": "pro", "limits": [{"requests": 1_000_000, "per": "day"}]},
            {
                "name": "tiny",
                "limits": [
                    {"requests": 1000, "per": "second"},
                    {"requests": GLOBEX_PER_HOUR, "per": "hour"},
                ],
            },
        ],
        "consumers": [{"name": "acme", "plan": "pro"}, {"name": "globex", "plan": "tiny"}],
        "routes": [
            {
                "name": "orders",
                "gateway": "public",
                "match": {"path_prefix": "/orders"},
                "cluster": "echo",
                "auth": {"api_key": True},
                "rate_limit": {"key": "consumer"},
            },
            {
                "name": "ready",
                "gateway": "public",
                "match": {"path_prefix": "/ready"},
                "cluster": "echo",
            },
        ],
    }
    envoy = None
    try:
        cli.run("apply", "-f", "-", input=json.dumps(policy))
        keys = {n: cli.run("consumer", "key", "add", n).stdout.strip() for n in ("acme", "globex")}
        admin = Remote(f"http://127.0.0.1:{admin_port}", _token(cli), tmp_path / "remote")
        envoy = Envoy("public", "public-1", controller.xds_port, tmp_path)
        wait_until(lambda: _get(port, "/ready", {})[0] == 200, timeout=30, interval=0.2)
        yield Site(cli, admin, port, keys)
    finally:
        if envoy is not None:
            envoy.stop()
        backend.stop()
        controller.stop()


def _get(port: int, path: str, headers: dict[str, str]) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.getheader("x-backend", "")
    except OSError:
        return 0, ""
    finally:
        conn.close()


def _client_class(consumer: str | None, asked: int, status: int, backend: str) -> str:
    """What the client knows happened: the echo backend names itself on its answers."""
    if backend:
        return "upstream_errors" if status >= 500 else "admitted"
    if status == 429:
        return "throttled"
    if status == 401 and consumer is None:
        return "unauthenticated"
    raise AssertionError(f"unexpected answer {status} without the backend (asked {asked})")


def drive(site: Site) -> Counter[tuple[str, str]]:
    """Send requests 0..TOTAL-1 from several threads on keep-alive connections; return
    (consumer, class) -> count as the client saw them ("" for the wrong-key requests)."""
    counts: Counter[tuple[str, str]] = Counter()
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker(first: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", site.port, timeout=30)
        mine: Counter[tuple[str, str]] = Counter()
        try:
            for i in range(first, TOTAL, THREADS):
                consumer, asked = PLAN[i % len(PLAN)]
                key = site.keys[consumer] if consumer else "gw-not-a-key-" + "x" * 20
                conn.request(
                    "GET", "/orders", headers={"x-api-key": key, "x-echo-status": str(asked)}
                )
                resp = conn.getresponse()
                resp.read()
                klass = _client_class(consumer, asked, resp.status, resp.getheader("x-backend", ""))
                if klass == "admitted":
                    assert resp.status == asked, (resp.status, asked)
                mine[(consumer or "", klass)] += 1
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            conn.close()
            with lock:
                counts.update(mine)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return counts


def _sums(items: list[dict[str, object]]) -> Counter[tuple[str, str]]:
    out: Counter[tuple[str, str]] = Counter()
    for item in items:
        if item["route"] != "orders":
            continue
        for klass in CLASSES:
            n = int(item[klass])  # type: ignore[call-overload]
            if n:
                out[(str(item["consumer"]), klass)] += n
    return out


def test_export_sums_equal_the_clients_counts_per_consumer_and_class(site: Site) -> None:
    # the hour's quota is spent and then read back as "this hour": all in one hour
    clear_of_boundary(3600, 90)
    db = site.cli.db
    since = time.time() - 120

    def orders_total() -> int:
        now = time.time()
        return RollupReader.open(db).total_requests(Filter(since, now + 60, route="orders"))

    counts = drive(site)
    assert sum(counts.values()) == TOTAL
    # the mix really is a mix: every class the test means to produce is there
    assert counts[("globex", "throttled")] > 0 and counts[("", "unauthenticated")] == TOTAL // 10
    assert counts[("acme", "upstream_errors")] == TOTAL // 10
    wait_until(lambda: orders_total() >= TOTAL, timeout=60, interval=0.3)
    time.sleep(2.5)  # Envoy's buffer and one more flush: nothing beyond N may show up
    assert orders_total() == TOTAL

    window = ("--since", time.strftime("%Y-%m-%dT%H:00:00", time.gmtime(since)), "--until", "now")
    out = site.cli.run("analytics", "export", *window, "--format", "csv").stdout
    rows = list(csv.DictReader(io.StringIO(out, newline="")))
    assert list(rows[0]) == [
        "hour", "gateway", "route", "consumer", "requests", "admitted", "throttled",
        "unauthenticated", "upstream_errors", "refused", "bytes_in", "bytes_out",
        "latency_p50_ms", "latency_p95_ms", "latency_p99_ms",
    ]  # fmt: skip
    assert _sums(rows) == counts  # type: ignore[arg-type]
    for row in rows:  # the classes never overlap
        assert int(row["requests"]) == sum(int(row[k]) for k in CLASSES)
        assert row["hour"].endswith(":00:00Z") and int(row["bytes_out"]) > 0

    # the same through the admin API, as JSON Lines
    remote = site.admin.run("analytics", "export", *window, "--format", "jsonl").stdout
    items = [json.loads(line) for line in remote.splitlines()]
    assert _sums(items) == counts
    local = site.cli.run("analytics", "export", *window, "--format", "jsonl").stdout
    assert remote == local

    # usage: the hour limit against what it let through, never the throttled requests
    globex_passed = counts[("globex", "admitted")] + counts[("globex", "upstream_errors")]
    assert globex_passed == GLOBEX_PER_HOUR
    lines = site.cli.run("analytics", "usage", "globex").stdout.splitlines()
    assert f"globex: {GLOBEX_PER_HOUR} of {GLOBEX_PER_HOUR} this hour, " in lines[1]
    assert lines[0].startswith("globex: ") and "per second" in lines[0]
    usage = site.admin.json("analytics", "usage", "globex")
    hour = next(u for u in usage if u["per"] == "hour")
    assert hour["used"] == GLOBEX_PER_HOUR
    assert hour["throttled"] == counts[("globex", "throttled")]
    assert hour["admitted"] == counts[("globex", "admitted")]


def test_bad_export_ranges_and_unknown_consumers(site: Site) -> None:
    for args, start in (
        (("--since", "1h"), "--until: required"),
        (("--until", "now"), "--since: required"),
        (("--since", "1h", "--until", "2h"), "--until: must be after --since"),
        (("--since", "1h", "--until", "now", "--format", "xml"), "--format: 'xml'"),
    ):
        for who in (site.cli, site.admin):
            proc = who.run("analytics", "export", *args, check=False)
            assert proc.returncode == 2, proc
            assert start in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    for who in (site.cli, site.admin):
        proc = who.run("analytics", "usage", "nobody", check=False)
        assert proc.returncode == 3 and "nobody" in proc.stderr


def test_usage_warns_when_analytics_is_off(site: Site) -> None:
    site.cli.run("gateway", "update", "public", "--no-analytics")
    proc = site.cli.run("analytics", "usage", "acme")
    assert "warning: analytics is off on every gateway" in proc.stderr
    assert proc.stdout.startswith("acme: ")

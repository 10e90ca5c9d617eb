"""Resilience through a real Envoy: retries, timeouts, injected faults, outlier ejection,
weighted splits changed live, and consistent hashing by header and cookie."""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter

import pytest

from controlplane.demo.echo import EchoServer
from controlplane.envoy_launcher import stats

from .harness import Cli, request, wait_until

pytestmark = pytest.mark.e2e


def _stat(envoy, name: str) -> int:  # type: ignore[no-untyped-def]
    return stats(envoy.admin_port, name.replace(".", r"\.") + "$").get(name, 0)


def _backends_of(
    port: int, path: str, n: int, headers: dict[str, str] | None = None
) -> Counter[str]:
    """Which backend answered each of ``n`` requests, over one keep-alive connection."""
    seen: Counter[str] = Counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for _ in range(n):
            conn.request("GET", path, headers=headers or {})
            resp = conn.getresponse()
            resp.read()
            seen[resp.getheader("x-backend") or str(resp.status)] += 1
    finally:
        conn.close()
    return seen


def _setup(cli: Cli, port: int, backends: dict[str, EchoServer]) -> None:
    cli.add_gateway("public", port)
    for name, server in backends.items():
        cli.run("cluster", "add", name, "--endpoint", f"127.0.0.1:{server.port}")


def test_retries_timeout_and_faults(cli, controller, envoy_factory, backends, gateway_port):  # type: ignore[no-untyped-def]
    _setup(cli, gateway_port, backends)
    alpha = backends["alpha"]
    cli.add_route("retried", "public", "/retried", "alpha", "--retries", "2", "--retry-on", "5xx")
    cli.add_route("plain", "public", "/plain", "alpha")
    cli.add_route("slow", "public", "/slow", "alpha", "--timeout", "500ms")
    cli.add_route("broken", "public", "/broken", "alpha", "--fault-abort", "418@100")
    envoy = envoy_factory("public")
    cli.run("route", "add", "delayed", "--gateway", "public", "--path-prefix", "/delayed",
            "--cluster", "alpha", "--fault-delay", "400ms", "--wait")  # fmt: skip

    # the failure mode is real: without retries the first failure reaches the client
    alpha.fail_next = 1
    assert request(gateway_port, "/plain")[0] == 503
    # with retries the client never sees it; the backend saw both attempts
    alpha.fail_next, before = 1, alpha.hits
    status, _, body = request(gateway_port, "/retried")
    assert status == 200 and body["path"] == "/retried"
    assert alpha.hits - before == 2

    # the route timeout answers 504 before the backend does (5 s): Envoy counted an
    # upstream timeout and the backend had not answered yet when the client got the 504
    timeouts = _stat(envoy, "cluster.alpha.upstream_rq_timeout")
    answered = alpha.hits
    started = time.monotonic()
    status, _, body = request(
        gateway_port, "/slow", headers={"x-echo-delay-ms": "5000"}, timeout=10
    )
    elapsed = time.monotonic() - started
    assert status == 504 and alpha.hits == answered, body
    assert _stat(envoy, "cluster.alpha.upstream_rq_timeout") == timeouts + 1
    assert elapsed >= 0.45, elapsed  # not before the timeout (a lower bound load cannot break)

    # injected faults: an abort never reaches the backend; a delay holds the request
    before = alpha.hits
    status, _, body = request(gateway_port, "/broken")
    assert status == 418 and alpha.hits == before
    started = time.monotonic()
    status, _, body = request(gateway_port, "/delayed")
    # Envoy's timers have millisecond granularity: 0.39969 s was seen for 400 ms
    assert status == 200 and time.monotonic() - started >= 0.35
    assert alpha.hits == before + 1

    # faults are removed live
    cli.run("route", "update", "broken", "--fault-off", "--wait")
    assert request(gateway_port, "/broken")[0] == 200


def test_outlier_endpoint_is_ejected(cli, controller, envoy_factory, backends, gateway_port):  # type: ignore[no-untyped-def]
    alpha, beta = backends["alpha"], backends["beta"]
    cli.add_gateway("public", gateway_port)
    cli.run(
        "cluster", "add", "pool",
        "--endpoint", f"127.0.0.1:{alpha.port}", "--endpoint", f"127.0.0.1:{beta.port}",
        "--outlier-consecutive-5xx", "3", "--outlier-ejection-time", "60s",
        "--outlier-max-ejection-percent", "50",
    )  # fmt: skip
    cli.add_route("pool", "public", "/", "pool")
    envoy_factory("public")
    cli.run("route", "update", "pool", "--timeout", "5s", "--wait")
    beta.status = 503  # beta now fails every request
    statuses = Counter(request(gateway_port, "/x")[0] for _ in range(20))
    assert statuses[503] >= 3  # beta failed until it was ejected
    beta.reset()
    alpha_before = alpha.hits
    seen = _backends_of(gateway_port, "/x", 60)
    assert seen == Counter({"alpha": 60}), seen
    assert beta.hits == 0 and alpha.hits - alpha_before == 60


def test_weighted_split_changes_live(cli, controller, envoy_factory, backends, gateway_port):  # type: ignore[no-untyped-def]
    _setup(cli, gateway_port, backends)
    cli.run("route", "add", "canary", "--gateway", "public", "--path-prefix", "/",
            "--backend", "alpha=90", "--backend", "beta=10")  # fmt: skip
    envoy_factory("public")
    cli.run("route", "update", "canary", "--timeout", "5s", "--wait")
    seen = _backends_of(gateway_port, "/split", 2000)
    assert sum(seen.values()) == 2000 and set(seen) <= {"alpha", "beta"}
    share = 100 * seen["beta"] / 2000
    assert 7 <= share <= 13, seen

    cli.run("route", "update", "canary", "--backend", "alpha=20", "--backend", "beta=80", "--wait")
    seen = _backends_of(gateway_port, "/split", 2000)
    share = 100 * seen["beta"] / 2000
    assert 77 <= share <= 83, seen


def test_consistent_hash_by_header_and_cookie(  # type: ignore[no-untyped-def]
    cli, controller, envoy_factory, backends, gateway_port
):
    alpha, beta = backends["alpha"], backends["beta"]
    cli.add_gateway("public", gateway_port)
    endpoints = ["--endpoint", f"127.0.0.1:{alpha.port}", "--endpoint", f"127.0.0.1:{beta.port}"]
    cli.run("cluster", "add", "ring", *endpoints, "--lb", "ring_hash")
    cli.run("cluster", "add", "rr", *endpoints)
    cli.add_route("by-user", "public", "/user", "ring", "--hash-header", "x-user")
    cli.add_route("sticky", "public", "/sticky", "ring", "--hash-cookie", "sticky:1h")
    cli.add_route("spread", "public", "/spread", "rr")
    envoy_factory("public")
    cli.run("route", "update", "spread", "--timeout", "5s", "--wait")

    # every user sticks to one endpoint; users as a whole land on both
    chosen = {}
    for i in range(20):
        seen = _backends_of(gateway_port, "/user", 8, {"x-user": f"user-{i}"})
        assert len(seen) == 1, (i, seen)
        chosen[i] = next(iter(seen))
    assert set(chosen.values()) == {"alpha", "beta"}
    # round robin without a hash policy alternates
    assert set(_backends_of(gateway_port, "/spread", 8)) == {"alpha", "beta"}

    # cookie: Envoy sets it on the first response; requests carrying it stick
    status, headers, _ = request(gateway_port, "/sticky")
    assert status == 200 and headers["set-cookie"].startswith("sticky=")
    cookie = headers["set-cookie"].split(";", 1)[0]
    seen = _backends_of(gateway_port, "/sticky", 10, {"cookie": cookie})
    assert len(seen) == 1, seen


def test_bad_resilience_input(cli) -> None:  # type: ignore[no-untyped-def]
    cli.run("gateway", "add", "public", "--port", "8080")
    cli.run("cluster", "add", "alpha", "--endpoint", "127.0.0.1:9001")
    cli.run("cluster", "add", "beta", "--endpoint", "127.0.0.1:9002")
    cli.add_route("api", "public", "/api", "alpha")
    before = cli.run("export").stdout
    cases = [
        (("route", "update", "api", "--backend", "alpha=0", "--backend", "beta=0"),
         "route 'api': backends: weights must add up to more than zero"),
        (("route", "update", "api", "--fault-abort", "700@5"), "fault.abort.status"),
        (("route", "update", "api", "--fault-delay", "1s@150"), "fault.delay.percent"),
        (("route", "update", "api", "--hash-header", "bad header"), "hash_on[0].header"),
        (("cluster", "update", "alpha", "--retry-budget", "0"),
         "circuit_breakers.retry_budget.percent"),
    ]  # fmt: skip
    for args, message in cases:
        proc = cli.run(*args, check=False)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert cli.run("export").stdout == before


def test_health_checks_and_circuit_breaker(  # type: ignore[no-untyped-def]
    cli, controller, envoy_factory, backends, gateway_port
):
    alpha, beta = backends["alpha"], backends["beta"]
    beta.status = 503  # fails its health checks from the start
    cli.add_gateway("public", gateway_port)
    cli.run(
        "cluster", "add", "checked",
        "--endpoint", f"127.0.0.1:{alpha.port}", "--endpoint", f"127.0.0.1:{beta.port}",
        "--health-check-path", "/healthz", "--health-check-interval", "200ms",
    )  # fmt: skip
    cli.run("cluster", "add", "guarded", "--endpoint", f"127.0.0.1:{alpha.port}",
            "--max-requests", "1")  # fmt: skip
    cli.add_route("checked", "public", "/checked", "checked")
    cli.add_route("guarded", "public", "/guarded", "guarded")
    envoy_factory("public")
    cli.run("route", "update", "checked", "--timeout", "5s", "--wait")

    # only the healthy endpoint gets traffic; the other sees nothing but probes
    wait_until(lambda: _backends_of(gateway_port, "/checked", 10) == Counter({"alpha": 10}))
    assert _backends_of(gateway_port, "/checked", 40) == Counter({"alpha": 40})
    assert {r["path"] for r in beta.requests} == {"/healthz"}

    # a second request while one is in flight overflows the breaker: 503 at once
    results: list[tuple[int, str | None]] = []

    def call(delay_ms: str) -> None:
        status, headers, _ = request(
            gateway_port, "/guarded", headers={"x-echo-delay-ms": delay_ms}
        )
        results.append((status, headers.get("x-envoy-overloaded")))

    first = threading.Thread(target=call, args=("1500",))
    first.start()
    time.sleep(0.5)
    call("0")
    first.join()
    assert sorted(results) == [(200, None), (503, "true")], results

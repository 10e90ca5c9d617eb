"""Rate limits and usage plans enforced by a real Envoy (local_ratelimit), changed live."""

from __future__ import annotations

import time

import pytest

from .harness import request

pytestmark = pytest.mark.e2e


def _calls(port: int, path: str, key: str | None, n: int) -> list[tuple[int, dict[str, str]]]:
    headers = {"x-api-key": key} if key else {}
    out = []
    for _ in range(n):
        status, hdrs, _ = request(port, path, headers=headers)
        out.append((status, hdrs))
    return out


def _statuses(calls: list[tuple[int, dict[str, str]]]) -> list[int]:
    return [s for s, _ in calls]


def test_plans_per_consumer_and_per_ip(cli, controller, envoy_factory, backends, gateway_port):  # type: ignore[no-untyped-def]
    port = gateway_port
    cli.run("gateway", "add", "public", "--port", str(port), "--address", "127.0.0.1")
    cli.run("cluster", "add", "alpha", "--endpoint", f"127.0.0.1:{backends['alpha'].port}")
    cli.run("plan", "add", "free", "--limit", "10/minute")
    cli.run("plan", "add", "pro", "--limit", "20/minute")
    cli.run("consumer", "add", "acme", "--plan", "free")
    cli.run("consumer", "add", "globex")  # no plan: unlimited on this route
    key_a = cli.run("consumer", "key", "add", "acme").stdout.strip()
    key_b = cli.run("consumer", "key", "add", "globex").stdout.strip()
    cli.run(
        "route", "add", "api", "--gateway", "public", "--path-prefix", "/api",
        "--cluster", "alpha", "--auth-api-key", "--rate-limit-key", "consumer",
    )  # fmt: skip
    cli.run(
        "route", "add", "open", "--gateway", "public", "--path-prefix", "/open",
        "--cluster", "alpha", "--rate-limit-key", "client_ip", "--rate-limit", "3/minute",
    )  # fmt: skip
    envoy = envoy_factory("public")
    cli.run("route", "update", "open", "--timeout", "5s", "--wait")
    pid = envoy.pid

    # consumer A: exactly 10 within the minute, then 429 with the headers
    calls = _calls(port, "/api/x", key_a, 11)
    assert _statuses(calls) == [200] * 10 + [429]
    assert calls[0][1]["x-ratelimit-limit"] == "10"
    assert calls[9][1]["x-ratelimit-remaining"] == "0"
    refused = calls[10][1]
    assert int(refused["retry-after"]) >= 1
    assert refused["x-ratelimit-limit"] == "10" and refused["x-ratelimit-remaining"] == "0"
    assert 0 < int(refused["x-ratelimit-reset"]) <= 60
    # consumer B is unaffected
    assert _statuses(_calls(port, "/api/x", key_b, 30)) == [200] * 30
    assert _statuses(_calls(port, "/api/x", key_a, 1)) == [429]
    # no key at all: authentication answers first, the limiter never counts it
    assert _statuses(_calls(port, "/api/x", None, 1)) == [401]

    # per client IP on a public route
    assert _statuses(_calls(port, "/open", None, 4)) == [200, 200, 200, 429]

    # moving A to another plan takes effect with --wait, without restarting Envoy
    cli.run("consumer", "update", "acme", "--plan", "pro", "--wait")
    calls = _calls(port, "/api/x", key_a, 21)
    assert _statuses(calls) == [200] * 20 + [429]
    assert calls[0][1]["x-ratelimit-limit"] == "20"
    # a consumer's own limit overrides; a per-second bucket refills after the window
    cli.run("consumer", "update", "globex", "--limit", "2/second", "--wait")
    assert _statuses(_calls(port, "/api/x", key_b, 3)) == [200, 200, 429]
    time.sleep(1.1)
    assert _statuses(_calls(port, "/api/x", key_b, 1)) == [200]
    # a plan change reaches its consumers too
    cli.run("plan", "update", "pro", "--limit", "1/minute", "--wait")
    assert _statuses(_calls(port, "/api/x", key_a, 2)) == [200, 429]
    assert envoy.pid == pid and envoy.proc.poll() is None


def test_gateway_default_and_route_off(cli, controller, envoy_factory, backends, gateway_port):  # type: ignore[no-untyped-def]
    port = gateway_port
    cli.run(
        "gateway", "add", "public", "--port", str(port), "--address", "127.0.0.1",
        "--rate-limit-key", "header:x-tenant", "--rate-limit", "2/minute",
    )  # fmt: skip
    cli.run("cluster", "add", "alpha", "--endpoint", f"127.0.0.1:{backends['alpha'].port}")
    cli.run("route", "add", "a", "--gateway", "public", "--path-prefix", "/a", "--cluster", "alpha")
    cli.run(
        "route", "add", "free", "--gateway", "public", "--path-prefix", "/free",
        "--cluster", "alpha", "--rate-limit-off",
    )  # fmt: skip
    envoy_factory("public")
    cli.run("route", "update", "a", "--timeout", "5s", "--wait")
    t1, t2 = {"x-tenant": "t1"}, {"x-tenant": "t2"}
    got = [request(port, "/a", headers=t1)[0] for _ in range(3)]
    assert got == [200, 200, 429]
    assert request(port, "/a", headers=t2)[0] == 200  # another tenant, another bucket
    assert [request(port, "/free", headers=t1)[0] for _ in range(5)] == [200] * 5
    # an exempt route says nothing about limits
    assert "x-ratelimit-limit" not in request(port, "/free", headers=t1)[1]
    assert request(port, "/a", headers=t2)[1]["x-ratelimit-limit"] == "2"


BAD = [
    (
        ["plan", "add", "neg", "--limit", "-5/minute"],
        "-5 is out of range: must be an integer from 1 to 1000000000",
    ),
    (
        ["plan", "add", "zero", "--limit", "0/minute"],
        "0 is out of range: must be an integer from 1 to",
    ),
    (["plan", "add", "unit", "--limit", "5/fortnight"], "per"),
    (["plan", "add", "burst", "--limit", "5/minute", "--burst", "2"], "burst"),
    (["plan", "add", "twice", "--limit", "5/minute", "--limit", "9/minute"], "one limit per unit"),
    (["consumer", "add", "ghost", "--plan", "nope"], "plan 'nope' does not exist"),
    (["consumer", "update", "acme", "--plan", "nope"], "plan 'nope' does not exist"),
    (["route", "update", "api", "--rate-limit-key", "header:bad name"], "header name"),
    (["route", "update", "api", "--rate-limit-key", "header:"], "name the header"),
    (["route", "update", "api", "--rate-limit-key", "cookie"], "is not a key"),
    (
        ["route", "update", "api", "--rate-limit-key", "client_ip", "--rate-limit-plans"],
        "use_plans",
    ),
    (["gateway", "update", "public", "--rate-limit", "ten/minute"], "--rate-limit"),
]


def test_bad_rate_limit_input(cli) -> None:  # type: ignore[no-untyped-def]
    cli.run("gateway", "add", "public", "--port", "8080")
    cli.run("cluster", "add", "alpha", "--endpoint", "127.0.0.1:9")
    cli.run("plan", "add", "free", "--limit", "10/minute")
    cli.run("consumer", "add", "acme", "--plan", "free")
    cli.run("route", "add", "api", "--gateway", "public", "--cluster", "alpha")
    before = cli.run("export").stdout
    for args, text in BAD:
        proc = cli.run(*args, check=False)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and text in lines[0], (args, proc.stderr)
    # a rate limit on an unknown route: "not found" (exit 3, as for any unknown object)
    proc = cli.run("route", "update", "nosuch", "--rate-limit", "5/minute", check=False)
    assert proc.returncode == 3 and "route 'nosuch' does not exist" in proc.stderr
    # a plan in use cannot be deleted
    proc = cli.run("plan", "delete", "free", check=False)
    assert proc.returncode != 0 and "consumer 'acme' uses it" in proc.stderr
    bad_file = "plans:\n  - name: x\n    limits: [{requests: -1, per: minute}]\n"
    proc = cli.run("apply", "-f", "-", input=bad_file, check=False)
    assert proc.returncode == 2 and "plans[0] 'x': limits[0].requests" in proc.stderr
    assert cli.run("export").stdout == before

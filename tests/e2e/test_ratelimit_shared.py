"""Budgets shared through the controller's quota service (RLQS, ADR 0051): exact whatever
the split of traffic between Envoys, a fallback while the controller is away, and calendar
quotas that survive controller and Envoy restarts."""

from __future__ import annotations

import http.client
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from .harness import Cli, Controller, Envoy, clear_of_boundary, request, wait_until
from .test_ratelimit_fleet import ISSUER, EcSigner

pytestmark = pytest.mark.e2e


def _requests_served(envoy: Envoy) -> int:
    """Requests this Envoy's gateway listener has seen (not its admin's)."""
    url = f"http://127.0.0.1:{envoy.admin_port}/stats?format=json&filter=downstream_rq_total"
    with urllib.request.urlopen(url, timeout=5) as resp:
        stats = json.load(resp)["stats"]
    return sum(
        int(s["value"])
        for s in stats
        if s.get("name", "").endswith(".downstream_rq_total")
        and s["name"].startswith("http.")
        and not s["name"].startswith("http.admin.")
    )


def pinned_connections(port: int, envoys: list[Envoy]) -> list[http.client.HTTPConnection]:
    """One keep-alive connection to each Envoy behind the shared port, in ``envoys`` order:
    the kernel picks the Envoy of a connection (SO_REUSEPORT), so connections are opened
    until each Envoy owns one, each told apart by whose request counter its first request
    (to an unlimited route) moved."""
    owned: dict[int, http.client.HTTPConnection] = {}
    for _ in range(200):
        if len(owned) == len(envoys):
            break
        before = [_requests_served(e) for e in envoys]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/free/probe")
        conn.getresponse().read()
        after = [_requests_served(e) for e in envoys]
        moved = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if b > a]
        if len(moved) == 1 and moved[0] not in owned:
            owned[moved[0]] = conn
        else:
            conn.close()
    assert len(owned) == len(envoys), f"connections reached only Envoys {sorted(owned)}"
    return [owned[i] for i in range(len(envoys))]


def quota_metric(controller: Controller, name: str) -> int:
    """``gateway_quota_<name>`` of ``controller`` (its metrics): open RLQS streams, reports."""
    url = f"http://127.0.0.1:{controller.health_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    for line in text.splitlines():
        if line.startswith(f"gateway_quota_{name} "):
            return int(float(line.split()[1]))
    return 0


def send(conn: http.client.HTTPConnection, path: str, headers: dict[str, str]) -> int:
    conn.request("GET", path, headers=headers)
    resp = conn.getresponse()
    resp.read()
    return resp.status


#: 20 requests: 16 through the first Envoy, 3 through the second, 1 through the third
SPLIT = [0] * 16 + [1] * 3 + [2]


def spread(
    conns: list[http.client.HTTPConnection], headers: dict[str, str], total: int, seconds: float
) -> list[int]:
    """``total`` requests over ``seconds``, split 80/15/5 between the connections."""
    statuses = []
    start = time.monotonic()
    for i in range(total):
        delay = start + i * seconds / total - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        statuses.append(send(conns[SPLIT[i % len(SPLIT)]], "/api/x", headers))
    return statuses


def policy(gateway_port: int, backend: int, signer: EcSigner, mode: str) -> dict[str, Any]:
    return {
        "gateways": [
            {
                "name": "public",
                "port": gateway_port,
                "address": "127.0.0.1",
                "rate_limit_mode": mode,
            }
        ],
        "clusters": [{"name": "alpha", "endpoints": [f"127.0.0.1:{backend}"]}],
        "jwt_providers": [
            {"name": "corp", "issuer": ISSUER, "audiences": ["api"], "jwks": signer.jwks()}
        ],
        "plans": [
            {"name": "team", "limits": [{"requests": 100, "per": "minute"}]},
            {"name": "daily", "limits": [{"requests": 1000, "per": "day"}]},
        ],
        "consumers": [
            {"name": "acme", "plan": "team"},
            {"name": "bolt", "plan": "team"},
            {"name": "carl", "plan": "team"},
            {"name": "dora", "plan": "daily"},
        ],
        "routes": [
            {
                "name": "api",
                "gateway": "public",
                "match": {"path_prefix": "/api"},
                "cluster": "alpha",
                "auth": {"jwt": ["corp"]},
                "rate_limit": {"key": "consumer"},
            },
            {
                "name": "free",
                "gateway": "public",
                "match": {"path_prefix": "/free"},
                "cluster": "alpha",
            },
        ],
    }


def apply(cli: Cli, tmp_path: Path, doc: dict[str, Any]) -> None:
    path = tmp_path / "shared.yaml"
    path.write_text(yaml.safe_dump(doc))
    cli.run("apply", "-f", str(path), "--wait", timeout=120)


def bearer(signer: EcSigner, who: str) -> dict[str, str]:
    return {"authorization": f"Bearer {signer.token(who)}"}


def test_a_shared_budget_is_exact_whatever_the_split(  # type: ignore[no-untyped-def]
    cli, controller, envoy_factory, backends, gateway_port, tmp_path
) -> None:
    signer = EcSigner()
    doc = policy(gateway_port, backends["alpha"].port, signer, "shared")
    # a second route on the same plan: its buckets are its own
    doc["routes"].append({**doc["routes"][0], "name": "other", "match": {"path_prefix": "/other"}})
    apply(cli, tmp_path, doc)
    envoys = [envoy_factory("public") for _ in range(3)]
    cli.run("route", "update", "api", "--timeout", "5s", "--wait")
    conns = pinned_connections(gateway_port, envoys)

    shared = spread(conns, bearer(signer, "acme"), 300, 40.0)
    admitted = shared.count(200)
    assert shared.count(429) == 300 - admitted, shared
    print(f"\nshared mode, 80/15/5 split: {admitted} of 300 admitted (budget 100)")
    assert 95 <= admitted <= 105, admitted
    # acme's budget on /api is spent; on /other (its own bucket, the same plan) it is not
    assert [send(conns[0], "/other/x", bearer(signer, "acme")) for _ in range(3)] == [200] * 3
    assert send(conns[0], "/api/x", bearer(signer, "acme")) == 429

    # the same split in local mode: each Envoy applies budget / 3 from its own counter.
    # The mode changes the listener's filters: Envoy drains the old listener's connections,
    # so the client's are pinned to each Envoy again
    doc["gateways"][0]["rate_limit_mode"] = "local"
    apply(cli, tmp_path, doc)
    conns = pinned_connections(gateway_port, envoys)
    local = spread(conns, bearer(signer, "bolt"), 150, 10.0)
    print(f"local mode, 80/15/5 split: {local.count(200)} of 150 admitted (budget 100)")
    by_envoy = [[s for i, s in enumerate(local) if SPLIT[i % len(SPLIT)] == e] for e in range(3)]
    print("admitted per Envoy:", [f"{b.count(200)} of {len(b)}" for b in by_envoy])
    assert local.count(200) + local.count(429) == 150
    # the busiest Envoy (120 requests) refuses beyond its third (and what refills in 10 s),
    # the two others (22 and 8) refuse nothing, and the budget as a whole is not spent:
    # undivided, the busiest alone would admit 100
    assert 429 in by_envoy[0]
    assert 429 not in by_envoy[1] + by_envoy[2]
    assert local.count(200) < 100


def test_fallback_while_the_controller_is_away_then_exact_again(  # type: ignore[no-untyped-def]
    cli, controller, envoy_factory, backends, gateway_port, tmp_path
) -> None:
    signer = EcSigner()
    apply(cli, tmp_path, policy(gateway_port, backends["alpha"].port, signer, "shared"))
    envoys = [envoy_factory("public") for _ in range(2)]
    cli.run("route", "update", "api", "--timeout", "5s", "--wait")
    conns = pinned_connections(gateway_port, envoys)
    carl = bearer(signer, "carl")
    # both Envoys know carl's bucket and hold a lease of it (a bucket first seen while the
    # service is away has no assignment: Envoy admits it until the service answers)
    assert [send(c, "/api/x", carl) for c in conns for _ in range(5)].count(200) == 10
    time.sleep(6)  # a report each

    controller.kill()
    time.sleep(17)  # assignments expire (15 s): each Envoy falls back to its own token bucket
    during = [send(c, "/api/x", carl) for c in conns for _ in range(120)]
    # requests keep flowing, and each Envoy applies the plan's budget on its own (100 a
    # minute, starting from the share of its lease it had left): refusals on both
    print(f"\nfallback: {during.count(200)} of 240 admitted by two Envoys (budget 100)")
    assert 0 < during[:120].count(200) < 120 and 0 < during[120:].count(200) < 120
    assert during.count(429) == 240 - during.count(200)

    controller.start()
    acme = bearer(signer, "acme")  # a fresh budget, counted by the service again
    # each Envoy re-opens its streams at its next report (within one interval, 5 s): until
    # then a new bucket has no assignment and is admitted
    wait_until(lambda: quota_metric(controller, "streams") >= 4, timeout=30)
    # a new caller on both Envoys; once each has reported again (one interval), exact again
    warm = [send(c, "/api/x", acme) for c in conns for _ in range(2)]
    reports = quota_metric(controller, "reports")
    # 4 immediate reports of the new buckets, then a periodic one per Envoy and filter
    wait_until(lambda: quota_metric(controller, "reports") >= reports + 8, timeout=30)
    statuses = warm + spread(conns[:2] + conns[:1], acme, 200, 20.0)
    assert 95 <= statuses.count(200) <= 102, statuses.count(200)


def test_a_day_quota_survives_controller_and_envoy_restarts(  # type: ignore[no-untyped-def]
    cli, controller, envoy_factory, backends, gateway_port, tmp_path
) -> None:
    clear_of_boundary(86400, 180)  # the test takes 45-56 s: the day's quota, in one day
    signer = EcSigner()
    apply(cli, tmp_path, policy(gateway_port, backends["alpha"].port, signer, "local"))
    envoy = envoy_factory("public")
    cli.run("route", "update", "api", "--timeout", "5s", "--wait")
    dora = bearer(signer, "dora")

    def admit(count: int) -> int:
        """Requests until ``count`` more are admitted; refusals while a lease is renewed
        are retried after a pause (the quota is not spent yet)."""
        conn = http.client.HTTPConnection("127.0.0.1", gateway_port, timeout=10)
        got = refused = 0
        while got < count and refused < 200:
            status = send(conn, "/api/x", dora)
            if status == 200:
                got += 1
            else:
                assert status == 429
                refused += 1
                time.sleep(0.25)
        conn.close()
        return got

    assert admit(400) == 400
    time.sleep(6)  # the last requests are reported (every 5 s)
    envoy.stop()
    controller.stop()
    controller.start()
    envoy = envoy_factory("public")
    wait_until(lambda: request(gateway_port, "/free/x")[0] == 200, timeout=30)
    assert admit(600) == 600
    time.sleep(6)
    status, headers, _ = request(gateway_port, "/api/x", headers=dora)
    assert status == 429, status
    tomorrow = (int(time.time()) // 86400 + 1) * 86400
    assert headers["x-quota-reset"] == str(tomorrow)
    # no local bucket is dora's (her plan is a day quota only): no X-RateLimit-* headers
    # from the local filter beside the quota's (an unlimited filler bucket once added them)
    assert "x-ratelimit-limit" not in headers and "x-ratelimit-reset" not in headers
    assert headers["retry-after"].endswith("00:00:00 GMT")
    # and it stays refused: the whole day's quota is spent, none left in leases
    time.sleep(6)
    assert request(gateway_port, "/api/x", headers=dora)[0] == 429

"""Rate limits at fleet scale: budgets shared by a gateway's Envoys, counters that survive
unrelated changes, and thousands of consumers that each keep their own bucket."""

from __future__ import annotations

import base64
import http.client
import json
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from .harness import request, wait_until

pytestmark = pytest.mark.e2e

ISSUER = "https://issuer.fleet.test"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class EcSigner:
    """ES256 tokens: fast enough to mint one per consumer for thousands of consumers."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.head = _b64(json.dumps({"alg": "ES256", "typ": "JWT", "kid": "e1"}).encode())

    def jwks(self) -> str:
        n = self.key.public_key().public_numbers()
        jwk = {"kty": "EC", "crv": "P-256", "alg": "ES256", "kid": "e1", "use": "sig",
               "x": _b64(n.x.to_bytes(32, "big")), "y": _b64(n.y.to_bytes(32, "big"))}  # fmt: skip
        return json.dumps({"keys": [jwk]})

    def token(self, sub: str) -> str:
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": "api", "sub": sub, "iat": now, "exp": now + 3600}
        body = _b64(json.dumps(claims).encode())
        der = self.key.sign(f"{self.head}.{body}".encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return f"{self.head}.{body}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def _limiter_stats(admin_port: int) -> dict[str, int]:
    """The local rate limit's counters of one Envoy (ok / rate_limited)."""
    url = f"http://127.0.0.1:{admin_port}/stats?format=json&filter=http_local_rate_limit"
    with urllib.request.urlopen(url, timeout=5) as resp:
        stats = json.load(resp)["stats"]
    out = {"ok": 0, "rate_limited": 0}
    for item in stats:
        for key in out:
            if item.get("name", "").endswith(f"http_local_rate_limit.{key}"):
                out[key] += int(item["value"])
    return out


def _status_fresh_connection(port: int, path: str, headers: dict[str, str]) -> int:
    return request(port, path, headers=headers)[0]


def _setup(cli, gateway_port: int, backends, tmp_path: Path, consumers: list[str]) -> EcSigner:  # type: ignore[no-untyped-def]
    signer = EcSigner()
    jwks = tmp_path / "jwks.json"
    jwks.write_text(signer.jwks())
    policy = {
        "gateways": [{"name": "public", "port": gateway_port, "address": "127.0.0.1"}],
        "clusters": [
            {"name": "alpha", "endpoints": [f"127.0.0.1:{backends['alpha'].port}"]},
        ],
        "jwt_providers": [
            {"name": "corp", "issuer": ISSUER, "audiences": ["api"], "jwks": signer.jwks()}
        ],
        "plans": [
            {"name": "tiny", "limits": [{"requests": 2, "per": "hour"}]},
            {"name": "team", "limits": [{"requests": 20, "per": "minute"}]},
        ],
        "consumers": [
            {"name": c, **({"plan": "tiny"} if i % 2 else {})} for i, c in enumerate(consumers)
        ],
        "routes": [
            {
                "name": "api",
                "gateway": "public",
                "match": {"path_prefix": "/api"},
                "cluster": "alpha",
                "auth": {"jwt": ["corp"]},
                # consumers without a plan: 2 per hour each, in the LRU of dynamic buckets
                "rate_limit": {"key": "consumer", "limits": [{"requests": 2, "per": "hour"}]},
            }
        ],
    }
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(policy))
    cli.run("apply", "-f", str(path), timeout=120)
    return signer


def test_a_budget_holds_across_two_envoys_and_follows_membership(  # type: ignore[no-untyped-def]
    cli, controller, envoy_factory, backends, gateway_port, tmp_path
) -> None:
    signer = _setup(cli, gateway_port, backends, tmp_path, ["filler"])
    cli.run("consumer", "add", "acme", "--plan", "team")
    cli.run("consumer", "add", "bolt", "--plan", "team")
    # two Envoys of one gateway bound to one port (SO_REUSEPORT): the kernel spreads
    # connections across them, as a load balancer in front of a fleet would
    first, second = envoy_factory("public"), envoy_factory("public")
    cli.run("route", "update", "api", "--timeout", "5s", "--wait")
    acme = {"authorization": f"Bearer {signer.token('acme')}"}
    statuses = [_status_fresh_connection(gateway_port, "/api/x", acme) for _ in range(80)]
    admitted = statuses.count(200)
    assert statuses.count(429) == 80 - admitted
    # 20/minute for the gateway as a whole, not 20 per Envoy (40)
    assert 18 <= admitted <= 22, statuses
    per_envoy = [_limiter_stats(e.admin_port) for e in (first, second)]
    assert all(s["ok"] + s["rate_limited"] >= 10 for s in per_envoy), per_envoy  # both served
    assert sum(s["ok"] for s in per_envoy) == admitted

    # one Envoy leaves: the survivor gets the whole budget again (a new consumer's bucket)
    second.stop()
    time.sleep(0.5)
    bolt = {"authorization": f"Bearer {signer.token('bolt')}"}
    wait_until(lambda: request(gateway_port, "/api/x", headers={})[0] == 401, timeout=10)
    got = [_status_fresh_connection(gateway_port, "/api/x", bolt) for _ in range(25)]
    assert 19 <= got.count(200) <= 21, got


def test_counters_survive_unrelated_changes(  # type: ignore[no-untyped-def]
    cli, controller, envoy_factory, backends, gateway_port, tmp_path
) -> None:
    signer = _setup(cli, gateway_port, backends, tmp_path, ["acme"])  # acme: no plan, 2/hour
    envoy_factory("public")
    cli.run("route", "update", "api", "--timeout", "5s", "--wait")
    acme = {"authorization": f"Bearer {signer.token('acme')}"}
    assert request(gateway_port, "/api/x", headers=acme)[0] == 200
    for i in range(3):  # routes come and go; acme's bucket stays as it was
        cli.run("route", "add", f"other-{i}", "--gateway", "public", "--path-prefix",
                f"/other-{i}", "--cluster", "alpha", "--wait")  # fmt: skip
    cli.run("route", "delete", "other-0", "--wait")
    assert request(gateway_port, "/api/x", headers=acme)[0] == 200
    assert request(gateway_port, "/api/x", headers=acme)[0] == 429


def test_five_thousand_consumers_keep_their_own_buckets(  # type: ignore[no-untyped-def]
    cli, controller, envoy_factory, backends, gateway_port, tmp_path
) -> None:
    names = [f"c{i:04d}" for i in range(5000)]  # odd ones on plan tiny, even ones without
    signer = _setup(cli, gateway_port, backends, tmp_path, names)
    envoy_factory("public")
    cli.run("route", "update", "api", "--timeout", "5s", "--wait", timeout=120)
    tokens = [signer.token(n) for n in names]

    def one_round(chunk: list[str]) -> list[int]:
        conn = http.client.HTTPConnection("127.0.0.1", gateway_port, timeout=10)
        out = []
        for token in chunk:
            conn.request("GET", "/api/x", headers={"authorization": f"Bearer {token}"})
            resp = conn.getresponse()
            resp.read()
            out.append(resp.status)
        conn.close()
        return out

    def every_consumer_once() -> list[int]:
        chunks = [tokens[i::4] for i in range(4)]
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(one_round, chunks))
        by_consumer: list[Any] = [None] * len(tokens)
        for i, statuses in enumerate(results):
            by_consumer[i::4] = statuses
        return by_consumer

    # each consumer calls in turn, three rounds: 2 per hour each, so 200, 200, then 429;
    # an evicted bucket would start full again and answer 200 in the third round
    assert every_consumer_once() == [200] * 5000
    assert every_consumer_once() == [200] * 5000
    third = every_consumer_once()
    assert third == [429] * 5000, f"{third.count(200)} consumers got a fresh bucket"

"""Aggregate routes: real CLI, controller, Envoy, two aggregation service replicas and three
echo backends of different speeds.

The parts are called in parallel, so a composite request takes about as long as its
slowest part; a part beyond its timeout gives the declared behaviour (502 for ``fail``,
200 with ``errors`` for ``partial``). The latency assertions compare against the *sum* of
the delays (0.3 + 0.6 + 1.2 s = 2.1 s vs 1.2 s slowest), a margin no scheduling hiccup
closes; the measured figures are in docs/benchmarks.md (``python -m bench.aggregate``).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controlplane.aggregator.spec import SPEC_HEADER, Part, Spec
from controlplane.demo.echo import EchoServer
from controlplane.envoy_launcher import free_port

from .harness import Cli, Controller, Envoy, gatewayctl_command, request, wait_until

pytestmark = pytest.mark.e2e

DELAYS_MS = {"users": 300, "orders": 600, "recs": 1200}
SLOWEST = max(DELAYS_MS.values()) / 1000

POLICY = """
gateways:
  - {{name: public, port: {port}, address: 127.0.0.1, aggregation_port: {parts}}}
clusters:
  - {{name: users, endpoints: ["127.0.0.1:{users}"]}}
  - {{name: orders, endpoints: ["127.0.0.1:{orders}"]}}
  - {{name: recs, endpoints: ["127.0.0.1:{recs}"]}}
  - {{name: nowhere, endpoints: ["127.0.0.1:{nowhere}"]}}
routes:
  - name: profile
    gateway: public
    match: {{path_regex: "^/profile/(?P<id>[0-9]+)$"}}
    aggregate:
      on_error: partial
      forward_query: true
      parts:
        - {{name: user, cluster: users, path: "/users/{{id}}", timeout: 5s}}
        - {{name: orders, cluster: orders, path: "/orders?user={{id}}", timeout: 5s}}
        - {{name: recs, cluster: recs, path: "/recs/{{id}}", timeout: 5s}}
  - name: lenient
    gateway: public
    match: {{path: /lenient}}
    aggregate:
      on_error: partial
      parts:
        - {{name: user, cluster: users, path: /users/1, timeout: 2s}}
        - {{name: orders, cluster: orders, path: /orders, timeout: 2s}}
        - {{name: recs, cluster: recs, path: /recs, timeout: 700ms}}
  - name: strict
    gateway: public
    match: {{path: /strict}}
    aggregate:
      on_error: fail
      parts:
        - {{name: user, cluster: users, path: /users/1, timeout: 2s}}
        - {{name: recs, cluster: recs, path: /recs, timeout: 700ms}}
  - name: broken
    gateway: public
    match: {{path: /broken}}
    aggregate:
      on_error: partial
      parts:
        - {{name: user, cluster: users, path: /users/1}}
        - {{name: gone, cluster: nowhere, path: /gone}}
  - name: limited-free
    gateway: public
    match: {{path: /limited-free}}
    aggregate:
      parts:
        - {{name: user, cluster: users, path: /users/1, timeout: 2s}}
  - name: private
    gateway: public
    match: {{path: /private}}
    auth: {{api_key: true}}
    aggregate:
      parts:
        - {{name: user, cluster: users, path: /users/1, timeout: 2s}}
  - name: limited
    gateway: public
    match: {{path: /limited}}
    rate_limit: {{key: client_ip, limits: [{{requests: 2, per: minute}}]}}
    aggregate:
      parts:
        - {{name: user, cluster: users, path: /users/1}}
"""


class Aggregator:
    """``gatewayctl aggregator`` as a child process, as compose and ``up`` run it."""

    def __init__(self, log_dir: Path, index: int) -> None:
        self.port = free_port()
        self.log = log_dir / f"aggregator-{index}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [*gatewayctl_command(), "aggregator", "--port", str(self.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def healthy(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()
        try:
            return self.stats() is not None
        except OSError:
            return False

    def stats(self) -> int:
        url = f"http://127.0.0.1:{self.port}/__aggregator/stats"
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(json.load(resp)["aggregates"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One stack for the module (tests restore what they change; the replica test, which
    stops a replica, comes last)."""
    tmp_path = tmp_path_factory.mktemp("aggregate")
    cli = Cli(db=str(tmp_path / "gateway.db"))
    backends = {n: EchoServer(n, delay_ms=d).start() for n, d in DELAYS_MS.items()}
    aggregators = [Aggregator(tmp_path, i) for i in (1, 2)]
    service = ",".join(f"127.0.0.1:{a.port}" for a in aggregators)
    controller = Controller(cli, tmp_path, ("--aggregator", service))
    envoy = None
    try:
        for a in aggregators:
            wait_until(a.healthy, 20, 0.05)
        controller.start()
        port, parts = free_port(), free_port()
        ports = {n: b.port for n, b in backends.items()}
        policy = POLICY.format(port=port, parts=parts, nowhere=free_port(), **ports)
        cli.run("apply", "-f", "-", input=policy)
        envoy = Envoy("public", "public-1", controller.xds_port, tmp_path)
        # the aggregator cluster is health-checked: wait until a composite request answers
        wait_until(lambda: request(port, "/limited-free", timeout=10)[0] == 200, 30, 0.1)
        yield {"port": port, "backends": backends, "aggregators": aggregators, "cli": cli}
    finally:
        if envoy is not None:
            envoy.stop()
        controller.stop()
        for a in aggregators:
            a.stop()
        for b in backends.values():
            b.stop()


def _timed(port: int, path: str, **kw: Any) -> tuple[float, int, dict[str, str], Any]:
    started = time.perf_counter()
    status, headers, body = request(port, path, timeout=10, **kw)
    return time.perf_counter() - started, status, headers, body


def test_parts_in_parallel_and_partial_failure(stack: dict[str, Any]) -> None:
    port = stack["port"]
    backends: dict[str, EchoServer] = stack["backends"]

    # three parts, called in parallel: every part's request reached its backend before
    # any other part had answered (called one after another, the spans would not overlap)
    for _ in range(3):
        elapsed, status, _, body = _timed(
            port, "/profile/42?lang=en", headers={"authorization": "Bearer t", "x-secret": "s"}
        )
        assert status == 200, body
        assert set(body) == {"user", "orders", "recs"}
        assert elapsed >= SLOWEST, elapsed
        spans = {name: backends[name].spans[-1] for name in ("users", "orders", "recs")}
        assert max(received for received, _ in spans.values()) < min(
            answered for _, answered in spans.values()
        ), f"{spans}: parts were not called in parallel"

    # one JSON object: each part's own answer, path parameters and query filled in
    assert body["user"]["backend"] == "users" and body["user"]["path"] == "/users/42?lang=en"
    assert body["orders"]["path"] == "/orders?user=42&lang=en"
    assert body["recs"]["path"] == "/recs/42?lang=en"
    # selected headers are passed on, others are not; the routing header never arrives
    seen = body["user"]["headers"]
    assert seen["authorization"] == "Bearer t"
    assert "x-secret" not in seen and "x-gateway-part" not in seen
    assert SPEC_HEADER not in seen

    # a client cannot substitute its own composition: the route overwrites the header
    forged = Spec(parts=(Part("user", "users", "/admin", 100),), port=1).encode()
    status, _, body = request(port, "/profile/7", headers={SPEC_HEADER: forged}, timeout=10)
    assert status == 200 and body["user"]["path"] == "/users/7" and "recs" in body

    # partial: the slow part beyond its timeout is reported, the others are returned
    late = backends["recs"].hits
    elapsed, status, headers, body = _timed(port, "/lenient")
    assert status == 200, body
    assert body["user"]["backend"] == "users" and body["orders"]["backend"] == "orders"
    assert "recs" not in body
    assert body["errors"] == {"recs": "timeout after 700ms"}
    assert headers["x-gateway-aggregate-errors"] == "1"
    wait_until(lambda: backends["recs"].hits > late, 30, 0.1)  # the late answer, discarded

    # fail: the whole answer is 502 naming the part, as soon as its timeout passes (the
    # slow part, made 4 s slow here, is not waited for)
    backends["recs"].delay_ms = 4000
    answered = backends["recs"].hits
    try:
        elapsed, status, headers, body = _timed(port, "/strict")
        # the slow part had not answered yet when the client got the 502
        assert backends["recs"].hits == answered
    finally:
        backends["recs"].delay_ms = DELAYS_MS["recs"]
    assert status == 502, body
    assert body["part"] == "recs" and body["reason"] == "timeout after 700ms"
    assert headers["x-gateway-aggregate-failed"] == "recs"
    assert elapsed >= 0.7, elapsed
    # let the slow part finish before later requests look at the backends
    wait_until(lambda: backends["recs"].hits > answered, 30, 0.1)

    # the same route with every part in time answers 200
    backends["recs"].delay_ms = 0
    try:
        status, _, body = request(port, "/strict", timeout=10)
    finally:
        backends["recs"].delay_ms = DELAYS_MS["recs"]
    assert status == 200 and set(body) == {"user", "recs"}

    # a failing part (nothing listens: Envoy answers 503) counts like a late one
    status, _, body = request(port, "/broken", timeout=10)
    assert status == 200 and body["errors"] == {"gone": "status 503"}, body
    assert body["user"]["backend"] == "users"


def test_auth_and_rate_limit_apply_to_the_composite_route(stack: dict[str, Any]) -> None:
    port = stack["port"]
    users: EchoServer = stack["backends"]["users"]
    cli: Cli = stack["cli"]

    # authentication happens in Envoy before the service; the caller's identity reaches
    # the parts (x-consumer-id is forwarded by default), a spoofed one does not
    cli.run("consumer", "add", "acme")
    key = cli.run("consumer", "key", "add", "acme", "--wait").stdout.strip()
    hits = users.hits
    assert request(port, "/private", timeout=10)[0] == 401
    assert request(port, "/private", headers={"x-api-key": "wrong"}, timeout=10)[0] == 401
    assert users.hits == hits
    status, _, body = request(
        port, "/private", headers={"x-api-key": key, "x-consumer-id": "mallory"}, timeout=10
    )
    assert status == 200, body
    assert body["user"]["headers"]["x-consumer-id"] == "acme"
    assert "x-api-key" not in body["user"]["headers"]

    statuses = [request(port, "/limited", timeout=10)[0] for _ in range(3)]
    assert statuses == [200, 200, 429]
    hits = users.hits
    assert request(port, "/limited", timeout=10)[0] == 429
    assert users.hits == hits  # refused by Envoy before the aggregation service


def test_replicas_share_the_load_and_one_can_go(stack: dict[str, Any]) -> None:
    port = stack["port"]
    aggregators: list[Aggregator] = stack["aggregators"]
    for backend in stack["backends"].values():
        backend.delay_ms = 0  # this test is about the replicas, not the parts
    before = [a.stats() for a in aggregators]
    for _ in range(20):
        assert request(port, "/lenient", timeout=10)[0] == 200
    served = [a.stats() - b for a, b in zip(aggregators, before, strict=True)]
    assert sum(served) == 20 and min(served) > 0, served  # both replicas answered

    # scale down to one: requests keep succeeding (retried on the remaining replica)
    aggregators[1].stop()
    statuses = [request(port, "/lenient", timeout=10)[0] for _ in range(10)]
    assert statuses == [200] * 10


def test_up_runs_the_aggregation_service(tmp_path: Path) -> None:
    """``gatewayctl up`` starts the service as a child process and stops it with itself."""
    db = str(tmp_path / "gateway.db")
    port, parts, xds, admin, agg = (free_port() for _ in range(5))
    cli = Cli(db=db)
    cli.add_gateway("public", port, "--aggregation-port", str(parts))
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                *(*gatewayctl_command(), "--db", db, "up", "--demo", "--xds-port", str(xds)),
                *("--health-address", f"127.0.0.1:{free_port()}"),
                *("--envoy-log", str(tmp_path / "envoy.log")),
                *("--admin-port", str(admin), "--aggregator-port", str(agg)),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "GATEWAY_DB": ""},
            start_new_session=True,
        )
    try:
        wait_until(lambda: "is up" in log.read_text() or proc.poll() is not None, 60, 0.1)
        assert proc.poll() is None, log.read_text()
        cli.run(
            "apply",
            "-f",
            "-",
            input="""
routes:
  - name: both
    gateway: public
    match: {path: /both}
    aggregate:
      parts:
        - {name: first, cluster: demo, path: /one}
        - {name: second, cluster: demo, path: /two}
""",
        )
        _, _, body = wait_until(
            lambda: (r := request(port, "/both", timeout=10))[0] == 200 and r, 30, 0.2
        )
        assert body["first"]["path"] == "/one" and body["second"]["path"] == "/two"
    finally:
        proc.send_signal(2)
        proc.wait(20)
    time.sleep(0.2)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{agg}/healthz", timeout=1)

"""Forged access-log streams against a real controller.

A gRPC client of Envoy's AccessLogService can claim any node, log name, route, consumer or
timestamp. The controller must accept streams only of gateways with analytics on, attribute
entries to the stream's gateway, keep the rollups bounded whatever names arrive, and never
hold the database so long that a policy write fails.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc

from controlplane.analytics.rollup import Filter, Key, RollupReader

from .harness import Cli, Controller, wait_until

ON = {"analytics": {"enabled": True}}


def apply(cli: Cli, policy: dict[str, Any]) -> None:
    cli.run("apply", "-f", "-", input=json.dumps(policy), timeout=180)


def base_policy(consumers: int = 1, routes: int = 1) -> dict[str, Any]:
    return {
        "gateways": [
            {"name": "public", "port": 18080, "address": "127.0.0.1", **ON},
            {"name": "quiet", "port": 18090, "address": "127.0.0.1"},
        ],
        "clusters": [{"name": "echo", "endpoints": ["127.0.0.1:9"]}],
        "consumers": [{"name": "acme"}] + [{"name": f"c{i:05d}"} for i in range(consumers - 1)],
        "routes": [
            {
                "name": "secret",
                "gateway": "quiet",
                "match": {"path_prefix": "/s"},
                "cluster": "echo",
            }
        ]
        + [
            {
                "name": "api" if i == 0 else f"r{i:03d}",
                "gateway": "public",
                "match": {"path_prefix": f"/p{i}"},
                "cluster": "echo",
            }
            for i in range(routes)
        ],
    }


def entry(
    route: str = "api",
    consumer: str = "",
    code: int = 200,
    start: float | None = None,
    bytes_in: int = 100,
) -> accesslog_pb2.HTTPAccessLogEntry:
    e = accesslog_pb2.HTTPAccessLogEntry()
    c = e.common_properties
    c.route_name = route
    c.start_time.FromNanoseconds(int((time.time() if start is None else start) * 1e9))
    c.duration.FromMilliseconds(3)
    e.request.request_headers_bytes = bytes_in
    if consumer:
        e.request.request_headers["x-consumer-id"] = consumer
    e.response.response_code.value = code
    e.response.response_body_bytes = 10
    return e


def message(
    entries: list[accesslog_pb2.HTTPAccessLogEntry],
    cluster: str | None = None,
    log_name: str = "",
) -> als_pb2.StreamAccessLogsMessage:
    msg = als_pb2.StreamAccessLogsMessage()
    if cluster is not None:
        msg.identifier.node.id = "forger"
        msg.identifier.node.cluster = cluster
        msg.identifier.log_name = log_name
    msg.http_logs.log_entry.extend(entries)
    return msg


def stream(port: int, messages: Iterator[als_pb2.StreamAccessLogsMessage] | list[Any]) -> str:
    """Send ``messages`` on one StreamAccessLogs call; the call's status code name."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = als_pb2_grpc.AccessLogServiceStub(channel)
        try:
            stub.StreamAccessLogs(iter(messages), timeout=300)
        except grpc.RpcError as err:
            return err.code().name  # type: ignore[no-any-return]
        return "OK"


def rollups(cli: Cli) -> dict[Key, int]:
    reader = RollupReader.open(cli.db)
    return {key: cell.requests for key, cell in reader.rows(Filter(0, 1e12))}


def by_gateway_route_consumer(rows: dict[Key, int]) -> Counter[tuple[str, str, str]]:
    out: Counter[tuple[str, str, str]] = Counter()
    for (_, gateway, route, consumer, _), n in rows.items():
        out[(gateway, route, consumer)] += n
    return out


def metrics(controller: Controller) -> str:
    url = f"http://127.0.0.1:{controller.health_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read().decode()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample (labels as rendered, in any order), 0 when absent."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and line.split(" ")[0] != name:
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture
def policy_controller(cli: Cli, tmp_path: Path) -> Iterator[Controller]:
    apply(cli, base_policy())
    c = Controller(cli, tmp_path)
    c.start()
    yield c
    c.stop()


def test_only_gateways_with_analytics_on_may_stream(
    cli: Cli, policy_controller: Controller
) -> None:
    port = policy_controller.xds_port
    forged = [entry("secret", "acme") for _ in range(1000)]
    # analytics off, a gateway that does not exist, no gateway at all, no identifier
    assert stream(port, [message(forged, "quiet"), message(forged)]) == "PERMISSION_DENIED"
    assert stream(port, [message(forged, "ghost")]) == "PERMISSION_DENIED"
    assert stream(port, [message(forged, "")]) == "PERMISSION_DENIED"
    assert stream(port, [message(forged)]) == "PERMISSION_DENIED"
    # log_name cannot stand in for the node's gateway either
    assert stream(port, [message(forged, "ghost", log_name="public")]) == "PERMISSION_DENIED"
    # a stream of a gateway with analytics on is accepted: its entries show up
    assert stream(port, [message([entry("api", "acme")], "public")]) == "OK"
    wait_until(lambda: rollups(cli), timeout=30, interval=0.2)
    time.sleep(1.5)  # one more flush: anything else written would show now
    assert by_gateway_route_consumer(rollups(cli)) == {("public", "api", "acme"): 1}
    text = metrics(policy_controller)
    assert metric(text, "gateway_analytics_refused_streams_total", reason="analytics_off") == 1
    assert metric(text, "gateway_analytics_refused_streams_total", reason="unknown_gateway") == 4
    assert metric(text, "gateway_analytics_refused_total", reason="refused_stream") == 5000
    # switched on by a policy change: the same gateway's stream is now accepted
    apply(cli, {**base_policy(), "gateways": [{**base_policy()["gateways"][1], **ON}]})
    wait_until(
        lambda: stream(port, [message([entry("secret", "acme")], "quiet")]) == "OK",
        timeout=30,
        interval=0.5,
    )
    wait_until(
        lambda: ("quiet", "secret", "acme") in by_gateway_route_consumer(rollups(cli)),
        timeout=30,
        interval=0.2,
    )


def test_entries_are_attributed_to_the_streams_gateway_and_names_are_checked(
    cli: Cli, policy_controller: Controller
) -> None:
    now = time.time()
    first = [entry("api", "acme") for _ in range(10)]
    first += [entry("secret", "acme") for _ in range(11)]  # another gateway's route
    first += [entry("nosuchroute", "acme") for _ in range(12)]  # an unknown route
    first += [entry("api", "mallory") for _ in range(13)]  # an unknown consumer
    first += [entry("", "") for _ in range(5)]  # no route matched, anonymous
    first += [entry("api", "acme", start=now - 365 * 86400) for _ in range(3)]  # a year ago
    first += [entry("api", "acme", start=now + 86400) for _ in range(2)]  # tomorrow
    first += [entry("api", "acme", bytes_in=(1 << 64) - 1)]  # would overflow a BIGINT
    # a later identifier naming another gateway changes nothing
    second = [entry("api", "acme") for _ in range(7)]
    msgs = [message(first, "public", log_name="quiet"), message(second, "quiet")]
    assert stream(policy_controller.xds_port, msgs) == "OK"
    expected = {
        ("public", "api", "acme"): 10 + 3 + 2 + 1 + 7,
        ("public", "(other)", "acme"): 11 + 12,
        ("public", "api", "(other)"): 13,
        ("public", "", ""): 5,
    }
    wait_until(
        lambda: by_gateway_route_consumer(rollups(cli)) == expected, timeout=30, interval=0.2
    )
    minutes = {key[0] for key in rollups(cli)}
    assert all(int(now // 60) - 1 <= m <= int(time.time() // 60) for m in minutes), minutes
    text = metrics(policy_controller)
    assert metric(text, "gateway_analytics_folded_total", gateway="public", field="route") == 23
    assert metric(text, "gateway_analytics_folded_total", gateway="public", field="consumer") == 13
    assert metric(text, "gateway_analytics_folded_total", gateway="public", field="minute") == 5
    assert metric(text, "gateway_analytics_flushes_total", result="error") == 0


def test_unique_names_do_not_grow_rollups_or_memory(
    cli: Cli, policy_controller: Controller
) -> None:
    """20,000 invented consumers, routes and minutes: a handful of rows, flat memory."""
    n, batch = 20_000, 2_000
    assert policy_controller.proc is not None
    pid = policy_controller.proc.pid
    before = rss_kb(pid)
    now = time.time()

    def messages() -> Iterator[als_pb2.StreamAccessLogsMessage]:
        for b in range(0, n, batch):
            entries = [
                entry(
                    route=f"route-{i}" if i % 2 else "api",
                    consumer=f"consumer-{i:06d}-" + "x" * 300,
                    code=(200, 404, 503)[i % 3],
                    start=now - 3600 - 60 * i,  # all outside the window
                )
                for i in range(b, b + batch)
            ]
            yield message(entries, "public" if b == 0 else None)

    assert stream(policy_controller.xds_port, messages()) == "OK"
    wait_until(lambda: sum(rollups(cli).values()) == n, timeout=60, interval=0.5)
    rows = rollups(cli)
    # keys: minute (arrival minute, or two if the stream spans a minute boundary) x route
    # (api or (other)) x consumer ((other)) x status class (3)
    assert len(rows) <= 2 * 2 * 1 * 3, sorted(rows)[:20]
    assert {key[3] for key in rows} == {"(other)"}
    assert {key[2] for key in rows} == {"api", "(other)"}
    grown_mb = (rss_kb(pid) - before) / 1024
    assert grown_mb < 40, f"controller RSS grew {grown_mb:.0f} MB for {n} invented names"
    text = metrics(policy_controller)
    assert metric(text, "gateway_analytics_pending_cells") <= 12
    assert metric(text, "gateway_analytics_folded_total", gateway="public", field="consumer") == n


def test_policy_writes_succeed_while_the_sink_flushes_heavily(cli: Cli, tmp_path: Path) -> None:
    """A stream of many distinct known (route, consumer, minute, status) keys keeps the sink
    writing large flushes; meanwhile every CLI policy write succeeds."""
    consumers, routes = 1000, 20
    apply(cli, base_policy(consumers=consumers, routes=routes))
    controller = Controller(cli, tmp_path)
    controller.start()
    names = ["acme"] + [f"c{i:05d}" for i in range(consumers - 1)]
    route_names = ["api"] + [f"r{i:03d}" for i in range(1, routes)]
    stop = threading.Event()
    sent = [0]

    def messages() -> Iterator[als_pb2.StreamAccessLogsMessage]:
        i, first = 0, True
        now = time.time()
        while not stop.is_set():
            entries = []
            for _ in range(5000):
                entries.append(
                    entry(
                        route=route_names[i % routes],
                        consumer=names[(i // routes) % consumers],
                        code=(200, 302, 404, 503)[(i // (routes * consumers)) % 4],
                        start=now - 60 * ((i // (4 * routes * consumers)) % 5),
                    )
                )
                i += 1
            sent[0] += len(entries)
            yield message(entries, "public" if first else None)
            first = False

    result: list[str] = []
    sender = threading.Thread(
        target=lambda: result.append(stream(controller.xds_port, messages())), daemon=True
    )
    sender.start()
    try:
        # the sink is busy: tens of thousands of distinct cells written, more coming
        wait_until(lambda: len(rollups(cli)) >= 20_000, timeout=180, interval=1)
        written_before = sum(rollups(cli).values())
        failures = []
        for k in range(8):  # each one a write transaction on the policy tables
            proc = cli.run("consumer", "add", f"new-{k}", check=False, timeout=120)
            if proc.returncode != 0:
                failures.append(proc.stderr.strip())
        assert failures == [], failures
        # ... and the rollups kept being written in the meantime
        assert sum(rollups(cli).values()) > written_before
    finally:
        stop.set()
        sender.join(60)
        controller.stop()
    assert result == ["OK"]
    assert sent[0] >= 20_000
    assert {c.name for c in _consumers(cli)} >= {f"new-{k}" for k in range(8)}


def _consumers(cli: Cli) -> list[Any]:
    from controlplane.store import Store

    store = Store(cli.db)
    try:
        return store.list_objects("consumer")
    finally:
        store.close()

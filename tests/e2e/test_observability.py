"""Controller metrics, proxy status and events, JSON access logs, a separate analytics sink,
and the HTML report in a real browser."""

from __future__ import annotations

import http.client
import json
import re
import socket
import time
import urllib.request
from collections.abc import Callable

from controlplane.demo.echo import EchoServer

from .harness import Cli, Controller, Envoy, wait_until

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


def metrics(controller: Controller) -> dict[str, float]:
    """``name{labels}`` -> value, from the controller's /metrics."""
    url = f"http://127.0.0.1:{controller.health_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        m = _SAMPLE.match(line)
        assert m, f"not a Prometheus sample: {line!r}"
        out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def get(port: int, path: str, headers: dict[str, str] | None = None) -> int:
    """Status of one request, 0 when the connection is refused (nothing is logged then)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except ConnectionRefusedError:
        return 0
    finally:
        conn.close()


def test_metrics_status_and_events_after_pushes_and_a_nack(
    cli: Cli, controller: Controller, envoy_factory: Callable[..., Envoy], gateway_port: int
) -> None:
    policy = {
        "gateways": [
            {
                "name": "public",
                "port": gateway_port,
                "address": "127.0.0.1",
                "analytics": {"enabled": True, "flush_interval": "200ms"},
            }
        ],
        "routes": [
            {
                "name": "ping",
                "gateway": "public",
                "match": {"path": "/ping"},
                "direct_response": {"status": 200, "body": "pong"},
            }
        ],
    }
    cli.run("apply", "-f", "-", input=json.dumps(policy))
    envoy_factory("public", "pub-1")
    probes = 0
    while True:  # every answered request is logged; a refused connection is not
        status = get(gateway_port, "/ping")
        probes += status != 0
        if status == 200:
            break
        time.sleep(0.05)
    wait_until(lambda: cli.json("status")["proxies"][0]["in_sync"])
    before = metrics(controller)
    assert before['gateway_connected_proxies{gateway="public"}'] == 1

    # three route changes: one RouteConfiguration push and one ACK each
    for body in ("one", "two", "three"):
        cli.run("route", "update", "ping", "--direct-response", "200", "--body", body, "--wait")
    # then one change the proxy refuses: the listener's port is taken on its host
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        proc = cli.run(
            "gateway", "update", "public", "--port", str(taken), "--wait=10s", check=False
        )
        assert proc.returncode == 7, proc.stderr

        for _ in range(20):
            assert get(gateway_port, "/ping") == 200  # the old listener keeps serving
        served = probes + 20

        rds, lds = 'type="RouteConfiguration"', 'type="Listener"'
        after = wait_until(
            lambda: (
                (m := metrics(controller))
                and m.get('gateway_analytics_entries_total{gateway="public"}', 0) >= served
                and m
            ),
            timeout=10,
        )

        def delta(name: str) -> float:
            return after.get(name, 0) - before.get(name, 0)

        assert delta(f'gateway_xds_pushes_total{{gateway="public",{rds}}}') == 3
        assert delta(f'gateway_xds_acks_total{{gateway="public",{rds}}}') == 3
        assert delta(f"gateway_xds_push_latency_seconds_count{{{rds}}}") == 3
        assert delta(f'gateway_xds_pushes_total{{gateway="public",{lds}}}') == 1
        assert delta(f'gateway_xds_acks_total{{gateway="public",{lds}}}') == 0
        assert after[f'gateway_xds_nacks_total{{gateway="public",{lds}}}'] == 1
        assert sum(v for k, v in after.items() if k.startswith("gateway_xds_nacks_total")) == 1
        assert after["gateway_policy_revision"] == cli.json("status")["revision"]
        assert after['gateway_connected_proxies{gateway="public"}'] == 1
        # analytics ingest: exactly the answered requests, none dropped
        time.sleep(0.5)
        after = metrics(controller)
        assert after['gateway_analytics_entries_total{gateway="public"}'] == served
        assert after["gateway_analytics_dropped_total"] == 0

        # status: Envoy version, time since the last ACK, the NACKed object and its field
        proxy = cli.json("status")["proxies"][0]
        assert re.fullmatch(r"1\.\d+\.\d+", proxy["envoy"])
        assert 0 <= proxy["since_ack_s"] < 60
        nack = proxy["last_nack"]
        assert nack["objects"] == "gateway public" and nack["field"] == "port"
        wide = Cli(cli.db, env={"COLUMNS": "400"})  # a wide terminal: one line per proxy
        table = wide.run("status").stdout
        assert "[gateway public: port]" in table and proxy["envoy"] in table

    # events: the changes, the pushes with their ACKs, and the NACK, in order
    events = cli.json("events", "--limit", "200")
    kinds = [e["kind"] for e in events]
    assert kinds.count("change") >= 5 and "connect" in kinds
    nacks = [e for e in events if e["kind"] == "nack"]
    assert len(nacks) == 1 and nacks[0]["node"] == "pub-1"
    assert "Address already in use" in nacks[0]["detail"]
    updates = [e for e in events if e["kind"] == "change" and e["detail"] == "update route ping"]
    assert len(updates) == 3
    for change in updates:  # each change was pushed, then ACKed
        rev = change["revision"]
        pushed = [e for e in events if e["kind"] == "push" and e["revision"] == rev]
        acked = [e for e in events if e["kind"] == "ack" and e["revision"] == rev]
        assert pushed and acked and pushed[0]["at"] <= acked[0]["at"]
        assert "RouteConfiguration" in pushed[0]["detail"]
    table = cli.run("events").stdout  # the table names each change (cells may wrap)
    assert "update gateway" in table and "public" in table


def test_json_access_log_lines(
    cli: Cli, controller: Controller, envoy_factory: Callable[..., Envoy], gateway_port: int
) -> None:
    backend = EchoServer("alpha").start()
    try:
        policy = {
            "gateways": [
                {
                    "name": "public",
                    "port": gateway_port,
                    "address": "127.0.0.1",
                    "access_log": {"format": "json"},
                }
            ],
            "clusters": [{"name": "echo", "endpoints": [f"127.0.0.1:{backend.port}"]}],
            "consumers": [{"name": "acme"}],
            "routes": [
                {
                    "name": "orders",
                    "gateway": "public",
                    "match": {"path_prefix": "/orders"},
                    "cluster": "echo",
                    "auth": {"api_key": True},
                }
            ],
        }
        cli.run("apply", "-f", "-", input=json.dumps(policy))
        key = cli.run("consumer", "key", "add", "acme").stdout.strip()
        envoy = envoy_factory("public")
        wait_until(lambda: get(gateway_port, "/orders/1", {"x-api-key": key}) == 200)
        assert get(gateway_port, "/orders/2", {"x-api-key": key, "x-echo-status": "503"}) == 503
        assert get(gateway_port, "/orders/3") == 401

        def lines() -> list[dict[str, object]]:
            out = []
            for line in envoy.log_path.read_text(errors="replace").splitlines():
                if line.startswith("{"):
                    out.append(json.loads(line))  # every such line must be JSON
            return out

        logged = wait_until(lambda: [e for e in lines() if e["path"] == "/orders/3"], timeout=10)
        by_path = {e["path"]: e for e in lines()}
        ok, failed, refused = by_path["/orders/1"], by_path["/orders/2"], logged[0]
        assert ok["consumer"] == "acme" and ok["route"] == "orders"
        assert ok["upstream_cluster"] == "echo" and ok["status"] == 200
        assert ok["response_flags"] == "-" and isinstance(ok["duration_ms"], int)
        assert ok["method"] == "GET" and isinstance(ok["bytes_sent"], int)
        assert failed["status"] == 503 and failed["consumer"] == "acme"
        assert refused["status"] == 401 and refused["consumer"] is None

        # Envoy's own statistics in Prometheus format on its admin port
        url = f"http://127.0.0.1:{envoy.admin_port}/stats/prometheus"
        with urllib.request.urlopen(url, timeout=5) as resp:
            prom = resp.read().decode()
        total = re.search(
            r'^envoy_http_downstream_rq_total\{envoy_http_conn_manager_prefix="public"\} (\d+)',
            prom,
            re.MULTILINE,
        )
        assert total and int(total.group(1)) >= 3

        # text format, a chosen set of fields
        cli.run(
            "gateway",
            "update",
            "public",
            "--access-log",
            "text",
            "--access-log-field",
            "status",
            "--access-log-field",
            "route",
            "--wait",
        )
        assert get(gateway_port, "/orders/9", {"x-api-key": key}) == 200
        wait_until(
            lambda: "status=200 route=orders" in envoy.log_path.read_text(errors="replace"),
            timeout=10,
        )
        bad = cli.run("gateway", "update", "public", "--access-log-field", "colour", check=False)
        assert bad.returncode == 2
        assert "access_log.fields: " in bad.stderr and "unknown field 'colour'" in bad.stderr
    finally:
        backend.stop()

"""The secured control channel: only Envoys with a client certificate from the CA get config.

The controller runs ``gatewayctl serve --xds-tls-cert --xds-tls-key`` with the client CA
from ``GATEWAY_XDS_CLIENT_CA``; Envoys start from ``envoy/bootstrap-mtls.yaml`` through
``run-envoy.sh`` (XDS_TLS_CERT/KEY/CA), as docker-compose would run them.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.discovery.v3 import discovery_pb2

from controlplane.envoy_launcher import bootstrap_dir, free_port, stats

from .harness import Cli, Controller, Envoy, backend_of, gatewayctl_command, wait_until
from .tlsutil import TestCA

pytestmark = pytest.mark.e2e


class Pki:
    """The control channel's CA, the controller's certificate and Envoy client certificates,
    made with ``gatewayctl pki init`` and ``pki issue``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.dir = folder / "pki"
        _pki("init", "--dir", str(self.dir))
        self.ca_path = str(self.dir / "ca.pem")
        self.server_cert = str(self.dir / "controller.pem")
        self.server_key = str(self.dir / "controller.key")

    def client(
        self, name: str, ca: TestCA | None = None, gateways: tuple[str, ...] = ("public",)
    ) -> dict[str, str]:
        """EnvoySpec fields for node ``name`` on ``gateways`` (from ``ca``, default: ours)."""
        if ca is not None:
            cert, key = ca.issue(name, [name], client=True).write(self.folder, name)
        else:
            gateway_args = [a for g in gateways for a in ("--gateway", g)]
            out = str(self.folder / name)
            _pki("issue", "--dir", str(self.dir), *gateway_args, "--node", name, "--out", out)
            cert, key = f"{out}.pem", f"{out}.key"
        return {"xds_tls_cert": cert, "xds_tls_key": key, "xds_tls_ca": self.ca_path}


def _pki(*args: str) -> None:
    proc = subprocess.run(
        [*gatewayctl_command(), "pki", *args], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


@pytest.fixture
def mtls_controller(
    cli: Cli, pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Controller]:
    monkeypatch.setenv("GATEWAY_XDS_CLIENT_CA", pki.ca_path)  # the env var form of the flag
    c = Controller(
        cli, tmp_path, ("--xds-tls-cert", pki.server_cert, "--xds-tls-key", pki.server_key)
    )
    c.start()
    yield c
    c.stop()


@pytest.fixture
def envoys() -> Iterator[list[Envoy]]:
    started: list[Envoy] = []
    yield started
    for envoy in started:
        envoy.stop()


def _listeners(admin_port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/listeners", timeout=2) as resp:
        return resp.read().decode()


def _sample(controller: Controller, name: str) -> float:
    """The value of the unlabelled metric ``name`` on the controller's /metrics."""
    url = f"http://127.0.0.1:{controller.health_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(f"{name} "):
                return float(line.split()[1])
    raise AssertionError(f"{name} is not in /metrics")


def _connected(envoy: Envoy) -> int:
    return stats(envoy.admin_port, r"^control_plane\.connected_state$")[
        "control_plane.connected_state"
    ]


def test_only_envoys_with_a_client_certificate_from_the_ca_get_config(
    cli, mtls_controller, pki, envoys, backends, gateway_port, tmp_path, monkeypatch
):
    cli.run("gateway", "add", "public", "--port", str(gateway_port), "--address", "127.0.0.1")
    cli.run("cluster", "add", "alpha", "--endpoint", f"127.0.0.1:{backends['alpha'].port}")
    xds = mtls_controller.xds_port

    good = Envoy("public", "good", xds, tmp_path, **pki.client("good"))
    envoys.append(good)
    cli.run("route", "add", "all", "--gateway", "public", "--cluster", "alpha", "--wait")
    assert backend_of(gateway_port, "/") == "alpha"
    assert _connected(good) == 1
    handshakes = _sample(mtls_controller, "gateway_xds_tls_handshakes")
    assert handshakes >= 1

    # Refused: a plaintext Envoy, one with TLS but no client certificate, and one whose
    # certificate another CA signed. None may get the gateway's listener.
    other_port, none_port, plain_port = free_port(), free_port(), free_port()
    cli.run("gateway", "add", "other", "--port", str(other_port), "--address", "127.0.0.1")
    cli.run("gateway", "add", "none", "--port", str(none_port), "--address", "127.0.0.1")
    cli.run("gateway", "add", "plain", "--port", str(plain_port), "--address", "127.0.0.1")
    for gw in ("other", "none", "plain"):
        cli.run("route", "add", f"all-{gw}", "--gateway", gw, "--cluster", "alpha")
    intruder = Envoy(
        "other",
        "intruder",
        xds,
        tmp_path,
        wait=False,
        **pki.client("intruder", TestCA("other"), ("other",)),
    )
    envoys.append(intruder)
    plain = Envoy("plain", "plain", xds, tmp_path, wait=False)
    envoys.append(plain)
    template = tmp_path / "bootstrap-tls-no-client-cert.yaml"
    template.write_text(
        "".join(
            line
            for line in (bootstrap_dir() / "bootstrap-mtls.yaml").read_text().splitlines(True)
            if not any(
                k in line
                for k in (
                    "tls_certificate",
                    "certificate_chain",
                    "private_key",
                    "client_certificate",
                )
            )
        )
    )
    monkeypatch.setenv("ENVOY_BOOTSTRAP", str(template))
    anonymous = Envoy(
        "none", "anonymous", xds, tmp_path, wait=False, **pki.client("anonymous", None, ("none",))
    )
    monkeypatch.delenv("ENVOY_BOOTSTRAP")
    envoys.append(anonymous)

    # gRPC refuses them in the handshake: no Python runs for them, but every attempt is
    # counted, so the handshakes keep rising while only the good Envoy is connected.
    wait_until(
        lambda: _sample(mtls_controller, "gateway_xds_tls_handshakes") >= handshakes + 3 * 3,
        timeout=60,
        interval=0.5,
    )
    time.sleep(2)  # several reconnect attempts (0.1-1 s backoff), all refused
    for envoy, gw in ((intruder, "other"), (anonymous, "none"), (plain, "plain")):
        assert envoy.proc.poll() is None, envoy.log_path.read_text()[-2000:]
        assert _connected(envoy) == 0
        assert gw not in _listeners(envoy.admin_port)
        # what the refused Envoy itself reports: connections tried, no TLS session ever
        xds_cx = stats(
            envoy.admin_port, r"^cluster\.xds_cluster\.(upstream_cx_total|ssl\.handshake)$"
        )
        assert xds_cx.get("cluster.xds_cluster.upstream_cx_total", 0) >= 2, xds_cx
        assert xds_cx.get("cluster.xds_cluster.ssl.handshake", 0) == 0, xds_cx
    for port in (other_port, none_port, plain_port):
        assert backend_of_or_refused(port) == "refused"
    # The controller never saw them as proxies; the good one is in sync.
    proxies = {p["node"]: p for p in cli.json("status")["proxies"]}
    assert set(proxies) == {"good"} and proxies["good"]["in_sync"]
    assert _metric(mtls_controller.health_port, "gateway_connected_proxies") == {
        'gateway_connected_proxies{gateway="public"}': 1
    }
    assert _sample(mtls_controller, "gateway_xds_streams_refused") == 0  # none got that far
    log = (mtls_controller.log_dir / f"controller-{mtls_controller.starts}.log").read_text()
    assert "authenticated as CN=good" in log
    assert "over mutual TLS" in log

    # The good Envoy still gets changes.
    cli.run("route", "update", "all", "--path-prefix", "/only", "--wait")
    assert backend_of(gateway_port, "/only/x") == "alpha"
    assert backend_of(gateway_port, "/") == 404


def backend_of_or_refused(port: int) -> str:
    try:
        return str(backend_of(port, "/"))
    except OSError:
        return "refused"


def test_serve_refuses_incomplete_or_mismatched_tls_files(cli: Cli, pki: Pki) -> None:
    other_key = pki.client("x")["xds_tls_key"]
    ca = ["--xds-client-ca", pki.ca_path]
    cases = [
        (["--xds-tls-cert", pki.server_cert], "go together"),
        (
            ["--xds-tls-cert", pki.server_cert, "--xds-tls-key", other_key, *ca],
            f"--xds-tls-key: {other_key} does not match the certificate",
        ),
        (
            ["--xds-tls-cert", pki.server_cert, "--xds-tls-key", "/nonexistent.key", *ca],
            "--xds-tls-key: cannot read /nonexistent.key",
        ),
    ]
    env = {**os.environ, "GATEWAY_DB": cli.db}
    env.pop("GATEWAY_XDS_CLIENT_CA", None)
    for args, expected in cases:
        proc = subprocess.run(
            [
                *gatewayctl_command(),
                "serve",
                "--xds-address",
                f"127.0.0.1:{free_port()}",
                "--health-address",
                "",
                *args,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1, proc.stderr
        assert lines[0].startswith("error: ") and expected in lines[0], lines[0]


# -- a client certificate permits one node id and the gateways it names (ADR 0018) ----------

ADS_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"


def _ads(
    port: int,
    files: dict[str, str] | None,
    requests: list[discovery_pb2.DiscoveryRequest],
    hold: float = 0.0,
) -> tuple[grpc.StatusCode, str, list[discovery_pb2.DiscoveryResponse]]:
    """A grpcio ADS client (what an attacker would write): sends ``requests``, keeps the
    stream open ``hold`` seconds; returns the final status, its details and the responses."""
    target = f"127.0.0.1:{port}"
    if files is None:
        channel = grpc.insecure_channel(target)
    else:
        creds = grpc.ssl_channel_credentials(
            root_certificates=Path(files["xds_tls_ca"]).read_bytes(),
            private_key=Path(files["xds_tls_key"]).read_bytes(),
            certificate_chain=Path(files["xds_tls_cert"]).read_bytes(),
        )
        channel = grpc.secure_channel(target, creds)

    def send() -> Iterator[discovery_pb2.DiscoveryRequest]:
        yield from requests
        time.sleep(hold)

    call = channel.stream_stream(
        ADS_METHOD,
        request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
        response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
    )
    responses: list[discovery_pb2.DiscoveryResponse] = []
    try:
        for resp in call(send(), timeout=hold + 10):
            responses.append(resp)
        return grpc.StatusCode.OK, "", responses
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or "", responses
    finally:
        channel.close()


def _request(gateway: str, node: str, nack: str | None = None) -> discovery_pb2.DiscoveryRequest:
    req = discovery_pb2.DiscoveryRequest(type_url=CDS)
    req.node.id, req.node.cluster = node, gateway
    if nack is not None:  # a made-up rejection of a response never sent
        req.response_nonce = "1"
        req.version_info = "1"
        req.error_detail.message = nack
    return req


def _metric(health_port: int, name: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/metrics", timeout=2) as resp:
        lines = resp.read().decode().splitlines()
    return {ln.split(" ")[0]: float(ln.split(" ")[1]) for ln in lines if ln.startswith(name + "{")}


def _replica_members(envoy: Envoy) -> int:
    """Members of the local cluster as this Envoy sees them (what rate limits divide by)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{envoy.admin_port}/clusters", timeout=2) as r:
        lines = r.read().decode().splitlines()
    return len({ln.split("::")[1] for ln in lines if ln.startswith("gateway_replicas::")
                and "::health_flags::" in ln})  # fmt: skip


def test_a_certificate_serves_only_the_gateways_and_node_it_names(
    cli, mtls_controller, pki, envoys, backends, gateway_port, tmp_path
):
    other_port = free_port()
    # a limit the gateway's replicas divide: only then is the membership served as counted
    cli.run("gateway", "add", "public", "--port", str(gateway_port), "--address", "127.0.0.1",
            "--rate-limit-key", "none", "--rate-limit", "1000/second")  # fmt: skip
    cli.run("gateway", "add", "secret", "--port", str(other_port), "--address", "127.0.0.1")
    cli.run("cluster", "add", "alpha", "--endpoint", f"127.0.0.1:{backends['alpha'].port}")
    cli.run("route", "add", "secret", "--gateway", "secret", "--cluster", "alpha")
    xds, health = mtls_controller.xds_port, mtls_controller.health_port
    good = Envoy("public", "good", xds, tmp_path, **pki.client("good"))
    envoys.append(good)
    cli.run("route", "add", "all", "--gateway", "public", "--cluster", "alpha", "--wait")
    assert backend_of(gateway_port, "/") == "alpha"
    wait_until(lambda: _replica_members(good) == 1, 10)

    # A valid certificate for gateway "public", node "fake-a", used to ask for "secret";
    # to pose as the real Envoy "good" (with an invented NACK first); and with a node id
    # of its own choosing. Each stream is held open a while, as a fake replica would be.
    fake = pki.client("fake-a")
    attempts = {
        "other gateway": [_request("secret", "fake-a")],
        "other node": [_request("public", "good", nack="invented rejection")],
        "made-up node": [_request("public", "fake-b")],
    }
    results: dict[str, tuple[grpc.StatusCode, str, list[Any]]] = {}
    threads = [
        threading.Thread(target=lambda k=k, r=r: results.__setitem__(k, _ads(xds, fake, r, 3)))
        for k, r in attempts.items()
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:  # while the fakes would be connected
        assert _metric(health, "gateway_connected_proxies") == {
            'gateway_connected_proxies{gateway="public"}': 1.0
        }
        assert _replica_members(good) == 1
        time.sleep(0.1)
    for t in threads:
        t.join(20)
    for what, (code, details, responses) in results.items():
        assert code == grpc.StatusCode.PERMISSION_DENIED, (what, code, details)
        assert responses == [], what
    assert (
        "does not permit gateway 'secret' (node.cluster); it permits: public"
        in (results["other gateway"][1])
    )
    assert (
        "does not permit node id 'good' (node.id); it permits: fake-a" in (results["other node"][1])
    )
    assert "does not permit node id 'fake-b'" in results["made-up node"][1]

    # No status row, no event, no NACK for any of them; the real Envoy is untouched.
    proxies = {p["node"]: p for p in cli.json("status")["proxies"]}
    assert set(proxies) == {"good"}
    assert proxies["good"]["in_sync"] and proxies["good"]["last_nack"] is None
    # (token events name the actor in "node": the controller's first admin token)
    events = cli.json("events", "--limit", "1000")
    nodes = {e["node"] for e in events if e["node"] and e["kind"] != "token"}
    assert nodes == {"good"}
    assert not any(e["kind"] == "nack" for e in cli.json("events", "--limit", "1000"))
    assert "secret" not in _listeners(good.admin_port)
    # refusals are logged (rate-limited), with the reason
    log = mtls_controller.log()
    assert "refused an xDS stream" in log and "does not permit gateway 'secret'" in log
    assert _sample(mtls_controller, "gateway_xds_streams_refused") >= 1

    # The same certificate on its own node and gateway is served.
    code, _, responses = _ads(xds, fake, [_request("public", "fake-a")], 0.5)
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED) and responses
    assert responses[0].resources[0].type_url == CDS
    cli.run("route", "update", "all", "--path-prefix", "/only", "--wait")
    assert backend_of(gateway_port, "/only/x") == "alpha"


def test_a_plaintext_client_gets_nothing_from_an_mtls_port(cli, mtls_controller):
    code, _, responses = _ads(mtls_controller.xds_port, None, [_request("public", "x")])
    assert code == grpc.StatusCode.UNAVAILABLE and responses == []
    assert cli.json("status")["proxies"] == []


def _als(port: int, files: dict[str, str], gateway: str, node: str) -> tuple[grpc.StatusCode, str]:
    """A grpcio access-log client naming (gateway, node) and sending one entry."""
    from envoy.data.accesslog.v3 import accesslog_pb2
    from envoy.service.accesslog.v3 import als_pb2

    creds = grpc.ssl_channel_credentials(
        root_certificates=Path(files["xds_tls_ca"]).read_bytes(),
        private_key=Path(files["xds_tls_key"]).read_bytes(),
        certificate_chain=Path(files["xds_tls_cert"]).read_bytes(),
    )
    msg = als_pb2.StreamAccessLogsMessage()
    msg.identifier.node.id, msg.identifier.node.cluster = node, gateway
    msg.identifier.log_name = gateway
    entry = accesslog_pb2.HTTPAccessLogEntry()
    entry.common_properties.route_name = "r"
    entry.response.response_code.value = 200
    msg.http_logs.log_entry.append(entry)
    with grpc.secure_channel(f"127.0.0.1:{port}", creds) as channel:
        call = channel.stream_unary(
            "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs",
            request_serializer=als_pb2.StreamAccessLogsMessage.SerializeToString,
            response_deserializer=als_pb2.StreamAccessLogsResponse.FromString,
        )
        try:
            call(iter([msg]), timeout=10)
            return grpc.StatusCode.OK, ""
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or ""


def test_access_log_streams_need_a_certificate_for_their_node(cli, mtls_controller, pki):
    files = pki.client("fake-a")
    code, details = _als(mtls_controller.xds_port, files, "secret", "fake-a")
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "does not permit gateway 'secret'" in details
    code, details = _als(mtls_controller.xds_port, files, "public", "envoy-1")
    assert code == grpc.StatusCode.PERMISSION_DENIED and "node id 'envoy-1'" in details
    assert _metric(mtls_controller.health_port, "gateway_analytics_entries_total") == {}
    assert "refused an access-log stream" in mtls_controller.log()
    assert _sample(mtls_controller, "gateway_xds_streams_refused") == 2


def test_a_separate_analytics_sink_is_reached_over_mutual_tls(
    cli, mtls_controller, pki, envoys, backends, gateway_port, tmp_path
):
    """With an mTLS controller, Envoys reach a separate sink with their control-channel
    certificate; the sink (bound beyond loopback, so only with mTLS) verifies it."""
    sink_cert = str(tmp_path / "sink")
    _pki("server", "--dir", str(pki.dir), "--host", "127.0.0.1", "--out", sink_cert)
    sink_port, sink_http = free_port(), free_port()
    log_path = tmp_path / "sink.log"
    with open(log_path, "wb") as out:
        sink = subprocess.Popen(
            [
                *gatewayctl_command(),
                *("analytics-sink", "--address", f"0.0.0.0:{sink_port}"),
                *("--http-address", f"127.0.0.1:{sink_http}"),
                *("--tls-cert", f"{sink_cert}.pem", "--tls-key", f"{sink_cert}.key"),
                *("--client-ca", pki.ca_path),
            ],
            env={**os.environ, "GATEWAY_DB": cli.db},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:

        def sink_up() -> bool:
            assert sink.poll() is None, log_path.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{sink_http}/healthz", timeout=1):
                    return True
            except OSError:
                return False

        # the sink answers before anything is sent to it (the CLI's few commands take
        # less time than its start-up)
        wait_until(sink_up, 30, 0.1)
        cli.run(
            *("gateway", "add", "public", "--port", str(gateway_port), "--address", "127.0.0.1"),
            *("--analytics-sink", f"127.0.0.1:{sink_port}", "--analytics-flush-interval", "0.2s"),
        )
        cli.run("cluster", "add", "alpha", "--endpoint", f"127.0.0.1:{backends['alpha'].port}")
        good = Envoy("public", "good", mtls_controller.xds_port, tmp_path, **pki.client("good"))
        envoys.append(good)
        cli.run("route", "add", "all", "--gateway", "public", "--cluster", "alpha", "--wait")

        for _ in range(5):
            assert backend_of(gateway_port, "/") == "alpha"

        def logged() -> float:
            return sum(_metric(sink_http, "gateway_analytics_entries_total").values())

        # Envoy flushes its buffer every 0.2 s, so the five entries may arrive in parts
        wait_until(lambda: logged() >= 5, 30, 0.2)
        assert sink.poll() is None, log_path.read_text()
        # a plaintext client gets nothing from the sink
        with grpc.insecure_channel(f"127.0.0.1:{sink_port}") as channel:
            call = channel.stream_unary(
                "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs",
                request_serializer=lambda m: m,
                response_deserializer=lambda b: b,
            )
            with pytest.raises(grpc.RpcError) as refused:
                call(iter([b""]), timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        sink.terminate()
        sink.wait(10)

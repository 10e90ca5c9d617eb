"""External authorization through the real CLI, controller and Envoy.

The gRPC authorization service is a real grpcio server implementing
``envoy.service.auth.v3.Authorization/Check`` from the official stubs (xds-protos), the
protocol OPA-Envoy speaks; the HTTP one is a plain HTTP server.
"""

from __future__ import annotations

import http.client
import http.server
import json
import threading
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any, ClassVar

import grpc
import pytest
import yaml
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.rpc import code_pb2, status_pb2

from controlplane.demo.echo import EchoServer
from controlplane.envoy_launcher import free_port

from .harness import Cli, Envoy, wait_until

pytestmark = pytest.mark.e2e


def _header(name: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=name, value=value),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )


class Authorizer(external_auth_pb2_grpc.AuthorizationServicer):
    """Allows /authz/allow..., denies /authz/deny..., answers /authz/slow... late, and
    allows /authz/body... only when the body it was sent says so."""

    def __init__(self) -> None:
        self.checks: list[external_auth_pb2.CheckRequest] = []

    def Check(
        self, request: external_auth_pb2.CheckRequest, context: grpc.ServicerContext
    ) -> external_auth_pb2.CheckResponse:
        self.checks.append(request)
        http_request = request.attributes.request.http
        path = http_request.path
        if path.startswith("/authz/slow"):
            time.sleep(2)
        allowed = path.startswith(("/authz/allow", "/authz/slow")) or (
            path.startswith("/authz/body") and "let-me-in" in http_request.body
        )
        if allowed:
            return external_auth_pb2.CheckResponse(
                status=status_pb2.Status(code=code_pb2.OK),
                ok_response=external_auth_pb2.OkHttpResponse(
                    headers=[_header("x-authz-user", "alice")]
                ),
            )
        return external_auth_pb2.CheckResponse(
            status=status_pb2.Status(code=code_pb2.PERMISSION_DENIED),
            denied_response=external_auth_pb2.DeniedHttpResponse(
                status=http_status_pb2.HttpStatus(code=http_status_pb2.Forbidden),
                headers=[_header("x-denied-by", "authorizer")],
                body="denied: not on the list\n",
            ),
        )


class _HttpAuthz(http.server.BaseHTTPRequestHandler):
    calls: ClassVar[list[tuple[str, dict[str, str]]]] = []

    def _answer(self) -> None:
        self.calls.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
        ok = self.path.startswith("/check/http/allow") and self.headers.get("authorization")
        body = b"" if ok else b"http authorizer says no\n"
        self.send_response(200 if ok else 403)
        if ok:
            self.send_header("x-user", "bob")
            self.send_header("x-internal", "not for the backend")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: Any) -> None:
        pass


def _get(
    port: int, path: str, headers: dict[str, str] | None = None, body: bytes | None = None
) -> tuple[int, dict[str, str], Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("POST" if body is not None else "GET", path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        hdrs = {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()
    try:
        return resp.status, hdrs, json.loads(data)
    except ValueError:
        return resp.status, hdrs, data.decode(errors="replace")


@pytest.fixture
def authz(cli: Cli, controller: Any, envoy_factory: Callable[..., Envoy], tmp_path: Path) -> Any:
    authorizer = Authorizer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(authorizer, server)
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    _HttpAuthz.calls = []
    http_authz = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HttpAuthz)
    threading.Thread(target=http_authz.serve_forever, daemon=True).start()
    backend = EchoServer("alpha").start()
    port = free_port()
    grpc_authz = {
        "cluster": "authz",
        "timeout": "500ms",
        "body": {"max_bytes": 64, "allow_partial": True},
    }
    policy = {
        "gateways": [{"name": "ea", "port": port, "address": "127.0.0.1"}],
        "clusters": [
            {"name": "app", "endpoints": [f"127.0.0.1:{backend.port}"]},
            {"name": "authz", "endpoints": [f"127.0.0.1:{grpc_port}"], "protocol": "http2"},
            {"name": "nowhere", "endpoints": [f"127.0.0.1:{free_port()}"], "protocol": "http2"},
            {"name": "authz-http", "endpoints": [f"127.0.0.1:{http_authz.server_address[1]}"]},
        ],
        "routes": [
            {
                "name": "guarded",
                "gateway": "ea",
                "match": {"path_prefix": "/authz"},
                "cluster": "app",
                "ext_authz": grpc_authz,
            },
            {"name": "free", "gateway": "ea", "match": {"path_prefix": "/free"}, "cluster": "app"},
            {
                "name": "down-closed",
                "gateway": "ea",
                "match": {"path_prefix": "/down-closed"},
                "cluster": "app",
                "ext_authz": {"cluster": "nowhere", "timeout": "500ms"},
            },
            {
                "name": "down-open",
                "gateway": "ea",
                "match": {"path_prefix": "/down-open"},
                "cluster": "app",
                "ext_authz": {"cluster": "nowhere", "timeout": "500ms", "failure_mode": "open"},
            },
            {
                "name": "http-guarded",
                "gateway": "ea",
                "match": {"path_prefix": "/http"},
                "cluster": "app",
                "ext_authz": {
                    "cluster": "authz-http",
                    "protocol": "http",
                    "path_prefix": "/check",
                    "headers": ["authorization"],
                    "upstream_headers": ["x-user"],
                },
            },
        ],
    }
    path = tmp_path / "authz.yaml"
    path.write_text(yaml.safe_dump(policy))
    envoy_factory("ea")
    # Envoy checks the write first (translated as a write is), as without the tests' "never"
    cli.run("--validate", "always", "apply", "-f", str(path), "--wait=60s")
    wait_until(lambda: _get(port, "/free")[0] == 200, timeout=30)
    yield port, authorizer, backend
    backend.stop()
    http_authz.shutdown()
    server.stop(0)


def test_grpc_allow_and_deny(authz: Any) -> None:
    port, authorizer, backend = authz
    # the decision's headers reach the backend, replacing a client-sent copy
    status, _, body = _get(port, "/authz/allow/1", headers={"x-authz-user": "mallory"})
    assert status == 200
    assert body["headers"]["x-authz-user"] == "alice"
    check = authorizer.checks[-1].attributes.request.http
    assert check.path == "/authz/allow/1" and check.method == "GET"
    # denied: the service's status, headers and body; the backend never sees it
    before = backend.hits
    status, headers, text = _get(port, "/authz/deny/1")
    assert status == 403
    assert text == "denied: not on the list\n"
    assert headers["x-denied-by"] == "authorizer"
    assert backend.hits == before


def test_grpc_body_is_sent_bounded(authz: Any) -> None:
    port, authorizer, _ = authz
    assert _get(port, "/authz/body", body=b"let-me-in please")[0] == 200
    assert authorizer.checks[-1].attributes.request.http.body == "let-me-in please"
    assert _get(port, "/authz/body", body=b"no entry")[0] == 403
    # a larger body: only its first 64 bytes are sent (allow_partial)
    big = b"let-me-in" + b"." * 500
    assert _get(port, "/authz/body", body=big)[0] == 200
    assert len(authorizer.checks[-1].attributes.request.http.body) == 64


def test_skipped_only_where_the_policy_says(authz: Any) -> None:
    port, authorizer, _ = authz
    count = len(authorizer.checks)
    assert _get(port, "/free/x")[0] == 200
    assert len(authorizer.checks) == count


def test_failure_modes_and_timeout(authz: Any) -> None:
    port, _, backend = authz
    before = backend.hits
    assert _get(port, "/down-closed/x")[0] == 403  # service unreachable, fail closed
    assert backend.hits == before
    status, _, body = _get(port, "/down-open/x")  # fail open: through, marked
    assert status == 200
    assert body["headers"]["x-envoy-auth-failure-mode-allowed"] == "true"
    # the service answers "allow" after 2 s; the 500 ms timeout refuses first
    started = time.monotonic()
    assert _get(port, "/authz/slow")[0] == 403
    assert time.monotonic() - started < 1.8
    assert backend.hits == before + 1


def test_http_service(authz: Any) -> None:
    port, _, _ = authz
    status, _, body = _get(
        port, "/http/allow/1", headers={"authorization": "Bearer t", "x-user": "forged"}
    )
    assert status == 200
    assert body["headers"]["x-user"] == "bob"
    assert "x-internal" not in body["headers"]  # only the named decision headers go on
    path, headers = _HttpAuthz.calls[-1]
    assert path == "/check/http/allow/1" and headers["authorization"] == "Bearer t"
    status, _, text = _get(port, "/http/allow/1")  # no credentials: the service says no
    assert status == 403 and text == "http authorizer says no\n"


def test_bad_input_is_refused(cli: Cli, tmp_path: Path) -> None:
    cli.run("gateway", "add", "gw", "--port", str(free_port()), "--address", "127.0.0.1")
    cli.run("cluster", "add", "app", "--endpoint", "127.0.0.1:9")
    before = cli.run("export").stdout
    route = {"name": "r", "gateway": "gw", "cluster": "app"}
    for expected, authz in {
        "cluster 'missing' does not exist": {"cluster": "missing"},
        "ext_authz.cluster": {"cluster": "app"},  # http1 cluster for gRPC
        "ext_authz.failure_mode": {"cluster": "app", "failure_mode": "maybe"},
        "ext_authz.body.max_bytes": {"cluster": "app", "body": {"max_bytes": 0}},
        "ext_authz.timeout": {"cluster": "app", "timeout": "soon"},
    }.items():
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump({"routes": [{**route, "ext_authz": authz}]}))
        proc = cli.run("apply", "-f", str(path), check=False)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], proc.stderr
    assert cli.run("export").stdout == before

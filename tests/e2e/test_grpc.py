"""gRPC through a real Envoy: native calls, JSON -> gRPC transcoding, gRPC-Web, status codes
and deadlines, all against one grpcio backend behind one route."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest

from controlplane.demo.grpc_users import PROTO, SERVICE, UsersServer, UsersStubs
from controlplane.envoy_launcher import free_port

from .harness import Cli, Controller, Envoy

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def users() -> Iterator[UsersServer]:
    server = UsersServer("users-1").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(users: UsersServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """One route to the gRPC backend: transcoding, gRPC-Web and native gRPC together.

    Shared by the tests of this module (one controller and one Envoy start)."""
    tmp = tmp_path_factory.mktemp("grpc")
    cli = Cli(db=str(tmp / "gateway.db"))
    controller = Controller(cli, tmp)
    controller.start()
    port = free_port()
    envoy = None
    try:
        cli.add_gateway("public", port)
        cli.run(
            "cluster", "add", "users-grpc", "--endpoint", f"127.0.0.1:{users.port}",
            "--protocol", "http2",
        )  # fmt: skip
        cli.run("proto", "add", "users", "--proto", str(PROTO))
        cli.add_route(
            "users-api", "public", "/", "users-grpc",
            "--transcode", "users", "--transcode-service", SERVICE,
            "--grpc-web", "--grpc-timeout-max", "1s",
        )  # fmt: skip
        # the same backend without a grpc-timeout cap, for requests with x-route: plain
        cli.add_route("users-plain", "public", "/", "users-grpc", "--header", "x-route=plain")
        envoy = Envoy("public", "public-1", controller.xds_port, tmp)
        cli.run("route", "update", "users-api", "--timeout", "20s", "--wait")
        yield port
    finally:
        if envoy is not None:
            envoy.stop()
        controller.stop()


def _stubs(port: int) -> tuple[grpc.Channel, UsersStubs]:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    return channel, UsersStubs(channel)


def test_native_grpc_and_status_codes(gateway: int, users: UsersServer) -> None:
    channel, stubs = _stubs(gateway)
    calls = users.calls
    with channel:
        reply = stubs.call("GetUser", id="42")
        assert (reply.id, reply.name, reply.served_by) == ("42", "user 42", "users-1")
        with pytest.raises(grpc.RpcError) as err:
            stubs.call("GetUser", id="missing")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert err.value.details() == "no user 'missing'"
        with pytest.raises(grpc.RpcError) as err:
            stubs.call("CreateUser", name="")
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert users.calls == calls + 3  # each call reached the backend once


def test_json_transcoding(gateway: int, users: UsersServer) -> None:
    base = f"http://127.0.0.1:{gateway}"
    with httpx.Client(base_url=base, timeout=10) as http:
        # automatic mapping: POST /package.Service/Method with the request as JSON
        resp = http.post(f"/{SERVICE}/GetUser", json={"id": "7"})
        assert resp.status_code == 200, resp.text
        assert resp.headers["content-type"].startswith("application/json")
        assert resp.json() == {"id": "7", "name": "user 7", "active": True, "servedBy": "users-1"}
        # google.api.http annotations: a path parameter and a body
        resp = http.get("/v1/users/42")
        assert resp.status_code == 200, resp.text
        assert resp.json()["id"] == "42"
        resp = http.post("/v1/users", json={"name": "Ada"})
        assert resp.status_code == 200, resp.text
        # zero values are printed (always_print_primitive_fields)
        assert resp.json() == {"id": "new", "name": "Ada", "active": False, "servedBy": "users-1"}
        # a gRPC error becomes its HTTP status with the google.rpc.Status as JSON
        resp = http.get("/v1/users/missing")
        assert resp.status_code == 404
        assert resp.json()["code"] == 5 and resp.json()["message"] == "no user 'missing'"
        calls = users.calls
        # unknown methods and paths are refused by Envoy, not sent to the gRPC server
        for method, path in (
            ("POST", f"/{SERVICE}/DeleteUser"),
            ("GET", "/v1/nothing/here"),
            ("DELETE", "/v1/users/42"),
        ):
            resp = http.request(method, path, json={} if method == "POST" else None)
            assert resp.status_code == 404, (method, path, resp.status_code, resp.text)
            assert "method" in resp.text.lower(), resp.text
        assert users.calls == calls


def _grpc_web_frame(message: bytes) -> bytes:
    return struct.pack(">BI", 0, len(message)) + message


def _grpc_web_frames(body: bytes) -> list[tuple[int, bytes]]:
    frames, i = [], 0
    while i < len(body):
        flag, length = struct.unpack(">BI", body[i : i + 5])
        frames.append((flag, body[i + 5 : i + 5 + length]))
        i += 5 + length
    return frames


def _grpc_web_call(port: int, method: str, request: Any) -> tuple[httpx.Response, list[Any]]:
    resp = httpx.post(
        f"http://127.0.0.1:{port}/{SERVICE}/{method}",
        content=_grpc_web_frame(request.SerializeToString()),
        headers={"content-type": "application/grpc-web+proto", "x-grpc-web": "1"},
        timeout=10,
    )
    return resp, _grpc_web_frames(resp.content)


def _trailers(frames: list[tuple[int, bytes]], resp: httpx.Response) -> dict[str, str]:
    """Status from the trailer frame, or from the headers of a trailers-only response."""
    out = {k: v for k, v in resp.headers.items() if k.startswith("grpc-")}
    for flag, data in frames:
        if flag & 0x80:
            for line in data.decode().split("\r\n"):
                if line:
                    key, _, value = line.partition(":")
                    out[key.strip().lower()] = value.strip()
    return out


def test_grpc_web(gateway: int, users: UsersServer) -> None:
    _, stubs = _stubs(gateway)
    resp, frames = _grpc_web_call(gateway, "GetUser", stubs.request("GetUser", id="5"))
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/grpc-web")
    data = [d for flag, d in frames if flag == 0]
    assert len(data) == 1
    user = stubs.messages.methods["GetUser"][1].FromString(data[0])
    assert (user.id, user.served_by) == ("5", "users-1")
    assert _trailers(frames, resp)["grpc-status"] == "0"

    resp, frames = _grpc_web_call(gateway, "GetUser", stubs.request("GetUser", id="missing"))
    assert resp.status_code == 200
    trailers = _trailers(frames, resp)
    assert trailers["grpc-status"] == str(grpc.StatusCode.NOT_FOUND.value[0])
    assert "missing" in trailers["grpc-message"]


def test_grpc_timeout_header(gateway: int, users: UsersServer) -> None:
    channel, stubs = _stubs(gateway)
    with channel:
        # the client's deadline travels as grpc-timeout and expires before the reply
        with pytest.raises(grpc.RpcError) as err:
            stubs.call("Slow", timeout=0.3, delay_ms=5000)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # a longer deadline is capped by Envoy at the route's grpc_timeout_max (1s): the
        # backend is told 1s instead of 30s, and a slower call fails with DEADLINE_EXCEEDED
        reply = stubs.call("Slow", timeout=30, delay_ms=0)
        assert 0 < reply.deadline_ms <= 1000
        with pytest.raises(grpc.RpcError) as err:
            stubs.call("Slow", timeout=30, delay_ms=5000)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # within the deadline, the call succeeds
        assert stubs.call("Slow", timeout=30, delay_ms=10).delay_ms == 10
        # without grpc-timeout the backend sees no deadline (the route timeout applies)
        assert stubs.call("Slow", timeout=None, delay_ms=0).deadline_ms == 0
        # a route without grpc_timeout_max passes the client's deadline on unchanged
        plain = stubs.call("Slow", timeout=30, metadata=[("x-route", "plain")], delay_ms=0)
        assert plain.deadline_ms > 20_000


def test_json_body(gateway: int) -> None:
    resp = httpx.post(
        f"http://127.0.0.1:{gateway}/{SERVICE}/Slow", content=json.dumps({"delayMs": 5}),
        headers={"content-type": "application/json"}, timeout=10,
    )  # fmt: skip
    assert resp.status_code == 200 and resp.json()["delayMs"] == 5

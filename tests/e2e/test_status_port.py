"""Hostile requests on the HTTP ports (the controller's health/status/metrics port and the
analytics sink's): each gets a 4xx or a closed connection, nothing is logged as a traceback
or an unhandled exception, and the port keeps serving.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from controlplane.metrics import CONTENT_TYPE

from .harness import Cli, Controller
from .test_analytics_sink import Sink

HOSTILE: list[bytes] = [
    b"GET /\xff\xfe\xfd HTTP/1.1\r\nHost: x\r\n\r\n",  # not UTF-8 in the target
    b"G\xc3\x28T /healthz HTTP/1.1\r\nHost: x\r\n\r\n",  # not UTF-8 in the method
    b"GET /" + b"a" * 65536 + b" HTTP/1.1\r\nHost: x\r\n\r\n",  # a 64 KB request line
    b"GET /healthz HTTP/1.1\r\nX-Big: " + b"b" * 65536 + b"\r\n\r\n",  # a 64 KB header
    b"BREW /healthz HTTP/1.1\r\nHost: x\r\n\r\n",  # a method nobody knows
    b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",  # not GET
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 64,  # a TLS ClientHello
    b"GET\r\n\r\n",  # no target
    b"\r\n\r\n\r\n",  # nothing at all
    b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",  # an unknown version
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
]

#: what a traceback or an unhandled error looks like in a log
TRACEBACK_MARKERS = ("Traceback", "Unhandled exception", "Error handling request", "Task exception")


def _send(port: int, data: bytes) -> bytes:
    """Send ``data`` raw and read until the server answers and closes, or 5 s pass."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            return b""  # the server closed first: a closed connection is an acceptable answer
        chunks = []
        s.settimeout(5)
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
        return b"".join(chunks)


def _status(answer: bytes) -> int | None:
    """The status code of the first response, or None for a connection closed unanswered."""
    if not answer:
        return None
    line = answer.split(b"\r\n", 1)[0].split()
    assert line[:1] == [b"HTTP/1.1"] or line[:1] == [b"HTTP/1.0"], answer[:200]
    return int(line[1])


def _get(port: int, path: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read()


def _assert_hostile_refused(port: int) -> None:
    for data in HOSTILE:
        status = _status(_send(port, data))
        assert status is None or 400 <= status < 500, (data[:40], status)
        assert _get(port, "/healthz")[0] == 200  # still serving after each one


def _assert_no_traceback(log: str) -> None:
    for marker in TRACEBACK_MARKERS:
        assert marker not in log, log[-3000:]


def test_controller_health_port_answers_hostile_requests_with_4xx(
    cli: Cli, controller: Controller
) -> None:
    port = controller.health_port
    _assert_hostile_refused(port)
    # the endpoints, their outputs and content types are unchanged
    status, ctype, body = _get(port, "/healthz")
    assert (status, ctype, json.loads(body)) == (200, "application/json", {"ok": True})
    status, ctype, body = _get(port, "/readyz?probe=1")
    assert (status, ctype, json.loads(body)) == (200, "application/json", {"ok": True})
    status, ctype, body = _get(port, "/status")
    assert status == 200 and ctype == "application/json" and "revision" in json.loads(body)
    status, ctype, body = _get(port, "/metrics")
    assert status == 200 and ctype == CONTENT_TYPE and b"gateway_policy_revision" in body
    status, ctype, body = _get(port, "/nope")
    assert (status, ctype) == (404, "application/json")
    assert json.loads(body)["error"]["code"] == "not_found"  # the admin API's error shape
    controller.stop()
    _assert_no_traceback(controller.log())


@pytest.fixture
def sink(cli: Cli, tmp_path: Path) -> Sink:
    cli.run("gateway", "add", "public", "--port", "1", "--address", "127.0.0.1")  # creates the db
    s = Sink(cli, tmp_path)
    s.start()
    yield s  # type: ignore[misc]
    s.stop()


def test_sink_http_port_answers_hostile_requests_with_4xx(sink: Sink, tmp_path: Path) -> None:
    _assert_hostile_refused(sink.http_port)
    status, ctype, body = _get(sink.http_port, "/metrics")
    assert status == 200 and ctype == CONTENT_TYPE and b"gateway_analytics" in body
    status, ctype, body = _get(sink.http_port, "/readyz")
    assert (status, ctype, json.loads(body)) == (200, "application/json", {"ok": True})
    sink.stop()
    _assert_no_traceback((tmp_path / "sink-1.log").read_text(errors="replace"))

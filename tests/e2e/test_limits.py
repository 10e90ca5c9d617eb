"""Body, header and timeout limits through the real CLI, controller and Envoy.

The backend here counts the body bytes it receives as they arrive (Content-Length or
chunked), so a test can tell a streamed upload from one Envoy buffered first.
"""

from __future__ import annotations

import http.client
import json
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controlplane.envoy_launcher import free_port, stats

from .harness import Cli, Envoy, wait_until

pytestmark = pytest.mark.e2e

MB = 1024 * 1024


class _Counting(socketserver.StreamRequestHandler):
    server: _CountingServer

    def _chunked(self) -> Iterator[int]:
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                self.rfile.readline()
                return
            left = size
            while left:
                got = len(self.rfile.read(min(left, 65536)))
                if not got:
                    return
                left -= got
                yield got
            self.rfile.readline()

    def _sized(self, length: int) -> Iterator[int]:
        while length:
            got = len(self.rfile.read(min(length, 65536)))
            if not got:
                return
            length -= got
            yield got

    def handle(self) -> None:
        while True:
            line = self.rfile.readline()
            if not line.strip():
                return
            headers: dict[str, str] = {}
            while (h := self.rfile.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = h.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            self.server.requests += 1
            self.server.received = 0
            chunks = (
                self._chunked()
                if headers.get("transfer-encoding", "").lower() == "chunked"
                else self._sized(int(headers.get("content-length", "0")))
            )
            for got in chunks:
                self.server.received += got
            body = json.dumps({"received": self.server.received}).encode()
            self.wfile.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                + f"content-length: {len(body)}\r\n\r\n".encode()
                + body
            )
            self.wfile.flush()


class _CountingServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Counting)
        self.requests = 0
        self.received = 0  # body bytes of the current request so far


@pytest.fixture
def gw(cli: Cli, controller: Any, envoy_factory: Callable[..., Envoy], tmp_path: Path) -> Any:
    backend = _CountingServer()
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    port = free_port()
    policy = {
        "gateways": [
            {
                "name": "limits",
                "port": port,
                "address": "127.0.0.1",
                "max_request_body": 1024,
                "limits": {
                    "max_request_headers_kb": 8,
                    "max_headers_count": 20,
                    "request_headers_timeout": "1s",
                },
            }
        ],
        "clusters": [{"name": "app", "endpoints": [f"127.0.0.1:{backend.server_address[1]}"]}],
        "routes": [
            {
                "name": "small",
                "gateway": "limits",
                "match": {"path_prefix": "/small"},
                "cluster": "app",
            },
            {
                "name": "upload",
                "gateway": "limits",
                "match": {"path_prefix": "/upload"},
                "cluster": "app",
                "max_request_body": 100 * MB,
            },
        ],
    }
    path = tmp_path / "limits.yaml"
    path.write_text(yaml.safe_dump(policy))
    envoy = envoy_factory("limits")
    # Envoy checks the write first (translated as a write is), as without the tests' "never"
    cli.run("--validate", "always", "apply", "-f", str(path), "--wait=60s")
    wait_until(lambda: _post(port, "/small", b"x")[0] == 200, timeout=30)
    yield port, backend, envoy
    backend.shutdown()
    backend.server_close()


def _post(
    port: int,
    path: str,
    body: bytes,
    *,
    chunked: bool = False,
    headers: dict[str, str] | None = None,
) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        if chunked:
            conn.request(
                "POST",
                path,
                body=iter([body[i : i + 300] for i in range(0, len(body), 300)]),
                headers={**(headers or {}), "transfer-encoding": "chunked"},
                encode_chunked=True,
            )
        else:
            conn.request("POST", path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


def test_body_limit_by_content_length(gw: Any) -> None:
    """One byte over the (gateway's default) limit: 413 and the backend never sees it."""
    port, backend, _ = gw
    assert _post(port, "/small", b"x" * 1024)[0] == 200
    before = backend.requests
    status, text = _post(port, "/small", b"x" * 1025)
    assert status == 413 and "too large" in text
    assert backend.requests == before


def test_body_limit_without_length(gw: Any) -> None:
    """A chunked body (no Content-Length) is held up to the limit, 413 beyond it."""
    port, backend, _ = gw
    status, text = _post(port, "/small", b"y" * 1000, chunked=True)
    assert status == 200 and json.loads(text)["received"] == 1000
    before = backend.requests
    assert _post(port, "/small", b"y" * 2000, chunked=True)[0] == 413
    assert backend.requests == before


def test_large_upload_streams_through(gw: Any) -> None:
    """50 MB under a 100 MB limit reaches the backend while it is being sent: Envoy does not
    hold the body, and its heap stays flat."""
    port, backend, envoy = gw

    def memory() -> int:
        return stats(envoy.admin_port, r"^server\.memory_allocated$")["server.memory_allocated"]

    baseline = memory()
    size, chunk = 50 * MB, b"z" * MB
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    peak = 0
    try:
        sock.sendall(f"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: {size}\r\n\r\n".encode())
        for i in range(size // MB):
            sock.sendall(chunk)
            if i == 10:
                # the backend already has data while 39 MB are still to be sent
                wait_until(lambda: backend.received >= 5 * MB, timeout=30)
            if i % 10 == 0:
                peak = max(peak, memory())
        response = b""
        while b"}" not in response:
            data = sock.recv(65536)
            if not data:
                break
            response += data
    finally:
        sock.close()
    assert response.startswith(b"HTTP/1.1 200"), response[:200]
    assert json.loads(response.split(b"\r\n\r\n", 1)[1])["received"] == size
    assert peak - baseline < 16 * MB, f"Envoy's heap grew by {(peak - baseline) / MB:.1f} MB"
    # over the route's own limit: refused before anything is sent on
    before = backend.requests
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        sock.sendall(
            f"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: {100 * MB + 1}\r\n\r\n".encode()
        )
        assert sock.recv(65536).startswith(b"HTTP/1.1 413")
    finally:
        sock.close()
    assert backend.requests == before


def test_header_limits(gw: Any) -> None:
    port, backend, _ = gw
    before = backend.requests
    many = {f"x-h{i}": "v" for i in range(30)}
    status, _ = _post(port, "/small", b"", headers=many)
    assert status == 431
    status, _ = _post(port, "/small", b"", headers={"x-big": "b" * 9000})
    assert status == 431
    assert backend.requests == before
    assert _post(port, "/small", b"", headers={f"x-h{i}": "v" for i in range(10)})[0] == 200


def test_request_headers_timeout(gw: Any) -> None:
    """A client that never finishes its request head (slowloris) is cut off."""
    port, _, _ = gw
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    try:
        sock.sendall(b"GET /small HTTP/1.1\r\nhost: x\r\n")
        started = time.monotonic()
        data = b""
        while True:
            got = sock.recv(65536)
            if not got:
                break
            data += got
    finally:
        sock.close()
    assert data.startswith(b"HTTP/1.1 408"), data[:200]
    assert time.monotonic() - started < 15


def test_bad_input_is_refused(cli: Cli, tmp_path: Path) -> None:
    cli.run("gateway", "add", "gw", "--port", str(free_port()), "--address", "127.0.0.1")
    before = cli.run("export").stdout
    for field, doc in {
        "max_request_body": {"gateways": [{"name": "gw", "port": 8080, "max_request_body": 0}]},
        "limits.max_headers_count": {
            "gateways": [{"name": "gw", "port": 8080, "limits": {"max_headers_count": 0}}]
        },
        "limits.request_headers_timeout": {
            "gateways": [{"name": "gw", "port": 8080, "limits": {"request_headers_timeout": "x"}}]
        },
    }.items():
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(doc))
        proc = cli.run("apply", "-f", str(path), check=False)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and field in lines[0], proc.stderr
    assert cli.run("export").stdout == before

"""A small HTTP echo backend for demos and tests.

Each request is answered with JSON describing what arrived (method, path, headers, every
header line as sent, body) and an `x-backend` header naming the server, so a test talking
through Envoy can tell which upstream served it and what Envoy added or removed. Two
request headers steer the reply: `x-echo-status: NNN` picks the status code and
`x-echo-delay-ms: N` delays it (for retry, timeout and outlier tests);
`x-echo-cache-control: V` sends `Cache-Control: V` back and `x-echo-pad: N` adds N bytes
of padding to the JSON (caching and compression tests). A test holding the server can also
make it fail: `fail_next = N` answers the next N requests with `fail_status`,
`status = 503` answers every request so. `GET /__echo/hits` reports the request count
without counting itself, so a test can ask a backend directly how much traffic reached it.

Runs in-process (`EchoServer`) for tests and as `python -m controlplane.demo.echo` for the
docker-compose demo backends. Standard library only.
"""

from __future__ import annotations

import argparse
import collections
import json
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

__all__ = ["HITS_PATH", "EchoServer", "main"]

#: Control path that reports the hit counter; requests to it are not counted.
HITS_PATH = "/__echo/hits"
#: Upper bound for x-echo-delay-ms, so a typo cannot park a server thread for hours.
MAX_DELAY_MS = 60_000
#: Request bodies above this are read and discarded but not echoed back in full.
MAX_ECHO_BODY = 64 * 1024


class _EchoHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that carries the EchoServer state for its handlers."""

    daemon_threads = True
    # Many concurrent keep-alive clients connect at once in load tests; the default
    # backlog of 5 makes some of them wait for a SYN retransmit (1 s).
    request_queue_size = 128

    echo: EchoServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore clients that hang up mid-request (normal when Envoy or a test aborts)."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class _EchoHandler(BaseHTTPRequestHandler):
    """Answers every method with a JSON description of the request."""

    # HTTP/1.1 keeps connections open between requests, as Envoy's upstream pool expects.
    protocol_version = "HTTP/1.1"
    server: _EchoHTTPServer
    server_version = "echo"
    # Headers and body are two writes; without TCP_NODELAY the second waits for the client's
    # delayed ACK (~40 ms per request on keep-alive connections).
    disable_nagle_algorithm = True
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: per-request logging to stderr slows load tests and clutters output."""

    def _read_body(self) -> bytes:
        """Read the request body by Content-Length so the connection stays usable."""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        kept = bytearray()
        remaining = max(length, 0)
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 65536))
            if not chunk:
                break
            remaining -= len(chunk)
            if len(kept) < MAX_ECHO_BODY:
                kept += chunk[: MAX_ECHO_BODY - len(kept)]
        return bytes(kept)

    def _send(
        self, status: int, payload: dict[str, Any], extra: dict[str, str] | None = None
    ) -> None:
        body = json.dumps(payload).encode()
        # 204 and 304 must not carry a body; sending one would desync keep-alive clients.
        bodyless = status in (204, 304)
        self.send_response(status)
        self.send_header("x-backend", self.server.echo.name)
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        if not bodyless:
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and not bodyless:
            self.wfile.write(body)

    def _handle(self) -> None:
        echo = self.server.echo
        received = time.monotonic()
        body = self._read_body()
        if self.command == "GET" and self.path.split("?", 1)[0] == HITS_PATH:
            self._send(200, {"hits": echo.hits})
            return

        status = 200
        raw_status = self.headers.get("x-echo-status")
        if raw_status:
            try:
                candidate = int(raw_status)
            except ValueError:
                candidate = 0
            status = candidate if 200 <= candidate <= 599 else 400
        raw_delay = self.headers.get("x-echo-delay-ms")
        if not raw_delay and echo.delay_ms:
            time.sleep(echo.delay_ms / 1000.0)
        if raw_delay:
            try:
                delay_ms = min(max(float(raw_delay), 0.0), MAX_DELAY_MS)
            except ValueError:
                delay_ms = 0.0
            if delay_ms:
                time.sleep(delay_ms / 1000.0)

        record: dict[str, Any] = {
            "backend": echo.name,
            "method": self.command,
            "path": self.path,
            "headers": {name.lower(): value for name, value in self.headers.items()},
            # every header line as sent, in order: duplicates and spellings a framework
            # would merge (x_consumer_id, X-Consumer-Id) stay visible
            "header_lines": [[name, value] for name, value in self.headers.items()],
            "body": body.decode("utf-8", "replace"),
        }
        pad = self.headers.get("x-echo-pad", "")
        if pad.isdigit():
            record["pad"] = "x" * min(int(pad), MAX_ECHO_BODY)
        extra = {}
        cache_control = self.headers.get("x-echo-cache-control")
        if cache_control:
            extra["Cache-Control"] = cache_control
        status = echo._forced_status(status)
        echo._record(record, received)
        self._send(status, record, extra)

    do_GET = _handle
    do_POST = _handle
    do_PUT = _handle
    do_PATCH = _handle
    do_DELETE = _handle
    do_HEAD = _handle
    do_OPTIONS = _handle


class EchoServer:
    """An echo backend on its own thread; use as a context manager in tests.

    `port=0` picks a free port, readable from `.port` after construction. `.hits` counts
    answered requests (not the control path) and `.requests` keeps the most recent ones.
    """

    def __init__(
        self,
        name: str,
        host: str = "127.0.0.1",
        port: int = 0,
        keep_requests: int = 100,
        delay_ms: float = 0,
    ) -> None:
        self.name = name
        #: delay of every answer without an x-echo-delay-ms header (a slow backend for
        #: aggregation tests, whose callers cannot add headers per backend)
        self.delay_ms = delay_ms
        self._lock = threading.Lock()
        self._hits = 0
        self._requests: collections.deque[dict[str, Any]] = collections.deque(maxlen=keep_requests)
        self._spans: collections.deque[tuple[float, float]] = collections.deque(
            maxlen=keep_requests
        )
        # Binding happens here so the port is known before start() and a clash fails early.
        self._httpd = _EchoHTTPServer((host, port), _EchoHandler)
        self._httpd.echo = self
        self._thread: threading.Thread | None = None
        #: answer the next N requests with ``fail_status`` (retry tests)
        self.fail_next = 0
        self.fail_status = 503
        #: answer every request with this status (outlier tests); None: as asked
        self.status: int | None = None

    def _forced_status(self, asked: int) -> int:
        with self._lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                return self.fail_status
        return self.status if self.status is not None else asked

    @property
    def host(self) -> str:
        """The address the server is bound to."""
        return str(self._httpd.server_address[0])

    @property
    def port(self) -> int:
        """The bound TCP port (the real one when constructed with port=0)."""
        return int(self._httpd.server_address[1])

    @property
    def hits(self) -> int:
        """Number of requests answered, excluding GET /__echo/hits."""
        with self._lock:
            return self._hits

    @property
    def requests(self) -> list[dict[str, Any]]:
        """The most recent request records, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def spans(self) -> list[tuple[float, float]]:
        """(received, answered) ``time.monotonic()`` pairs of the most recent requests.

        Tests compare these spans with each other (did two requests overlap?), which
        proves concurrency without bounding how fast the machine is.
        """
        with self._lock:
            return list(self._spans)

    def _record(self, record: dict[str, Any], received: float) -> None:
        with self._lock:
            self._hits += 1
            self._requests.append(record)
            self._spans.append((received, time.monotonic()))

    def reset(self) -> None:
        """Zero the counter and forget recorded requests, e.g. between test phases."""
        with self._lock:
            self._hits = 0
            self._requests.clear()
            self._spans.clear()

    def start(self) -> EchoServer:
        """Serve on a daemon thread and return self; a second call is a no-op."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"echo-{self.name}-{self.port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve on the calling thread until interrupted (the command-line mode)."""
        self._httpd.serve_forever()

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> EchoServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    """Run one echo backend in the foreground (the docker-compose demo backends use this)."""
    parser = argparse.ArgumentParser(description="HTTP echo backend for gateway demos and tests")
    parser.add_argument("--name", required=True, help="backend name, sent back as x-backend")
    parser.add_argument("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0)")
    parser.add_argument("--port", type=int, default=8080, help="port to bind (default 8080)")
    parser.add_argument("--delay-ms", type=float, default=0, help="delay of every answer")
    args = parser.parse_args(argv)
    server = EchoServer(args.name, host=args.host, port=args.port, delay_ms=args.delay_ms)

    def _terminate(signum: int, frame: object) -> None:
        # As PID 1 in a container SIGTERM is otherwise ignored and `docker stop` waits 10 s.
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    print(f"echo backend {args.name!r} listening on {server.host}:{server.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()

"""Serve an ASGI app with uvicorn inside the caller's asyncio loop.

The controller owns the process: its signal handlers stop everything, so uvicorn installs
none of its own, and stopping is bounded (in-flight requests get ``grace`` seconds, then
their connections are closed). The socket is bound here, before serving starts, so a port
that is taken is an error of ``start`` and port 0 reports the port it got.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn

__all__ = ["HttpService", "split_address", "warm_routes"]

log = logging.getLogger(__name__)


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


async def warm_routes(app: Any) -> int:
    """Send ``app`` one request, in-process, for a path no route has; its status.

    FastAPI builds each included router's route table at the first request that walks it,
    and a path that matches nothing walks them all: ~150 ms of CPU on the admin API's first
    request otherwise (measured: the first ``GET /v1/routes`` of a fresh controller 144 ms,
    the next 4-6 ms), paid by whichever user or CLI command comes first. Built here, before
    the controller freezes its heap (``Controller._freeze_heap``), the tables are frozen
    with the rest of what start-up made."""
    done: dict[str, int] = {}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            done["status"] = int(message["status"])

    path = "/-/warm-up"
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"localhost")],
        "client": ("127.0.0.1", 0),
        "server": ("127.0.0.1", 0),
    }
    await app(scope, receive, send)
    return done.get("status", 0)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # the controller handles SIGINT/SIGTERM
        yield


class HttpService:
    """One HTTP(S) listener serving ``app``; :meth:`start`, then :meth:`close`."""

    def __init__(
        self,
        app: Any,
        address: str,
        *,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        grace: float = 3.0,
        name: str = "http",
    ) -> None:
        self.address = address
        self.name = name
        self.grace = grace
        self.port = 0
        self._config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            lifespan="off",
            ssl_certfile=tls_cert,
            ssl_keyfile=tls_key,
            timeout_graceful_shutdown=int(max(1, grace)),
            timeout_keep_alive=15,
            h11_max_incomplete_event_size=16 * 1024,
            server_header=False,
            proxy_headers=False,
        )
        self._server = _Server(self._config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        host, port = split_address(self.address)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # proto named: asyncio sets TCP_NODELAY only on sockets whose proto is TCP, and
        # without it a response written in two parts waits out the client's delayed ACK
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise OSError(
                f"cannot listen for {self.name} on {self.address}: {exc.strerror}"
            ) from None
        sock.listen(128)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        if not self._config.loaded:
            self._config.load()  # the TLS context: a bad certificate fails here
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name=self.name)
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise OSError(f"{self.name} on {self.address} stopped while starting")
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), self.grace + 2)
        except TimeoutError:
            self._server.force_exit = True
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        except Exception:
            log.exception("%s: error while stopping", self.name)
        self._task = None

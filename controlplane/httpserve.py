"""The GET-only HTTP server for health, status and metrics endpoints (aiohttp.web).

The controller and the analytics sink answer a handful of GETs from probes and Prometheus.
Parsing HTTP is left to aiohttp (already a dependency, for the aggregation service): a
request line that is not UTF-8, longer than the limit, or with a method it does not know is
answered 400/405/414 by the library and logged at debug level only, never as a traceback,
and the next request is served as usual.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

__all__ = ["HttpServer", "Route", "serve_http", "serve_http_on", "split_address"]

#: path -> (status, content type, body)
Route = Callable[[str], tuple[int, str, bytes]]

#: request line and header field limits (aiohttp's defaults are 8190): probes send tiny requests
MAX_LINE = 4096
MAX_FIELD = 8190


log = logging.getLogger(__name__)


class _ProtocolLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server log, minus tracebacks for requests it could not parse.

    aiohttp answers a malformed request (bad bytes, over-long line, bad chunking...) with a
    4xx by itself, then logs it with ``logger.exception``: a full traceback at ERROR for what
    is only a client's mistake or a scanner. Those become one DEBUG line; an exception raised
    while handling a well-formed request (a bug of ours) keeps its traceback.
    """

    def exception(self, msg: object, *args: Any, exc_info: Any = True, **kw: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):
            self.logger.debug("%s: %s", str(msg) % args if args else msg, exc_info.message)
            return
        self.logger.exception(msg, *args, exc_info=exc_info, **kw)


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


class HttpServer:
    """A running server: its bound port, and :meth:`close` to stop it."""

    def __init__(self, runner: web.AppRunner, port: int) -> None:
        self._runner = runner
        self.port = port

    async def close(self) -> None:
        await self._runner.cleanup()


async def serve_http(address: str, route: Route) -> HttpServer:
    host, port = split_address(address)
    return await serve_http_on(host, port, route)


async def serve_http_on(host: str, port: int, route: Route) -> HttpServer:
    """Serve ``route`` for GET and HEAD on every path (other methods: 405) at host:port."""

    async def handle(request: web.Request) -> web.Response:
        status, content_type, body = route(request.path)
        return web.Response(status=status, body=body, headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        max_line_size=MAX_LINE,
        max_field_size=MAX_FIELD,
        keepalive_timeout=15,
        logger=_ProtocolLog(log, {}),
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    addresses = runner.addresses  # the port actually bound (port 0 -> an ephemeral one)
    return HttpServer(runner, int(addresses[0][1]) if addresses else port)

"""``gatewayctl aggregator``: answer aggregate routes by calling their parts in parallel.

A request arrives from a gateway's Envoy with the composition in ``x-gateway-aggregate``
(set by the route; see :mod:`.spec`). Every part is called at once through that Envoy's
parts listener (the peer address of the request, port from the composition), each under
its own timeout, so the answer takes about as long as the slowest part, not the sum.
The parts' JSON bodies become members of one object. A part fails on a timeout, a
connection error, a non-2xx status or a body that is not JSON. With ``fail`` the first
failure answers 502 naming the part (the others are cancelled); with ``partial`` the
answer is 200 with the parts that answered and ``errors: {part: reason}``.

The service keeps no state between requests: replicas are interchangeable, and Envoy
spreads requests over them (least request) and health-checks ``/healthz``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import signal
from collections.abc import Mapping
from typing import Any

import aiohttp
import re2
from aiohttp import web
from yarl import URL

from .spec import PART_HEADER, SPEC_HEADER, Part, Spec, SpecError

__all__ = ["Aggregator", "PartFailed", "serve"]

log = logging.getLogger(__name__)

#: a part's body above this is a failure, not something to hold in memory
MAX_PART_BODY = 8 * 1024 * 1024
#: the composition header of a 16-part route with long paths fits with room to spare
MAX_HEADER = 64 * 1024
#: response header counting failed parts of a partial answer (0 is not sent)
ERRORS_HEADER = "x-gateway-aggregate-errors"
#: response header naming the part that failed a ``fail`` aggregate
FAILED_HEADER = "x-gateway-aggregate-failed"
_ALWAYS_FORWARDED = ("x-request-id",)
#: answers the request count to a direct caller (composite requests always carry a spec)
STATS_PATH = "/__aggregator/stats"


class PartFailed(Exception):
    """One part did not give a usable answer; ``reason`` says why, in a few words."""

    def __init__(self, part: str, reason: str) -> None:
        super().__init__(f"part {part!r} failed: {reason}")
        self.part = part
        self.reason = reason


@functools.lru_cache(maxsize=1024)
def _spec(value: str) -> Spec:
    """Decoded compositions; a gateway has few aggregate routes, so this is a hit."""
    return Spec.decode(value)


@functools.lru_cache(maxsize=256)
def _regex(pattern: str) -> Any:
    return re2.compile(pattern)


def _json(status: int, data: Any, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(data, separators=(",", ":")).encode(),
        content_type="application/json",
        headers=headers,
    )


class Aggregator:
    """The HTTP handler and its client session (one connection pool per service)."""

    def __init__(self, parts_host: str | None = None) -> None:
        #: where the parts listener is; None: the Envoy that sent the request
        self.parts_host = parts_host
        self._session: aiohttp.ClientSession | None = None
        #: composite requests answered (any status), for ``/__aggregator/stats``
        self.served = 0

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30, enable_cleanup_closed=True)
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)

        async def _startup(_app: web.Application) -> None:
            await self.start()

        async def _cleanup(_app: web.Application) -> None:
            await self.close()

        app.on_startup.append(_startup)
        app.on_cleanup.append(_cleanup)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        header = request.headers.get(SPEC_HEADER)
        if header is None and request.path == "/healthz":
            return _json(200, {"ok": True})
        if header is None and request.path == STATS_PATH:
            return _json(200, {"aggregates": self.served})
        self.served += 1
        try:
            spec = _spec(header or "")
        except SpecError as exc:
            return _json(400, {"error": str(exc)})
        if request.method not in ("GET", "HEAD"):
            return _json(
                405, {"error": "an aggregate answers GET and HEAD"}, {"allow": "GET, HEAD"}
            )
        host = self.parts_host or request.remote or "127.0.0.1"
        try:
            paths = [self._path(part, spec, request) for part in spec.parts]
        except PartFailed as exc:
            return _json(502, {"error": str(exc), "part": exc.part, "reason": exc.reason})
        headers = {
            name: request.headers[name]
            for name in (*spec.forward_headers, *_ALWAYS_FORWARDED)
            if name in request.headers
        }
        calls = [
            self._call(part, f"http://{_host(host)}:{spec.port}{path}", headers)
            for part, path in zip(spec.parts, paths, strict=True)
        ]
        if spec.partial:
            return self._partial(spec, await asyncio.gather(*calls, return_exceptions=True))
        return await self._all_or_nothing(spec, calls)

    def _path(self, part: Part, spec: Spec, request: web.Request) -> str:
        """The part's path with placeholders filled and, if asked, the client's query."""
        path = part.path
        if "{" in path:
            groups: dict[str, str] = {}
            if spec.path_regex is not None:
                match = _regex(spec.path_regex).fullmatch(request.raw_path.split("?", 1)[0])
                if match is not None:
                    groups = {k: v for k, v in match.groupdict().items() if v is not None}
            for name, value in groups.items():
                path = path.replace("{" + name + "}", value)
            if "{" in path:
                raise PartFailed(part.name, f"the request path {request.path!r} fills no {path!r}")
        query = request.rel_url.raw_query_string  # as sent: %26 stays %26
        if spec.forward_query and query:
            path += ("&" if "?" in path else "?") + query
        return path

    async def _call(self, part: Part, url: str, headers: dict[str, str]) -> Any:
        assert self._session is not None
        send = {
            **headers,
            PART_HEADER: part.cluster,
            "host": part.cluster,
            # Envoy stops the upstream request at the same time as this service gives up
            "x-envoy-upstream-rq-timeout-ms": str(part.timeout_ms),
        }
        try:
            async with asyncio.timeout(part.timeout_ms / 1000):
                async with self._session.get(
                    # already encoded (the route's path and the client's query as sent)
                    URL(url, encoded=True),
                    headers=send,
                    allow_redirects=False,
                ) as resp:
                    body = await resp.content.read(MAX_PART_BODY + 1)
                    status, ctype = resp.status, resp.content_type
        except TimeoutError:
            raise PartFailed(part.name, f"timeout after {part.timeout_ms}ms") from None
        except aiohttp.ClientError as exc:
            raise PartFailed(part.name, f"connection failed: {exc.__class__.__name__}") from None
        if not 200 <= status < 300:
            raise PartFailed(part.name, f"status {status}")
        if len(body) > MAX_PART_BODY:
            raise PartFailed(part.name, f"body larger than {MAX_PART_BODY} bytes")
        if not body:
            return None
        try:
            return json.loads(body)
        except ValueError:
            if ctype.startswith("text/"):
                return body.decode("utf-8", "replace")
            raise PartFailed(part.name, "body is not JSON") from None

    def _partial(self, spec: Spec, results: list[Any]) -> web.Response:
        out: dict[str, Any] = {}
        errors: dict[str, str] = {}
        for part, result in zip(spec.parts, results, strict=True):
            if isinstance(result, PartFailed):
                errors[part.name] = result.reason
            elif isinstance(result, BaseException):
                log.error("part %s: %r", part.name, result)
                errors[part.name] = "internal error"
            else:
                out[part.name] = result
        if not errors:
            return _json(200, out)
        out["errors"] = errors
        return _json(200, out, {ERRORS_HEADER: str(len(errors))})

    async def _all_or_nothing(self, spec: Spec, calls: list[Any]) -> web.Response:
        tasks = [asyncio.ensure_future(c) for c in calls]
        try:
            for done in asyncio.as_completed(tasks):
                try:
                    await done
                except PartFailed as exc:
                    return _json(
                        502,
                        {"error": str(exc), "part": exc.part, "reason": exc.reason},
                        {FAILED_HEADER: exc.part},
                    )
        finally:
            for task in tasks:
                task.cancel()
                if task.done() and not task.cancelled():
                    task.exception()  # retrieved: a second failure is not worth a warning
        return _json(200, {p.name: t.result() for p, t in zip(spec.parts, tasks, strict=True)})


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def serve(
    host: str, port: int, parts_host: str | None = None, ready: asyncio.Event | None = None
) -> None:
    """Serve until SIGINT/SIGTERM (or cancellation)."""
    aggregator = Aggregator(parts_host)
    runner = web.AppRunner(
        aggregator.app(), access_log=None, handle_signals=False, max_field_size=MAX_HEADER
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True, backlog=1024)
    await site.start()
    log.info("aggregation service listening on %s:%d", host, port)
    if ready is not None:
        ready.set()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()

"""A minimal HTTP/1.1 GET server for health, status and metrics endpoints (asyncio streams).

The controller and the analytics sink answer a handful of GETs from probes and Prometheus;
a web framework would add a dependency and a thread for that.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["Route", "serve_http", "split_address"]

#: path -> (status, content type, body)
Route = Callable[[str], tuple[int, str, bytes]]

_REASONS = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


async def serve_http(address: str, route: Route) -> asyncio.Server:
    host, port = split_address(address)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = line.split()
            path = parts[1].decode().split("?", 1)[0] if len(parts) > 1 else "/"
            status, content_type, body = route(path)
            writer.write(
                f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError, IndexError, UnicodeDecodeError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)

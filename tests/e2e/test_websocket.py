"""WebSocket upgrades through a real Envoy: per-route opt-in, connections that outlive route
pushes, and the route's idle timeout."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from controlplane.envoy_launcher import stats
from controlplane.policy import parse_object
from controlplane.store import Store

from .harness import wait_until

pytestmark = pytest.mark.e2e


class EchoWebSocket:
    """An asyncio WebSocket server on its own thread that answers each message with
    ``echo:<message>`` and counts the connections it accepted."""

    def __init__(self) -> None:
        self.port = 0
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Future[None] | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _echo(self, ws: ServerConnection) -> None:
        self.connections += 1
        async for message in ws:
            await ws.send(f"echo:{message}")

    async def _main(self) -> None:
        self._stop = self._loop.create_future()
        async with serve(self._echo, "127.0.0.1", 0) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            self._ready.set()
            await self._stop

    def _run(self) -> None:
        self._loop.run_until_complete(self._main())

    def start(self) -> EchoWebSocket:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set_result, None)
        self._thread.join(10)


@pytest.fixture
def ws_backend() -> Iterator[EchoWebSocket]:
    server = EchoWebSocket().start()
    yield server
    server.stop()


def _round_trip(ws: ClientConnection, text: str) -> str:
    ws.send(text)
    reply = ws.recv(timeout=10)
    assert isinstance(reply, str)
    return reply


def test_websocket_routes(cli, controller, envoy_factory, ws_backend, gateway_port) -> None:  # type: ignore[no-untyped-def]
    port = gateway_port
    cli.add_gateway("public", port)
    cli.run("cluster", "add", "chat", "--endpoint", f"127.0.0.1:{ws_backend.port}")
    cli.add_route("chat", "public", "/chat", "chat", "--websocket", "--idle-timeout", "60s")
    cli.add_route("idle", "public", "/idle", "chat", "--websocket", "--idle-timeout", "1s")
    cli.add_route("plain", "public", "/plain", "chat")  # same backend, no upgrades
    envoy = envoy_factory("public")
    cli.run("route", "update", "plain", "--timeout", "5s", "--wait")
    url = f"ws://127.0.0.1:{port}"

    # a route without websocket: true refuses the upgrade; the backend never sees it
    with pytest.raises(InvalidStatus) as refused:
        connect(f"{url}/plain/socket", open_timeout=10)
    assert refused.value.response.status_code == 403
    assert ws_backend.connections == 0

    with connect(f"{url}/chat/room", open_timeout=10) as ws:
        assert _round_trip(ws, "hello") == "echo:hello"
        assert ws_backend.connections == 1

        # 50 unrelated route changes, each applied by Envoy, while the connection is open.
        # Through the store's write path (the one the CLI uses) so the test stays fast; the
        # last one through the CLI with --wait.
        def pushes() -> int:
            counters = stats(envoy.admin_port, r"rds\.public\.update_success$")
            return counters["http.public.rds.public.update_success"]

        store = Store(cli.db)
        try:
            for i in range(49):
                before = pushes()
                store.create(
                    parse_object(
                        "route",
                        {
                            "name": f"other-{i}",
                            "gateway": "public",
                            "match": {"path_prefix": f"/other/{i}"},
                            "cluster": "chat",
                        },
                    )
                )
                wait_until(lambda before=before: pushes() > before)
                assert _round_trip(ws, f"m{i}") == f"echo:m{i}"
        finally:
            store.close()
        cli.add_route("other-49", "public", "/other/49", "chat", "--wait")
        assert _round_trip(ws, "still here") == "echo:still here"
        assert ws_backend.connections == 1  # the same connection throughout

        # the idle route: an idle connection is closed by Envoy; the busy one stays
        with connect(f"{url}/idle/room", open_timeout=10) as idle:
            assert _round_trip(idle, "ping") == "echo:ping"
            with pytest.raises(ConnectionClosed):
                idle.recv(timeout=15)  # nothing sent: the 1s idle timeout closes it
        assert _round_trip(ws, "after") == "echo:after"

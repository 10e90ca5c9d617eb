"""The floor under an ADS push: a bare grpc.aio stream server doing only the writes.

Run from the repository root with the project's venv::

    python -m bench.grpc_floor                          # 100 streams, 3 writes each, 30 pushes
    python -m bench.grpc_floor --streams 1000 --writes 1
    python -m bench.grpc_floor --size 200
    python -m bench.grpc_floor --server grpclib          # pip install grpclib
    python -m bench.grpc_floor --uvloop                  # pip install uvloop

No controller code: a server process holds ``--streams`` bidirectional streams (one channel,
so one connection, each) from a client process, as ``bench.ads_fanout``'s simulated Envoys
hold theirs. A push asks every stream to write ``--writes`` messages of ``--size`` bytes one
after the other (each awaited, as one ADS stream writes CDS, then EDS, then RDS); the client
answers every message with a small one, as Envoy ACKs each response. Reported: the time from
the push to the server having read every answer, and the server's CPU time for it (all of
its threads), and the server's RSS growth per connection once every stream is open. Set
beside ``bench.ads_fanout`` and ``bench.reconnect`` it says how much of a push, and of a
proxy's memory, is gRPC's own, which no change to the stream code can remove.

``--server grpclib`` serves the same streams with grpclib (pure-Python HTTP/2 on asyncio's
own transports, no completion-queue threads) instead of grpcio's C core, and ``--uvloop``
runs the grpcio server on uvloop: the two alternatives to grpc.aio's per-message cost that
do not change the protocol (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import time
from multiprocessing.queues import Queue
from typing import Any

from .harness import rss_kib
from .stats import percentile


def _identity(data: bytes) -> bytes:
    return data


class _Pushes:
    """What both servers share: each stream's push queue and loop, and the answers awaited."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.streams: list[asyncio.Queue[int]] = []
        self.answered = asyncio.Event()
        self.answers = 0
        self.want = -1
        self.writes = args.writes
        self.message = b"x" * args.size

    def answer(self) -> None:
        self.answers += 1
        if self.answers == self.want:
            self.answered.set()

    async def serve(self, requests: Any, write: Any) -> None:
        """One stream: count what it reads, write ``--writes`` messages at each push."""
        pushes: asyncio.Queue[int] = asyncio.Queue()
        self.streams.append(pushes)

        async def read() -> None:
            async for _ in requests:
                self.answer()

        reader = asyncio.create_task(read())
        try:
            while True:
                await pushes.get()
                for _ in range(self.writes):
                    await write(self.message)
        finally:
            reader.cancel()


async def _push(
    args: argparse.Namespace, state: _Pushes, port: int, ports: Queue[Any], results: Queue[Any]
) -> None:
    """The server listens on ``port``: once every stream is open, time ``--pushes`` pushes,
    then report (server side)."""
    await asyncio.sleep(0.5)
    before = rss_kib(os.getpid())
    ports.put(port)
    while len(state.streams) < args.streams:
        await asyncio.sleep(0.05)
    await asyncio.sleep(2)  # every stream has its first message and answer
    opened = rss_kib(os.getpid())
    took, cpu = [], []
    for _ in range(args.pushes):
        state.answers, state.want = 0, args.streams * args.writes
        state.answered.clear()
        cpu0, start = time.process_time(), time.perf_counter()
        for pushes in state.streams:
            pushes.put_nowait(1)
        await state.answered.wait()
        took.append((time.perf_counter() - start) * 1e3)
        cpu.append((time.process_time() - cpu0) * 1e3)
        await asyncio.sleep(args.pause)
    results.put((took, cpu, (opened - before) / args.streams))
    await asyncio.sleep(3600)  # ended by the benchmark (a stop would log every cancelled call)


class _RawCodec:
    """grpclib's codec for messages that are already bytes."""

    __content_subtype__ = "proto"

    def encode(self, message: bytes, message_type: Any) -> bytes:
        return message

    def decode(self, data: bytes, message_type: Any) -> bytes:
        return data


async def _grpclib_server(args: argparse.Namespace, ports: Queue[Any], results: Queue[Any]) -> None:
    from grpclib.const import Cardinality, Handler
    from grpclib.server import Server

    state = _Pushes(args)

    async def handler(stream: Any) -> None:
        await stream.send_initial_metadata()
        await state.serve(stream, stream.send_message)

    class Floor:
        def __mapping__(self) -> dict[str, Any]:
            return {
                "/floor.Floor/Stream": Handler(handler, Cardinality.STREAM_STREAM, bytes, bytes)
            }

    server = Server([Floor()], codec=_RawCodec())  # type: ignore[arg-type]
    await server.start("127.0.0.1", 0)
    port = server._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    await _push(args, state, port, ports, results)


async def _server(args: argparse.Namespace, ports: Queue[Any], results: Queue[Any]) -> None:
    import grpc

    server = grpc.aio.server()
    state = _Pushes(args)

    async def handler(requests: Any, context: Any) -> None:
        await state.serve(requests, context.write)

    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "floor.Floor",
                {
                    "Stream": grpc.stream_stream_rpc_method_handler(
                        handler, request_deserializer=_identity, response_serializer=_identity
                    )
                },
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await _push(args, state, port, ports, results)


async def _client(port: int, streams: int) -> None:
    import grpc

    async def one() -> None:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        call = channel.stream_stream(
            "/floor.Floor/Stream", request_serializer=_identity, response_deserializer=_identity
        )()
        await call.write(b"hello")
        async for _ in call:
            await call.write(b"ack")

    await asyncio.gather(*(one() for _ in range(streams)), return_exceptions=True)


def _run_server(args: argparse.Namespace, ports: Queue[Any], results: Queue[Any]) -> None:
    if args.server == "grpclib":
        asyncio.run(_grpclib_server(args, ports, results))
    elif args.uvloop:
        import uvloop

        uvloop.run(_server(args, ports, results))
    else:
        asyncio.run(_server(args, ports, results))


def _run_client(port: int, streams: int) -> None:
    asyncio.run(_client(port, streams))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--writes", type=int, default=3, help="messages per stream per push")
    parser.add_argument("--size", type=int, default=3000, help="bytes per message")
    parser.add_argument("--pushes", type=int, default=30)
    parser.add_argument("--pause", type=float, default=0.2, help="seconds between pushes")
    parser.add_argument("--server", choices=("grpcio", "grpclib"), default="grpcio")
    parser.add_argument("--uvloop", action="store_true", help="the grpcio server on uvloop")
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    ports: Queue[Any] = ctx.Queue()
    results: Queue[Any] = ctx.Queue()
    server = ctx.Process(target=_run_server, args=(args, ports, results))
    server.start()
    client = ctx.Process(target=_run_client, args=(ports.get(), args.streams), daemon=True)
    client.start()
    took, cpu, per_stream = results.get()
    client.terminate()
    server.terminate()
    client.join(10)
    server.join(10)
    messages = args.streams * args.writes
    print(
        f"{args.server}{' on uvloop' if args.uvloop else ''}: "
        f"{args.streams} streams x {args.writes} write(s) of {args.size} B, "
        f"{args.pushes} pushes: push -> every answer read "
        f"p50 {percentile(took, 50):.1f} ms, p99 {percentile(took, 99):.1f} ms; "
        f"server CPU p50 {percentile(cpu, 50):.1f} ms "
        f"({percentile(cpu, 50) * 1e3 / messages:.0f} us per message written and answer read); "
        f"server RSS {per_stream:.1f} KiB per connection with its open stream"
    )


if __name__ == "__main__":
    main()

"""A small gRPC backend (``demo.users.v1.Users`` from ``protos/users.proto``) for demos,
end-to-end tests and the gRPC benchmark.

The proto is compiled at start with grpcio-tools and served through generic handlers with
message classes built from the descriptor set, so no generated code is checked in.
``GetUser`` answers any id but ``missing`` (NOT_FOUND); ``CreateUser`` echoes the name;
``Slow`` answers after ``delay_ms`` unless the call's deadline expires first, and reports
the deadline the server saw.

Runs in-process (``UsersServer``) or as ``python -m controlplane.demo.grpc_users --port N``.
"""

from __future__ import annotations

import argparse
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from ..protoc import compile_proto

__all__ = ["PROTO", "SERVICE", "UsersServer", "UsersStubs", "descriptor_set", "main"]

PROTO = Path(__file__).with_name("protos") / "users.proto"
SERVICE = "demo.users.v1.Users"

_compiled: bytes | None = None
_lock = threading.Lock()


def descriptor_set() -> bytes:
    """The compiled descriptor set of ``users.proto`` (with its imports), compiled once."""
    global _compiled
    with _lock:
        if _compiled is None:
            _compiled = compile_proto(PROTO)
        return _compiled


class _Messages:
    """Message classes of the Users API, from the descriptor set."""

    def __init__(self) -> None:
        fds = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set())
        self.pool = descriptor_pool.DescriptorPool()
        for f in fds.file:
            self.pool.Add(f)
        service = self.pool.FindServiceByName(SERVICE)
        self.methods: dict[str, tuple[Any, Any]] = {
            m.name: (
                message_factory.GetMessageClass(m.input_type),
                message_factory.GetMessageClass(m.output_type),
            )
            for m in service.methods
        }


class UsersServer:
    """The Users service on a loopback port (grpcio, thread pool)."""

    def __init__(self, name: str = "users", port: int = 0, workers: int = 16) -> None:
        self.name = name
        self._messages = _Messages()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
        handlers = {
            method: grpc.unary_unary_rpc_method_handler(
                getattr(self, f"_{method}"),
                request_deserializer=req.FromString,
                response_serializer=resp.SerializeToString,
            )
            for method, (req, resp) in self._messages.methods.items()
        }
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),)
        )
        self.port = self._server.add_insecure_port(f"127.0.0.1:{port}")
        self.calls = 0

    def _reply(self, method: str, **fields: Any) -> Any:
        return self._messages.methods[method][1](**fields)

    def _GetUser(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.calls += 1
        if request.id == "missing":
            context.abort(grpc.StatusCode.NOT_FOUND, f"no user {request.id!r}")
        return self._reply(
            "GetUser", id=request.id, name=f"user {request.id}", active=True, served_by=self.name
        )

    def _CreateUser(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.calls += 1
        if not request.name:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "name is required")
        return self._reply("CreateUser", id="new", name=request.name, served_by=self.name)

    def _Slow(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.calls += 1
        remaining = context.time_remaining()
        # without a deadline grpcio reports a practically infinite time
        deadline_ms = int(remaining * 1000) if remaining is not None and remaining < 1e9 else 0
        end = time.monotonic() + request.delay_ms / 1000
        while time.monotonic() < end and context.is_active():
            time.sleep(0.01)
        return self._reply("Slow", delay_ms=request.delay_ms, deadline_ms=deadline_ms)

    def start(self) -> UsersServer:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=0.5).wait(5)


class UsersStubs:
    """Native gRPC calls to the Users API over ``channel`` (for tests and the benchmark)."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.messages = _Messages()
        self._calls = {
            method: channel.unary_unary(
                f"/{SERVICE}/{method}",
                request_serializer=req.SerializeToString,
                response_deserializer=resp.FromString,
            )
            for method, (req, resp) in self.messages.methods.items()
        }

    def method(self, name: str) -> grpc.UnaryUnaryMultiCallable:
        """The callable of one method (takes a request message)."""
        return self._calls[name]

    def request(self, method: str, **fields: Any) -> Any:
        return self.messages.methods[method][0](**fields)

    def call(
        self,
        method: str,
        timeout: float | None = 10,
        metadata: list[tuple[str, str]] | None = None,
        **fields: Any,
    ) -> Any:
        return self._calls[method](
            self.request(method, **fields), timeout=timeout, metadata=metadata
        )


def main() -> None:
    parser = argparse.ArgumentParser(description="The demo gRPC Users service.")
    parser.add_argument("--port", type=int, default=9090)
    parser.add_argument("--name", default="users")
    args = parser.parse_args()
    server = UsersServer(args.name, args.port).start()
    print(f"demo.users.v1.Users on 127.0.0.1:{server.port}", flush=True)
    server._server.wait_for_termination()


if __name__ == "__main__":
    main()

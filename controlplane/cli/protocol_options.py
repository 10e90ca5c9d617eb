"""Route options of protocol translation: gRPC deadlines, JSON -> gRPC transcoding,
gRPC-Web and WebSocket (``route add|update``)."""

from typing import Annotated, Any

import typer

__all__ = ["protocol_fields"]


def protocol_fields(
    grpc_timeout_max: Annotated[
        str | None,
        typer.Option(help="Honour the client's grpc-timeout header up to this, e.g. 30s."),
    ] = None,
    transcode: Annotated[
        str | None, typer.Option(help="Translate JSON/REST to gRPC with this proto.")
    ] = None,
    transcode_service: Annotated[
        list[str] | None,
        typer.Option(help="Fully-qualified service of the proto to expose (repeatable)."),
    ] = None,
    no_transcode: Annotated[
        bool, typer.Option("--no-transcode", help="Stop transcoding on this route.")
    ] = False,
    grpc_web: Annotated[
        bool | None, typer.Option("--grpc-web/--no-grpc-web", help="Accept gRPC-Web.")
    ] = None,
    websocket: Annotated[
        bool | None,
        typer.Option("--websocket/--no-websocket", help="Allow WebSocket upgrades."),
    ] = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if grpc_timeout_max is not None:
        out["grpc_timeout_max"] = grpc_timeout_max
    transcoding: dict[str, Any] = {}
    if transcode is not None:
        transcoding["proto"] = transcode
    if transcode_service:
        transcoding["services"] = transcode_service
    if transcoding:
        out["transcoding"] = transcoding
    if no_transcode:
        out["transcoding"] = None
    if grpc_web is not None:
        out["grpc_web"] = grpc_web
    if websocket is not None:
        out["websocket"] = websocket
    return out

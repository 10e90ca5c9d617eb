"""``proto add|update|list|get|delete``: compiled protobuf APIs for JSON -> gRPC routes,.

A proto comes from a descriptor set (``protoc --include_imports --descriptor_set_out``) or
from a ``.proto`` file compiled here with grpcio-tools. ``list`` and ``get`` show the files
and services, not the base64 blob (``get -o json --raw`` prints the stored object).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import PolicyInvalid
from .context import ctx_of, finish_change, finish_remote
from .contexts import path_of
from .output import Format, emit, emit_table
from .resources import WaitOption, remote_patch

__all__ = ["register_protos"]

NameArg = Annotated[str, typer.Argument(help="Proto name.")]
DescriptorOption = Annotated[
    str | None,
    typer.Option(
        "--descriptor-set",
        help="FileDescriptorSet file (protoc --include_imports --descriptor_set_out=FILE).",
    ),
]
ProtoOption = Annotated[
    str | None, typer.Option("--proto", help=".proto file, compiled with grpcio-tools.")
]
IncludeOption = Annotated[
    list[str] | None, typer.Option("--include", help="Import directory for --proto (repeatable).")
]


def _descriptor(descriptor_set: str | None, proto: str | None, include: list[str] | None) -> str:
    """base64 of the descriptor set named by exactly one of the two options."""
    if (descriptor_set is None) == (proto is None):
        raise PolicyInvalid("proto: give exactly one of --descriptor-set and --proto")
    if include and proto is None:
        raise PolicyInvalid("--include: only used with --proto")
    if descriptor_set is not None:
        try:
            data = Path(descriptor_set).read_bytes()
        except OSError as exc:
            raise PolicyInvalid(
                f"--descriptor-set: cannot read {descriptor_set}: {exc.strerror}"
            ) from None
    else:
        from ..protoc import compile_proto

        data = compile_proto(proto or "", include or [])
    return base64.b64encode(data).decode()


def _remote_proto(spec: dict[str, Any], name: str) -> Any:
    """A proto the admin API sent, as the model the local commands print (same summary)."""
    from ..policy import parse_object

    return parse_object("proto", {"name": name, **spec}, f"proto {name!r}")


def register_protos(app: typer.Typer) -> None:
    protos = typer.Typer(
        help="Manage protobuf APIs (descriptor sets) for JSON -> gRPC transcoding.",
        no_args_is_help=True,
    )
    app.add_typer(protos, name="proto")

    @protos.command("add")
    def add(
        ctx: typer.Context,
        name: NameArg,
        descriptor_set: DescriptorOption = None,
        proto: ProtoOption = None,
        include: IncludeOption = None,
        description: Annotated[str | None, typer.Option(help="Shown in proto list.")] = None,
        wait: WaitOption = None,
    ) -> None:
        """Add a proto from a descriptor set or a .proto file."""
        c = ctx_of(ctx)
        fields: dict[str, Any] = {
            "name": name,
            "descriptor_set": _descriptor(descriptor_set, proto, include),
        }
        if description is not None:
            fields["description"] = description
        api = c.remote
        if api is not None:
            resp = api.request("POST", "/v1/protos", body=fields, wait=wait).data
            finish_remote(resp, f"proto {name!r} created", wait)
            return
        from ..policy import parse_object

        revision = c.store.create(parse_object("proto", fields))
        finish_change(c, revision, f"proto {name!r} created", wait)

    @protos.command("update")
    def update(
        ctx: typer.Context,
        name: NameArg,
        descriptor_set: DescriptorOption = None,
        proto: ProtoOption = None,
        include: IncludeOption = None,
        description: Annotated[str | None, typer.Option(help="Shown in proto list.")] = None,
        wait: WaitOption = None,
    ) -> None:
        """Replace a proto's descriptor set; routes using it must still find their services."""
        c = ctx_of(ctx)
        fields: dict[str, Any] = {}
        if descriptor_set is not None or proto is not None:
            fields["descriptor_set"] = _descriptor(descriptor_set, proto, include)
        if description is not None:
            fields["description"] = description
        if not fields:
            raise PolicyInvalid("proto update: give --descriptor-set, --proto or --description")
        api = c.remote
        if api is not None:
            remote_patch(api, "protos", "proto", name, fields, wait)
            return
        result = c.store.update("proto", name, lambda spec: {**spec, **fields})
        verb = "updated" if result.changes else "unchanged"
        finish_change(
            c, result.revision, f"proto {name!r} {verb}", wait if result.changes else None
        )

    @protos.command("delete")
    def delete(ctx: typer.Context, name: NameArg, wait: WaitOption = None) -> None:
        """Delete a proto no route uses."""
        c = ctx_of(ctx)
        api = c.remote
        if api is not None:
            resp = api.request("DELETE", path_of("protos", name), wait=wait).data
            finish_remote(resp, f"proto {name!r} deleted", wait)
            return
        revision = c.store.delete("proto", name)
        finish_change(c, revision, f"proto {name!r} deleted", wait)

    @protos.command("get")
    def get(
        ctx: typer.Context,
        name: NameArg,
        raw: Annotated[
            bool, typer.Option(help="Print the stored object (with the base64 descriptor set).")
        ] = False,
    ) -> None:
        """Show one proto: its files and services with their methods."""
        from ..policy import Proto

        c = ctx_of(ctx)
        api = c.remote
        if api is not None:
            obj = _remote_proto(api.get(path_of("protos", name))["spec"], name)
        else:
            obj = c.store.get("proto", name)  # type: ignore[assignment]
        assert isinstance(obj, Proto)
        data = obj.spec() if raw else obj.summary()
        emit(data, Format.json if c.output == Format.json else Format.yaml)

    @protos.command("list")
    def list_(ctx: typer.Context) -> None:
        """List protos: services and size."""
        c = ctx_of(ctx)
        api = c.remote
        if api is not None:
            items = api.get("/v1/protos")["items"]
            rows = [_remote_proto(i["spec"], i["name"]).summary() for i in items]
        else:
            rows = [o.summary() for o in c.store.list_objects("proto")]  # type: ignore[attr-defined]
        if c.output == Format.table:
            emit_table(
                ["NAME", "SERVICES", "FILES", "BYTES"],
                [[r["name"], ", ".join(r["services"]), len(r["files"]), r["bytes"]] for r in rows],
            )
        else:
            emit(rows, c.output)

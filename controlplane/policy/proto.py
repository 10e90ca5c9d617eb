"""A proto: a compiled protobuf API (FileDescriptorSet) that REST-to-gRPC transcoding uses.

The descriptor set is kept as base64 text, so the declarative file, JSON output and the
database all carry the same value. It is checked on input the way Envoy's transcoder will
read it: it must parse as a ``FileDescriptorSet`` and every file's imports must be in the
set (compile with ``protoc --include_imports``), otherwise Envoy would refuse the route.

Parsing needs protobuf's descriptor types (not Envoy's): they are imported where used, so
the policy package stays free of wire types at import time.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from typing import Any, ClassVar

from pydantic import Field, field_validator

from .common import Name, PolicyModel

__all__ = ["Proto", "ProtoInfo", "Transcoding", "describe_descriptor_set"]

_SERVICE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
#: a generous bound: large APIs compile to a few hundred KB; Envoy holds one copy per route
MAX_DESCRIPTOR_BYTES = 4 * 1024 * 1024


class ProtoInfo:
    """What a descriptor set declares: its files and fully-qualified services -> methods."""

    def __init__(self, files: tuple[str, ...], services: dict[str, tuple[str, ...]]) -> None:
        self.files = files
        self.services = services


@functools.lru_cache(maxsize=64)
def describe_descriptor_set(data: bytes) -> ProtoInfo:
    """Parse and link a serialised FileDescriptorSet; ValueError (one line) if it is not one.

    Linking every file in a fresh pool catches what Envoy would refuse later: a missing
    import (``google/api/annotations.proto`` when annotations are used) or a type that is
    not defined anywhere in the set.
    """
    from google.protobuf import descriptor_pb2, descriptor_pool
    from google.protobuf.message import DecodeError

    try:
        fds = descriptor_pb2.FileDescriptorSet.FromString(data)
    except (DecodeError, RuntimeError, ValueError):
        raise ValueError("does not parse as a FileDescriptorSet") from None
    if not fds.file or any(not f.name for f in fds.file):
        raise ValueError(
            "does not parse as a FileDescriptorSet (no named files; compile with "
            "protoc --descriptor_set_out --include_imports)"
        )
    pool = descriptor_pool.DescriptorPool()
    names = {f.name for f in fds.file}
    for f in fds.file:
        for dep in f.dependency:
            if dep not in names:
                raise ValueError(
                    f"{f.name} imports {dep}, which is not in the set "
                    "(compile with protoc --include_imports)"
                )
    try:
        for f in _dependency_order(list(fds.file)):
            pool.Add(f)
        services: dict[str, tuple[str, ...]] = {}
        for f in fds.file:
            fd = pool.FindFileByName(f.name)
            for svc in fd.services_by_name.values():
                services[svc.full_name] = tuple(m.name for m in svc.methods)
    except (TypeError, KeyError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"is not a consistent FileDescriptorSet: {reason}") from None
    return ProtoInfo(tuple(f.name for f in fds.file), services)


def _dependency_order(files: list[Any]) -> list[Any]:
    """Files with their imports first (the pool links a file against what it holds)."""
    by_name = {f.name: f for f in files}
    out: list[Any] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen or name not in by_name:
            return
        seen.add(name)
        for dep in by_name[name].dependency:
            visit(dep)
        out.append(by_name[name])

    for f in files:
        visit(f.name)
    return out


class Proto(PolicyModel):
    """A compiled protobuf API, referenced by routes that transcode JSON to gRPC."""

    kind: ClassVar[str] = "proto"

    name: Name
    descriptor_set: str = Field(
        description="base64 of a serialised FileDescriptorSet with all imports "
        "(protoc --include_imports --descriptor_set_out)"
    )
    description: str | None = Field(None, max_length=200)

    @field_validator("descriptor_set")
    @classmethod
    def _parses(cls, value: str) -> str:
        value = "".join(value.split())  # line-wrapped base64 from a file is fine
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("is not valid base64") from None
        if len(data) > MAX_DESCRIPTOR_BYTES:
            raise ValueError(f"is larger than {MAX_DESCRIPTOR_BYTES // (1024 * 1024)} MiB")
        describe_descriptor_set(data)
        return value

    def binary(self) -> bytes:
        return self.decode(self.descriptor_set)

    @staticmethod
    def decode(descriptor_set: str) -> bytes:
        return base64.b64decode(descriptor_set)

    def info(self) -> ProtoInfo:
        return describe_descriptor_set(self.binary())

    def summary(self) -> dict[str, Any]:
        """What ``proto list``/``get`` show instead of the base64 blob."""
        info = self.info()
        return {
            "name": self.name,
            "files": list(info.files),
            "services": {s: list(m) for s, m in sorted(info.services.items())},
            "bytes": len(self.binary()),
            **({"description": self.description} if self.description else {}),
        }


class Transcoding(PolicyModel):
    """REST/JSON -> gRPC on a route: which proto, and which of its services to expose.

    Methods are reachable by their ``google.api.http`` annotations and, for every method,
    as ``POST /package.Service/Method`` with a JSON body.
    """

    proto: Name
    services: list[str] = Field(
        min_length=1, description="fully-qualified service names, e.g. demo.users.v1.Users"
    )

    @field_validator("services")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        for service in value:
            if not _SERVICE_RE.match(service):
                raise ValueError(f"{service!r} is not a fully-qualified service name")
        if len(set(value)) != len(value):
            raise ValueError("names must be unique")
        return value

    def problem_with(self, proto: Proto) -> str | None:
        """Why ``proto`` cannot serve this setting (a service it lacks), or None."""
        known = proto.info().services
        for service in self.services:
            if service not in known:
                listed = ", ".join(sorted(known)) or "none"
                return (
                    f"transcoding.services: {service!r} is not a service of proto "
                    f"{proto.name!r} (it has: {listed})"
                )
        return None

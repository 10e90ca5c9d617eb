"""Protos and protocol settings through the CLI, without Envoy: what is accepted, and bad
input refused with one line naming the field, non-zero exit, nothing written."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import yaml

from controlplane.demo.grpc_users import PROTO, SERVICE, descriptor_set
from tests.e2e.harness import Cli
from tests.test_cli import _state

GOOD = """
gateways:
  - {name: public, port: 8080}
clusters:
  - {name: users-grpc, endpoints: ["127.0.0.1:9090"], protocol: http2}
"""


@pytest.fixture
def loaded(tmp_path: Path) -> Cli:
    cli = Cli(db=str(tmp_path / "gateway.db"))
    cli.run("apply", "-f", "-", input=GOOD)
    path = tmp_path / "users.pb"
    path.write_bytes(descriptor_set())
    cli.run("proto", "add", "users", "--descriptor-set", str(path))
    cli.run(
        "route", "add", "users-api", "--gateway", "public", "--cluster", "users-grpc",
        "--transcode", "users", "--transcode-service", SERVICE, "--grpc-web",
    )  # fmt: skip
    return cli


def test_proto_from_source_list_get_export(loaded: Cli, tmp_path: Path) -> None:
    loaded.run("proto", "add", "users-src", "--proto", str(PROTO))
    rows = {r["name"]: r for r in loaded.json("proto", "list")}
    assert rows["users-src"]["services"] == {SERVICE: ["GetUser", "CreateUser", "Slow"]}
    assert "google/api/annotations.proto" in rows["users-src"]["files"]
    table = loaded.run("proto", "list").stdout
    assert "users-src" in table and SERVICE in table
    raw = loaded.json("proto", "get", "users", "--raw")
    assert base64.b64decode(raw["descriptor_set"]) == descriptor_set()
    # the declarative file carries the descriptor set as base64, and round-trips
    exported = loaded.run("export").stdout
    data = yaml.safe_load(exported)
    assert [p["name"] for p in data["protos"]] == ["users", "users-src"]
    route = data["routes"][0]
    assert route["transcoding"] == {"proto": "users", "services": [SERVICE]}
    assert route["grpc_web"] is True
    assert loaded.run("apply", "-f", "-", input=exported).stderr.startswith("no changes")
    # a route using it keeps it
    proc = loaded.run("proto", "delete", "users", check=False)
    assert proc.returncode == 4 and "route 'users-api' uses it" in proc.stderr
    loaded.run("proto", "delete", "users-src")


def test_route_protocol_options(loaded: Cli) -> None:
    loaded.run(
        "route", "add", "chat", "--gateway", "public", "--path-prefix", "/chat",
        "--cluster", "users-grpc", "--websocket", "--idle-timeout", "30s",
        "--grpc-timeout-max", "10s",
    )  # fmt: skip
    spec = loaded.json("route", "get", "chat")
    assert spec["websocket"] is True and spec["idle_timeout"] == "30s"
    assert spec["grpc_timeout_max"] == "10s"
    loaded.run("route", "update", "users-api", "--no-transcode", "--no-grpc-web")
    spec = loaded.json("route", "get", "users-api")
    assert "transcoding" not in spec and "grpc_web" not in spec


def _bad_descriptor(tmp_path: Path) -> str:
    path = tmp_path / "bad.pb"
    path.write_bytes(b"\xff\xfe this is not a descriptor set")
    return str(path)


def _no_imports(tmp_path: Path) -> str:
    """users.proto compiled without --include_imports: annotations.proto is missing."""
    from google.protobuf import descriptor_pb2

    fds = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set())
    own = [f for f in fds.file if f.name == "users.proto"]
    path = tmp_path / "no-imports.pb"
    path.write_bytes(descriptor_pb2.FileDescriptorSet(file=own).SerializeToString())
    return str(path)


def _bad_proto(tmp_path: Path) -> str:
    path = tmp_path / "broken.proto"
    path.write_text('syntax = "proto3";\nmessage Broken { strin name = 1; }\n')
    return str(path)


BAD = {
    "descriptor set that does not parse": (
        lambda tmp: ["proto", "add", "bad", "--descriptor-set", _bad_descriptor(tmp)],
        2,
        "proto 'bad': descriptor_set: does not parse as a FileDescriptorSet",
    ),
    "descriptor set without its imports": (
        lambda tmp: ["proto", "add", "bad", "--descriptor-set", _no_imports(tmp)],
        2,
        "proto 'bad': descriptor_set: users.proto imports google/api/annotations.proto, "
        "which is not in the set",
    ),
    "proto that does not compile": (
        lambda tmp: ["proto", "add", "bad", "--proto", _bad_proto(tmp)],
        2,
        'broken.proto:2:18: "strin" is not defined',
    ),
    "missing descriptor file": (
        lambda tmp: ["proto", "add", "bad", "--descriptor-set", str(tmp / "nope.pb")],
        2,
        "--descriptor-set: cannot read",
    ),
    "route naming a missing proto": (
        lambda tmp: [
            "route",
            "add",
            "x",
            "--gateway",
            "public",
            "--cluster",
            "users-grpc",
            "--transcode",
            "nope",
            "--transcode-service",
            SERVICE,
        ],
        2,
        "route 'x': proto 'nope' does not exist",
    ),
    "route naming a missing service": (
        lambda tmp: [
            "route",
            "add",
            "x",
            "--gateway",
            "public",
            "--cluster",
            "users-grpc",
            "--transcode",
            "users",
            "--transcode-service",
            "demo.users.v1.Nope",
        ],
        2,
        "route 'x': transcoding.services: 'demo.users.v1.Nope' is not a service of proto "
        "'users' (it has: demo.users.v1.Users)",
    ),
    "transcoding without services": (
        lambda tmp: [
            "route",
            "add",
            "x",
            "--gateway",
            "public",
            "--cluster",
            "users-grpc",
            "--transcode",
            "users",
        ],
        2,
        "route 'x': transcoding.services: Field required",
    ),
    "transcoding with a path rewrite": (
        lambda tmp: [
            "route",
            "update",
            "users-api",
            "--prefix-rewrite",
            "/v2",
        ],
        2,
        "route 'users-api': transcoding: cannot be combined with prefix_rewrite",
    ),
    "websocket on a direct response": (
        lambda tmp: [
            "route",
            "add",
            "x",
            "--gateway",
            "public",
            "--path",
            "/x",
            "--direct-response",
            "200",
            "--websocket",
        ],
        2,
        "websocket: only applies to routes that forward to a cluster",
    ),
    "proto update dropping a used service": (
        lambda tmp: ["proto", "update", "users", "--descriptor-set", _other_service(tmp)],
        2,
        "route 'users-api': transcoding.services: 'demo.users.v1.Users' is not a service of "
        "proto 'users'",
    ),
}


def _other_service(tmp_path: Path) -> str:
    path = tmp_path / "other.proto"
    path.write_text(
        'syntax = "proto3";\npackage demo.other;\nmessage Empty {}\n'
        "service Other { rpc Ping(Empty) returns (Empty); }\n"
    )
    from controlplane.protoc import compile_proto

    out = tmp_path / "other.pb"
    out.write_bytes(compile_proto(path))
    return str(out)


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_changes_nothing(loaded: Cli, tmp_path: Path, case: str) -> None:
    make_args, code, expected = BAD[case]
    args = make_args(tmp_path)
    before = _state(loaded)
    proc = loaded.run(*args, check=False)
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert expected in lines[0], lines[0]
    assert _state(loaded) == before


BAD_FILES = {
    "base64 that is not base64": (
        "protos: [{name: p, descriptor_set: '***'}]",
        "protos[0] 'p': descriptor_set: is not valid base64",
    ),
    "route naming a missing service in the same file": (
        "protos: [{name: p, descriptor_set: DESC}]\n"
        "routes: [{name: r, gateway: public, cluster: users-grpc,"
        " transcoding: {proto: p, services: [demo.Missing]}}]",
        "route 'r': transcoding.services: 'demo.Missing' is not a service of proto 'p'",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_file_changes_nothing(loaded: Cli, case: str) -> None:
    text, expected = BAD_FILES[case]
    text = GOOD + text.replace("DESC", base64.b64encode(descriptor_set()).decode())
    before = _state(loaded)
    proc = loaded.run("apply", "-f", "-", input=text, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], proc.stderr
    assert _state(loaded) == before

"""The hand-assembled RouteConfiguration is byte-for-byte what protobuf would produce."""

from __future__ import annotations

from envoy.config.route.v3 import route_pb2

from controlplane.policy import Bundle
from controlplane.translate import ROUTE, Translator, build_views
from controlplane.translate.wire import field, varint

POLICY = """
gateways: [{name: public, port: 8080, hostnames: [a.example.com, b.example.com]}]
clusters: [{name: c, endpoints: ["127.0.0.1:1"]}]
routes:
  - {name: r1, gateway: public, match: {path_prefix: /x}, cluster: c}
  - {name: r2, gateway: public, hosts: [b.example.com], match: {path: /y}, cluster: c}
  - {name: r3, gateway: public, match: {path_regex: "/z/[0-9]+"}, cluster: c, timeout: 1s}
"""


def test_varint_and_field() -> None:
    assert varint(0) == b"\x00" and varint(127) == b"\x7f" and varint(300) == b"\xac\x02"
    assert field(1, b"ab") == b"\x0a\x02ab"
    assert field(3, b"x" * 200)[:3] == b"\x1a\xc8\x01"


def test_encoded_route_configuration_matches_protobuf() -> None:
    bundle = Bundle.from_text(POLICY)
    views = build_views(bundle.gateways, bundle.routes, {c.name: c for c in bundle.clusters})
    resources = Translator().translate(views["public"])
    encoded = resources.by_type[ROUTE]["public"]
    message = resources.message(ROUTE, "public")
    assert isinstance(message, route_pb2.RouteConfiguration)
    assert [vh.name for vh in message.virtual_hosts] == ["b.example.com", "public"]
    assert [r.name for r in message.virtual_hosts[0].routes] == [
        "gateway.path_parameters",
        "r2",
        "r2",  # /y/ as well
        "r3",
        "r1",
        "gateway.not_found",
    ]
    assert list(message.virtual_hosts[1].domains) == ["a.example.com"]
    assert encoded.data == message.SerializeToString(deterministic=True)  # type: ignore[union-attr]

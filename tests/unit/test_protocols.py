"""Protocol translation as the runner drives it: filters come and go with the routes that
need them, a proto change reaches the routes that use it, and the descriptor set Envoy gets
binds every method to POST /package.Service/Method."""

from __future__ import annotations

import base64
from typing import Any

from envoy.extensions.filters.http.grpc_json_transcoder.v3 import transcoder_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

from controlplane.demo.grpc_users import SERVICE, descriptor_set
from controlplane.policy import Cluster, Gateway, Proto, Route
from controlplane.translate import LISTENER, ROUTE, Translator, build_views
from controlplane.translate.protocols import GRPC_WEB_FILTER, TRANSCODER_FILTER

GATEWAY = Gateway(name="web", port=8080)
CLUSTER = Cluster(name="g", endpoints=["10.0.0.1:9090"], protocol="http2")
PROTO = Proto(name="users", descriptor_set=base64.b64encode(descriptor_set()).decode())


def _translate(translator: Translator, routes: list[Route], proto: Proto = PROTO) -> Any:
    view = build_views([GATEWAY], routes, {"g": CLUSTER}, {"proto": {proto.name: proto}})["web"]
    return translator.translate(view)


def _filters(resources: Any) -> list[str]:
    listener = resources.message(LISTENER, "web")
    hcm = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    return [f.name for f in hcm.http_filters]


def _route_config(resources: Any) -> Any:
    """The first route after the path-parameter guard."""
    return resources.message(ROUTE, "web").virtual_hosts[0].routes[1]


PLAIN = Route(name="plain", gateways=["web"], cluster="g")
WEB = Route(name="web", gateways=["web"], cluster="g", grpc_web=True)
JSON = Route(
    name="json",
    gateways=["web"],
    cluster="g",
    transcoding={"proto": "users", "services": [SERVICE]},
)


def test_filters_only_while_a_route_needs_them() -> None:
    translator = Translator()
    assert GRPC_WEB_FILTER not in _filters(_translate(translator, [PLAIN]))
    with_web = _filters(_translate(translator, [PLAIN, WEB]))
    assert GRPC_WEB_FILTER in with_web and TRANSCODER_FILTER not in with_web
    both = _filters(_translate(translator, [PLAIN, WEB, JSON]))
    assert both.index(GRPC_WEB_FILTER) < both.index(TRANSCODER_FILTER) < len(both) - 1
    # removing the last route that needs a filter removes the filter
    assert _filters(_translate(translator, [PLAIN])) == _filters(_translate(Translator(), [PLAIN]))


def test_proto_change_reaches_the_routes_using_it() -> None:
    translator = Translator()
    first = _route_config(_translate(translator, [JSON]))
    config = first.typed_per_filter_config[TRANSCODER_FILTER]
    other = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set())
    other.file[-1].options.java_package = "changed"  # same services, other bytes
    changed = Proto(
        name="users", descriptor_set=base64.b64encode(other.SerializeToString()).decode()
    )
    second = _route_config(_translate(translator, [JSON], changed))
    assert second.typed_per_filter_config[TRANSCODER_FILTER] != config


def test_every_method_is_bound_to_post_by_name() -> None:
    route = _route_config(_translate(Translator(), [JSON]))
    config = transcoder_pb2.GrpcJsonTranscoder()
    route.typed_per_filter_config[TRANSCODER_FILTER].Unpack(config)
    assert list(config.services) == [SERVICE] and config.auto_mapping
    fds = descriptor_pb2.FileDescriptorSet.FromString(config.proto_descriptor_bin)
    (users,) = [f for f in fds.file if f.name == "users.proto"]
    rules = {
        m.name: m.options.Extensions[annotations_pb2.http]
        for m in users.service[0].method
        if m.options.HasExtension(annotations_pb2.http)
    }
    assert rules["GetUser"].get == "/v1/users/{id}"  # the annotation is kept
    assert [(b.post, b.body) for b in rules["GetUser"].additional_bindings] == [
        (f"/{SERVICE}/GetUser", "*")
    ]
    assert "Slow" not in rules  # no annotation: auto_mapping serves it

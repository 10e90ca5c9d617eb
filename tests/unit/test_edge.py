"""Edge controls: input checks and what reaches Envoy (translate/edge.py)."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from pydantic import ValidationError

from controlplane.policy import Cluster, Gateway, Route
from controlplane.policy.edge import ClientAddress, ExtAuthz, IpRules
from controlplane.translate import CLUSTER, LISTENER, ROUTE, Translator, build_views
from controlplane.translate.edge import (
    BODY_LIMIT_FILTER,
    EXT_AUTHZ_PREFIX,
    GATEWAY_IP_FILTER,
    ROUTE_IP_FILTER,
)


@pytest.mark.parametrize(
    ("model", "data", "message"),
    [
        (IpRules, {"allow": ["10.0.0.0/8", "10.2.0.0/16"]}, "overlap"),
        (IpRules, {"deny": ["2001:db8::/32", "2001:db8:1::/48"]}, "overlap"),
        (IpRules, {"deny": ["10.0.0.1/8"]}, "host bits"),
        (IpRules, {"deny": ["10.0.0/8x"]}, "not a CIDR"),
        (IpRules, {}, "set allow, deny or both"),
        (ClientAddress, {"trusted_hops": -1}, "trusted_hops"),
        (ClientAddress, {"trusted_hops": 1, "trusted_cidrs": ["10.0.0.0/8"]}, "not both"),
        (ExtAuthz, {"cluster": "a", "upstream_headers": ["x-user"]}, "only for protocol http"),
        (ExtAuthz, {"cluster": "a", "body": {"max_bytes": 0}}, "max_bytes"),
    ],
)
def test_refused(model: Any, data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        model.model_validate(data)


def test_ranges_are_normalised() -> None:
    rules = IpRules(allow=["2001:DB8::/32", "192.0.2.7"], deny=["10.0.0.0/8", "2001:db9::/32"])
    assert rules.allow == ["2001:db8::/32", "192.0.2.7/32"]
    # an IPv4 and an IPv6 range never overlap
    assert IpRules(allow=["0.0.0.0/0", "::/0"]).allow == ["0.0.0.0/0", "::/0"]


def test_route_rejects_zero_body_limit() -> None:
    with pytest.raises(ValidationError, match="max_request_body"):
        Route(name="r", gateways=["g"], cluster="c", max_request_body=0)


def _translate(gateway: Gateway, routes: list[Route]) -> Any:
    clusters = {
        name: Cluster(name=name, endpoints=["127.0.0.1:9000"], protocol="http2")
        for name in ("app", "authz", "authz2")
    }
    view = build_views([gateway], routes, clusters)[gateway.name]
    out = Translator().translate(view)
    listener = out.message(LISTENER, gateway.name)
    hcm = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    return out, hcm, [f.name for f in hcm.http_filters]


def test_filters_only_where_used() -> None:
    gw = Gateway(name="g", port=8080)
    _, hcm, names = _translate(gw, [Route(name="r", gateways=["g"], cluster="app")])
    assert not any(
        n in (GATEWAY_IP_FILTER, ROUTE_IP_FILTER, BODY_LIMIT_FILTER)
        or n.startswith(EXT_AUTHZ_PREFIX)
        for n in names
    )
    # default client address: the peer, XFF never believed; safe timeouts stated
    assert hcm.use_remote_address.value and hcm.xff_num_trusted_hops == 0
    assert hcm.request_headers_timeout.seconds == 10
    assert hcm.common_http_protocol_options.max_headers_count.value == 100


def test_shared_ext_authz_instances_and_order() -> None:
    gw = Gateway(name="g", port=8080, ip_rules={"deny": ["192.0.2.0/24"]})
    same = {"cluster": "authz", "timeout": "200ms"}
    routes = [
        Route(name="a", gateways=["g"], cluster="app", ext_authz=same),
        Route(name="b", gateways=["g"], cluster="app", ext_authz=same),
        Route(name="c", gateways=["g"], cluster="app", ext_authz={"cluster": "authz2"}),
        Route(name="d", gateways=["g"], cluster="app", ip_rules={"allow": ["10.0.0.0/8"]}),
    ]
    out, _, names = _translate(gw, routes)
    authz = [n for n in names if n.startswith(EXT_AUTHZ_PREFIX)]
    assert len(authz) == 2  # equal settings share one filter
    assert names[0] == GATEWAY_IP_FILTER and names[1] == ROUTE_IP_FILTER
    assert names.index(authz[0]) > names.index("gateway.rbac")
    # the authorization clusters are served to the proxies
    assert (CLUSTER, "authz2") in out.needs[(ROUTE, "g")]


def test_body_limit_variants() -> None:
    gw = Gateway(name="g", port=8080, max_request_body=1000)
    routes = [
        Route(name="up", gateways=["g"], cluster="app", max_request_body=5000),
        Route(name="moved", gateways=["g"], match={"path": "/old"}, redirect={"path": "/new"}),
    ]
    out, _, names = _translate(gw, routes)
    assert BODY_LIMIT_FILTER in names
    config = out.message(ROUTE, "g")
    routes_of = [r for r in config.virtual_hosts[0].routes if r.name in ("up", "up:too-large")]
    too_big, sized, unsized = routes_of
    assert too_big.direct_response.status == 413
    assert too_big.match.headers[-1].range_match.start == 5001
    assert (
        sized.match.headers[-1].present_match
        and BODY_LIMIT_FILTER not in sized.typed_per_filter_config
    )
    assert BODY_LIMIT_FILTER in unsized.typed_per_filter_config
    # a redirect reads no body: no variants
    assert [r.name for r in config.virtual_hosts[0].routes].count(
        "moved"
    ) == 2  # and its /old/ twin


def test_client_certificates() -> None:
    from controlplane.policy import Consumer
    from controlplane.policy.edge import ClientAuth
    from controlplane.translate.edge import cert_consumer_filter, lua_string
    from controlplane.translate.view import GatewayView

    with pytest.raises(ValidationError, match="not a PEM certificate bundle"):
        ClientAuth(ca="-----BEGIN CERTIFICATE-----\nxx\n-----END CERTIFICATE-----")
    with pytest.raises(ValidationError, match="each name may appear once"):
        Consumer(name="a", certificates=["x", "x"])
    # every byte that is not a letter or digit is a 3-digit escape: no way out of the string
    assert lua_string('a"]=1 --\\') == '"a\\034\\093\\0611\\032\\045\\045\\092"'
    consumers = {"acme": Consumer(name="acme", certificates=["spiffe://x/acme"])}
    plain = GatewayView(Gateway(name="g", port=8080), {}, {}, {"consumer": consumers})
    assert cert_consumer_filter(plain) is None  # no client certificates on this gateway


def test_websocket_routes_are_not_buffered() -> None:
    gw = Gateway(name="g", port=8080, max_request_body=1000)
    routes = [Route(name="ws", gateways=["g"], cluster="app", websocket=True)]
    _, _, names = _translate(gw, routes)
    assert BODY_LIMIT_FILTER not in names

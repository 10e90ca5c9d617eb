"""Generated names live where users cannot: reserved names refused at input, generated names
outside the name grammar, and a snapshot with two resources of one name never published."""

from __future__ import annotations

from pathlib import Path

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2

from controlplane.errors import PolicyInvalid, TranslationError
from controlplane.policy import Bundle, parse_object
from controlplane.policy.common import _check_name
from controlplane.translate import (
    CLUSTER,
    ENDPOINT,
    EXTENSION,
    LISTENER,
    ROUTE,
    SCOPED,
    SECRET,
    Resources,
    Translator,
    build_views,
)
from controlplane.xds.snapshot import FragmentCache, build_snapshot

GOLDEN_IN = Path(__file__).resolve().parent.parent / "translate" / "testdata" / "in"

JWT = """
jwt_providers:
  - name: partner
    issuer: https://partner.example
    jwks_uri: https://keys.partner.example/jwks.json
gateways:
  - {name: web, port: 8080}
clusters:
  - {name: app, endpoints: ["127.0.0.1:9001"]}
  - {name: CLUSTER_NAME, endpoints: ["127.0.0.1:6666"]}
routes:
  - name: r
    gateway: web
    match: {path_prefix: /}
    cluster: app
    auth: {jwt: [partner]}
  - name: s
    gateway: web
    match: {path_prefix: /s}
    cluster: CLUSTER_NAME
"""


@pytest.mark.parametrize(
    ("kind", "data", "expected"),
    [
        (
            "cluster",
            {"name": "xds_cluster", "endpoints": ["127.0.0.1:1"]},
            "cluster 'xds_cluster': name: 'xds_cluster' is reserved (a cluster of Envoy's "
            "bootstrap)",
        ),
        (
            "cluster",
            {"name": "gateway_replicas", "endpoints": ["127.0.0.1:1"]},
            "cluster 'gateway_replicas': name: 'gateway_replicas' is reserved",
        ),
        (
            "cluster",
            {"name": "gateway.replicas", "endpoints": ["127.0.0.1:1"]},
            "cluster 'gateway.replicas': name: 'gateway.replicas' is reserved: names starting "
            "with 'gateway.' are the gateway's own",
        ),
        (
            "cluster",
            {"name": "jwks:partner", "endpoints": ["127.0.0.1:1"]},
            "cluster 'jwks:partner': name: must be 1-63 lower-case letters",
        ),
        (
            "cluster",
            {"name": "cache:r:app", "endpoints": ["127.0.0.1:1"]},
            "cluster 'cache:r:app': name: must be 1-63",
        ),
        (
            "route",
            {"name": "r", "gateways": ["web"], "match": {"path": "/"}, "cluster": "xds_cluster"},
            "route 'r': cluster: 'xds_cluster' is reserved",
        ),
        (
            "route",
            {"name": "gateway.not_found", "gateways": ["web"], "cluster": "app"},
            "route 'gateway.not_found': name: 'gateway.not_found' is reserved",
        ),
        ("gateway", {"name": "gateway.web", "port": 8080}, "gateway 'gateway.web': name:"),
        (
            "consumer",
            {"name": "alice", "groups": ["gateway.admins"]},
            "consumer 'alice': groups[0]: 'gateway.admins' is reserved",
        ),
        ("jwt_provider", {"name": "gateway.jwt_authn"}, "jwt_provider 'gateway.jwt_authn': name:"),
        ("plan", {"name": "_aggregator"}, "plan '_aggregator': name: must be 1-63"),
    ],
)
def test_reserved_names_are_refused(kind: str, data: dict[str, object], expected: str) -> None:
    with pytest.raises(PolicyInvalid) as err:
        parse_object(kind, data)
    assert str(err.value).startswith(expected), str(err.value)


def test_a_cluster_named_like_the_old_jwks_cluster_does_not_replace_it() -> None:
    """A user cluster once able to take a provider's JWKS fetch cluster (``jwks.<provider>``)
    is now just a cluster: the provider still fetches from its own host."""
    bundle = Bundle.from_text(JWT.replace("CLUSTER_NAME", "jwks.partner"))
    view = build_views(
        bundle.gateways, bundle.routes, {c.name: c for c in bundle.clusters}, bundle.by_kind()
    )["web"]
    resources = Translator().translate(view)
    clusters = resources.by_type[CLUSTER]
    assert {"jwks.partner", "jwks:partner", "app"} <= set(clusters)
    fetch = resources.message(CLUSTER, "jwks:partner")
    [endpoint] = fetch.load_assignment.endpoints[0].lb_endpoints  # type: ignore[attr-defined]
    assert endpoint.endpoint.address.socket_address.address == "keys.partner.example"
    assert endpoint.endpoint.address.socket_address.port_value == 443
    build_snapshot("web", 1, resources, None, FragmentCache())  # publishable


def _own_names(bundle: Bundle, gateway: str) -> dict[str, set[str]]:
    """Per xDS type, the names a policy object gives a resource directly."""
    gw = next(g for g in bundle.gateways if g.name == gateway)
    clusters = {c.name for c in bundle.clusters}
    return {
        CLUSTER: clusters,
        ENDPOINT: clusters,
        SECRET: {c.name for c in bundle.certificates},
        LISTENER: {gw.name, f"{gw.name}.aggregation", f"{gw.name}-http-redirect"},
        ROUTE: {gw.name},
        SCOPED: set(),
        EXTENSION: set(),
    }


@pytest.mark.parametrize("case", sorted(p.stem for p in GOLDEN_IN.glob("*.yaml")))
def test_every_generated_name_is_outside_the_user_namespace(case: str) -> None:
    """Across every golden input: a resource name is either a policy object's own (or derived
    from its gateway's name, used only in that gateway's configuration) or one no user can
    give (the name grammar or the reserved names refuse it)."""
    path = GOLDEN_IN / f"{case}.yaml"
    bundle = Bundle.from_text(path.read_text(encoding="utf-8"), str(path))
    views = build_views(
        bundle.gateways, bundle.routes, {c.name: c for c in bundle.clusters}, bundle.by_kind()
    )
    translator = Translator()
    for gateway, view in views.items():
        resources = translator.translate(view)
        assert resources.duplicates == []
        own = _own_names(bundle, gateway)
        for type_url, items in resources.by_type.items():
            for name in items:
                if name in own[type_url]:
                    continue
                with pytest.raises(ValueError):
                    _check_name(name)


def _cluster(name: str) -> cluster_pb2.Cluster:
    return cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.STATIC)


def test_snapshot_with_duplicate_names_is_not_published() -> None:
    resources = Resources()
    resources.add(CLUSTER, "app", _cluster("app"), [("cluster", "app")])
    resources.add(CLUSTER, "app", _cluster("app"), [("route", "r"), ("cluster", "other")])
    assert resources.message(CLUSTER, "app") is not None
    with pytest.raises(TranslationError) as err:
        build_snapshot("web", 1, resources, None, FragmentCache())
    assert str(err.value) == (
        "gateway 'web': conflicting names: two Cluster resources are named 'app' "
        "(from cluster 'app' and from route 'r', cluster 'other')"
    )


@pytest.mark.parametrize(
    ("type_url", "name", "message"),
    [
        (CLUSTER, "xds_cluster", _cluster("xds_cluster")),
        (CLUSTER, "gateway_replicas", _cluster("gateway_replicas")),
        (
            ENDPOINT,
            "gateway.replicas",
            endpoint_pb2.ClusterLoadAssignment(cluster_name="gateway.replicas"),
        ),
    ],
)
def test_snapshot_naming_a_server_resource_is_not_published(
    type_url: str, name: str, message: object
) -> None:
    """A row stored before names were checked cannot take the bootstrap's clusters or the
    replica list: the snapshot is refused (and the gateway keeps its last good one)."""
    resources = Resources()
    resources.add(type_url, name, message, [("cluster", name)])  # type: ignore[arg-type]
    with pytest.raises(TranslationError, match=f"{name!r}.*reserved for the bootstrap"):
        build_snapshot("web", 1, resources, None, FragmentCache())

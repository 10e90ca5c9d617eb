"""Policy -> Envoy protobufs, one module per feature; only here and in ``xds`` are Envoy types.

The input of a translation is a :class:`GatewayView` (the intermediate representation: one
gateway and exactly the policy objects it needs); the output is plain Envoy messages per xDS
type, plus the links needed to check consistency and to map a rejection back to policy.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from google.protobuf.message import Message

from ..policy import Cluster, Gateway, Route
from .cluster import cluster_resource, is_eds, load_assignment
from .listener import listener_resource
from .route import RouteCache, route_configuration
from .wire import Encoded

__all__ = [
    "CLUSTER",
    "ENDPOINT",
    "LISTENER",
    "ROUTE",
    "Encoded",
    "GatewayView",
    "Resources",
    "Translator",
    "build_views",
]

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"

PolicyRef = tuple[str, str]  # (kind, name)


@dataclass(frozen=True)
class GatewayView:
    """Everything one gateway's Envoys need, and nothing else."""

    gateway: Gateway
    routes: tuple[Route, ...]
    clusters: tuple[Cluster, ...]


@dataclass
class Resources:
    """Envoy messages per type URL, keyed by resource name."""

    by_type: dict[str, dict[str, Message | Encoded]] = field(
        default_factory=lambda: {CLUSTER: {}, ENDPOINT: {}, LISTENER: {}, ROUTE: {}}
    )
    #: (type, name) -> the policy objects that produced it, for reporting rejections
    sources: dict[tuple[str, str], list[PolicyRef]] = field(default_factory=dict)
    #: (type, name) -> resources it needs, for the consistency check
    needs: dict[tuple[str, str], list[tuple[str, str]]] = field(default_factory=dict)

    def add(
        self,
        type_url: str,
        name: str,
        message: Message | Encoded,
        sources: list[PolicyRef],
        needs: Iterable[tuple[str, str]] = (),
    ) -> None:
        self.by_type[type_url][name] = message
        self.sources[(type_url, name)] = sources
        needed = list(needs)
        if needed:
            self.needs[(type_url, name)] = needed

    def message(self, type_url: str, name: str) -> Message:
        """The resource as a protobuf message, whatever form it is kept in."""
        item = self.by_type[type_url][name]
        return item.message() if isinstance(item, Encoded) else item


class Translator:
    """Turns views into resources, reusing messages of unchanged policy objects."""

    def __init__(self) -> None:
        self.routes = RouteCache()
        self._clusters: dict[str, tuple[Cluster, Message, Message | None]] = {}

    def _cluster(self, cluster: Cluster) -> tuple[Message, Message | None]:
        hit = self._clusters.get(cluster.name)
        if hit is None or hit[0] is not cluster:
            cla = load_assignment(cluster) if is_eds(cluster) else None
            hit = (cluster, cluster_resource(cluster), cla)
            self._clusters[cluster.name] = hit
        return hit[1], hit[2]

    def translate(self, view: GatewayView) -> Resources:
        out = Resources()
        gw = view.gateway
        out.add(
            LISTENER,
            gw.name,
            listener_resource(gw),
            [("gateway", gw.name)],
            needs=[(ROUTE, gw.name)],
        )
        out.add(
            ROUTE,
            gw.name,
            route_configuration(gw, view.routes, self.routes),
            [("route", r.name) for r in view.routes],
            needs=[(CLUSTER, c) for r in view.routes for c in r.clusters()],
        )
        for cluster in view.clusters:
            message, cla = self._cluster(cluster)
            src = [("cluster", cluster.name)]
            out.add(
                CLUSTER,
                cluster.name,
                message,
                src,
                needs=[(ENDPOINT, cluster.name)] if cla is not None else (),
            )
            if cla is not None:
                out.add(ENDPOINT, cluster.name, cla, src)
        return out

    def forget(self, routes: Iterable[str], clusters: Iterable[str]) -> None:
        """Drop cached messages of objects that no longer exist."""
        self.routes.forget(routes)
        alive = set(clusters)
        for name in [n for n in self._clusters if n not in alive]:
            del self._clusters[name]


def build_views(
    gateways: Iterable[Gateway], routes: Iterable[Route], clusters: dict[str, Cluster]
) -> dict[str, GatewayView]:
    """Group policy per gateway: its routes (any order) and the clusters they use."""
    by_gateway: dict[str, list[Route]] = {}
    for route in routes:
        for name in route.gateways:
            by_gateway.setdefault(name, []).append(route)
    views = {}
    for gw in gateways:
        rs = by_gateway.get(gw.name, [])
        used = sorted({c for r in rs for c in r.clusters()})
        views[gw.name] = GatewayView(gw, tuple(rs), tuple(clusters[c] for c in used))
    return views

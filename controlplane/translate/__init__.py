"""Policy -> Envoy protobufs, one module per feature; only here and in ``xds`` are Envoy types.

The input of a translation is a :class:`GatewayView` (the intermediate representation: one
gateway and exactly the policy objects it needs); the output is plain Envoy messages per xDS
type, plus the links needed to check consistency and to map a rejection back to policy.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, cast

from envoy.config.core.v3 import extension_pb2
from google.protobuf.message import Message

from ..errors import TranslationError
from ..policy import Cluster, Consumer, Gateway, OidcProvider, PolicyModel, Route
from ..policy.certificate import Certificate
from .accesslog import SINK_CLUSTER, sink_cluster
from .aggregate import (
    AGGREGATOR_CLUSTER,
    AggregationTarget,
    aggregator_cluster,
    part_timeouts,
    parts_listener,
    parts_listener_name,
)
from .auth import API_KEY_FILTER, KEY_EXPIRY_SWITCH, jwks_clusters, keys_expire, route_context
from .cluster import cluster_resource, is_eds, load_assignment
from .common import blame, pack
from .edge import apply_client_auth, client_ca_secret
from .filters import http_filters, quota_units_in_use
from .listener import listener_resource
from .oidc import (
    login_origins,
    login_routes,
    oidc_filter_name,
    provider_cluster,
    provider_secrets,
    token_cluster_name,
    used_providers,
)
from .protocols import TRANSCODING, proto_context
from .ratelimit import RATE_LIMIT_FILTER, rate_limit_context
from .route import RouteContext, RouteTable
from .shard import choose_length, scope_resource, shard_name
from .tls import redirect_listener, secret_resource, secure_listener
from .tracing import TRACING_CLUSTER, tracing_cluster
from .traffic import cache_cluster, cache_cluster_name, cached_routes
from .view import GatewayView
from .wire import Encoded

__all__ = [
    "CLUSTER",
    "ENDPOINT",
    "EXTENSION",
    "LISTENER",
    "ROUTE",
    "SCOPED",
    "SECRET",
    "AggregationTarget",
    "Encoded",
    "GatewayView",
    "Resources",
    "Sources",
    "Translator",
    "build_views",
]

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
EXTENSION = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
SCOPED = "type.googleapis.com/envoy.config.route.v3.ScopedRouteConfiguration"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

PolicyRef = tuple[str, str]  # (kind, name)


class Sources:
    """Policy objects behind one resource, listed only when a rejection needs them."""

    def __init__(self, kind: str, names: tuple[str, ...]) -> None:
        self.kind = kind
        self.names = names

    def __iter__(self) -> Iterator[PolicyRef]:
        return ((self.kind, n) for n in self.names)


@dataclass
class Resources:
    """Envoy messages per type URL, keyed by resource name."""

    by_type: dict[str, dict[str, Message | Encoded]] = field(
        default_factory=lambda: {
            CLUSTER: {},
            ENDPOINT: {},
            EXTENSION: {},
            LISTENER: {},
            ROUTE: {},
            SCOPED: {},
            SECRET: {},
        }
    )
    #: (type, name) -> the policy objects that produced it, for reporting rejections
    sources: dict[tuple[str, str], Iterable[PolicyRef]] = field(default_factory=dict)
    #: (type, name) -> resources it needs, for the consistency check
    needs: dict[tuple[str, str], list[tuple[str, str]]] = field(default_factory=dict)
    #: (type, name) of resources only a draining listener uses: sent after the others
    late: set[tuple[str, str]] = field(default_factory=set)
    #: (type, name, policy objects) of every resource added under a name already taken:
    #: a snapshot with any is never published (xds/snapshot.py)
    duplicates: list[tuple[str, str, list[PolicyRef]]] = field(default_factory=list)
    #: the gateway's local rate limits divide each budget by its connected replicas (the
    #: members of the local cluster, served by xds/cache.py); without it the member list
    #: is constant and a proxy connecting or leaving changes nothing any other proxy runs
    divides_by_replicas: bool = False
    #: switches the gateway's routes turn on that its extension configs (ECDS) rely on, so
    #: a proxy must take the routes first when one turns on (xds/snapshot.py, push_order):
    #: ``"key_expiry"``, the keyed routes run the expiry check that reads what the key
    #: filter forwards
    route_switches: frozenset[str] = frozenset()
    #: the extension configs whose content follows those switches (the key filter's
    #: credentials): the push that turns a switch on sends them after the routes and every
    #: other config before them, as usual (a new JWT provider the routes name)
    switched: frozenset[str] = frozenset()

    def add(
        self,
        type_url: str,
        name: str,
        message: Message | Encoded,
        sources: Iterable[PolicyRef],
        needs: Iterable[tuple[str, str]] = (),
    ) -> None:
        if name in self.by_type[type_url]:
            self.duplicates.append((type_url, name, list(sources)))
            return  # the first stays; the snapshot is refused anyway
        self.by_type[type_url][name] = message
        self.sources[(type_url, name)] = sources
        needed = list(needs)
        if needed:
            self.needs[(type_url, name)] = needed

    def message(self, type_url: str, name: str) -> Message:
        """The resource as a protobuf message, whatever form it is kept in."""
        item = self.by_type[type_url][name]
        return item.message() if isinstance(item, Encoded) else item


#: seconds a replaced layout of a gateway's routes stays published and up to date: Envoy's
#: default drain time (the old listener's connections keep using it while they drain) plus
#: a margin
KEPT_LAYOUT_SECONDS = 660.0


class Translator:
    """Turns views into resources, reusing the encoding of unchanged policy objects.

    ``shard_from``: gateways with at least this many routes are sharded when their paths
    allow it (translate/shard.py); 0 never shards.
    """

    def __init__(
        self,
        aggregation: AggregationTarget | None = None,
        shard_from: int = 2000,
        sink_tls: bool = False,
    ) -> None:
        self.shard_from = shard_from
        #: Envoys talk mutual TLS to the control plane (bootstrap-mtls.yaml): a separate
        #: analytics sink is reached the same way, with the bootstrap's client certificate
        self.sink_tls = sink_tls
        #: gateway -> replaced layouts (key length, None: one table) -> when they expire
        self._kept: dict[str, dict[int | None, float]] = {}
        self._scopes: dict[str, Message] = {}
        self._tables: dict[str, RouteTable] = {}
        self._clusters: dict[str, tuple[Cluster, Message, Message | None]] = {}
        self._extensions: dict[tuple[str, str], tuple[Message, Message]] = {}
        #: gateway -> the generated login routes in its table, and the providers they are of
        self._login_routes: dict[str, dict[str, Route]] = {}
        self._login_of: dict[str, dict[str, OidcProvider]] = {}
        self.aggregation = aggregation or AggregationTarget()
        self._aggregator = aggregator_cluster(self.aggregation)

    def _cluster(self, cluster: Cluster) -> tuple[Message, Message | None]:
        hit = self._clusters.get(cluster.name)
        if hit is None or hit[0] is not cluster:
            with blame("cluster", cluster.name):
                cla = load_assignment(cluster) if is_eds(cluster) else None
                hit = (cluster, cluster_resource(cluster), cla)
            self._clusters[cluster.name] = hit
        return hit[1], hit[2]

    def _extension(self, gateway: str, name: str, config: Message) -> Message:
        """The ECDS resource, reused while the filter's config object is unchanged (so an
        unchanged config with thousands of entries is not packed again)."""
        hit = self._extensions.get((gateway, name))
        if hit is None or hit[0] is not config:
            wrapped = extension_pb2.TypedExtensionConfig(name=name, typed_config=pack(config))
            hit = (config, wrapped)
            self._extensions[(gateway, name)] = hit
        return hit[1]

    def uses_cluster(self, gateway: str, cluster: str) -> bool:
        table = self._tables.get(gateway)
        return table is not None and cluster in table.clusters

    def uses_plans(self, gateway: str) -> bool:
        """Whether the gateway's routes limit by consumer (plans and consumers matter)."""
        table = self._tables.get(gateway)
        return table is not None and table.uses_plans

    def translate(self, view: GatewayView) -> Resources:
        out = Resources()
        gw = view.gateway
        published = gw.name in self._tables  # an earlier layout may be in use
        table = self._tables.setdefault(gw.name, RouteTable())
        consumers = cast(Mapping[str, Consumer], view.objects.get("consumer", {}))
        context = rate_limit_context(route_context(gw, consumers), gw.rate_limit)
        context = replace(
            context,
            aggregation_port=gw.aggregation_port,
            key_expiry=keys_expire(view.objects.get("api_key", {})),
            login_origins=login_origins(
                cast(Mapping[str, OidcProvider], view.objects.get("oidc_provider", {}))
            ),
        )
        context = proto_context(
            context,
            view.routes,
            view.changed_routes,
            table.protocols[TRANSCODING] > 0,
            view,
        )
        context = replace(context, quota_units=table.quota_units)
        table.sync(view.routes, context, view.changed_routes)
        units = quota_units_in_use(view, table)
        if units != table.quota_units:
            # the first route or plan counting a unit through the quota service (or the
            # last one gone): every limited route switches its filter on (or off)
            table.quota_units = units
            table.sync(view.routes, replace(context, quota_units=units))
        providers = self._sync_login_routes(view, table, context)
        previous = table.shard_length
        length = None
        if table.protocols[TRANSCODING] == 0:
            length = choose_length(table.shard_plan, len(table), self.shard_from)
        kept = self._kept_layouts(gw.name, previous if published else length, length)
        table.set_layouts(length, kept)
        filters, dynamic = http_filters(view, table)
        out.divides_by_replicas = RATE_LIMIT_FILTER in dynamic
        if context.key_expiry:
            out.route_switches = frozenset({KEY_EXPIRY_SWITCH})
            out.switched = frozenset({API_KEY_FILTER})
        routes_needed = [(ROUTE, gw.name)] if length is None else []
        out.add(
            LISTENER,
            gw.name,
            listener_resource(view, filters, length),
            [("gateway", gw.name)],
            needs=routes_needed + [(EXTENSION, name) for name in dynamic],
        )
        for name, config in dynamic.items():
            out.add(
                EXTENSION,
                name,
                self._extension(gw.name, name, config),
                [(k, o) for k in ("jwt_provider", "consumer") for o in view.objects.get(k, {})],
            )
        self._add_tls(out, view)
        self._add_login(out, gw, providers)
        used = sorted(table.clusters)
        cached = cached_routes(view, table.features)
        cluster_needs = (
            [(CLUSTER, c) for c in used]
            + ([(CLUSTER, AGGREGATOR_CLUSTER)] if table.aggregates else [])
            + [(CLUSTER, cache_cluster_name(r.name, c)) for r in cached for c in r.clusters()]
        )
        if length is None:
            out.add(
                ROUTE,
                gw.name,
                table.encode(gw),
                Sources("route", table.names()),
                needs=cluster_needs,
            )
        else:
            # the listener stands for the shards in the consistency check of clusters
            out.needs.setdefault((LISTENER, gw.name), []).extend(cluster_needs)
            self._add_shards(out, gw, table, length)
        for layout in kept:  # the layouts of a listener being drained
            if layout is not None:
                self._add_shards(out, gw, table, layout, late=True)
            elif length is not None:
                out.add(ROUTE, gw.name, table.encode(gw), Sources("route", table.names()))
                out.late.add((ROUTE, gw.name))
        analytics_sink = sink_cluster(gw, tls=self.sink_tls)
        if analytics_sink is not None:
            out.add(CLUSTER, SINK_CLUSTER, analytics_sink, [("gateway", gw.name)])
        collector = tracing_cluster(gw)
        if collector is not None:
            out.add(CLUSTER, TRACING_CLUSTER, collector, [("gateway", gw.name)])
        self._add_aggregation(out, gw, table)
        for cluster_message in jwks_clusters(view):
            provider = cluster_message.name.partition(":")[2]
            out.add(CLUSTER, cluster_message.name, cluster_message, [("jwt_provider", provider)])
        for name in used:
            cluster = view.clusters.get(name)
            if cluster is None:
                continue  # reported by the snapshot's consistency check
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
        for route in cached:  # the clusters cached routes fetch misses from (traffic.py)
            for name in route.clusters():
                cluster = view.clusters.get(name)
                if cluster is None:
                    continue
                message, cla = self._cluster(cluster)
                copy = cache_cluster(cast(Any, message), route)
                out.add(
                    CLUSTER,
                    copy.name,
                    copy,
                    [("route", route.name), ("cluster", name)],
                    needs=[(ENDPOINT, name)] if cla is not None else (),
                )
        return out

    def _kept_layouts(
        self, gateway: str, previous: int | None, current: int | None
    ) -> list[int | None]:
        """Layouts replaced in the last KEPT_LAYOUT_SECONDS (ADR 0017): a new layout is a new
        listener, and the old one's connections keep using the old layout while they drain,
        so it stays published and up to date (routes too short for it are only in the new)."""
        now = time.monotonic()
        kept = {k: t for k, t in self._kept.get(gateway, {}).items() if t > now}
        if previous != current:
            kept[previous] = now + KEPT_LAYOUT_SECONDS
        kept.pop(current, None)
        if kept:
            self._kept[gateway] = kept
        else:
            self._kept.pop(gateway, None)
        return sorted(kept, key=lambda k: -1 if k is None else k)

    def _add_shards(
        self, out: Resources, gw: Gateway, table: RouteTable, length: int, late: bool = False
    ) -> None:
        """The scopes of one layout of a sharded gateway and their RouteConfigurations."""
        for key, (encoded, names) in table.encode_shards(gw, length).items():
            name = shard_name(gw.name, key)
            scope = self._scopes.get(name)
            if scope is None:
                scope = self._scopes[name] = scope_resource(name, key)
            sources = Sources("route", names)
            out.add(SCOPED, name, scope, sources, needs=[(ROUTE, name)])
            out.add(ROUTE, name, encoded, sources)
            if late:
                out.late.add((ROUTE, name))

    def _add_tls(self, out: Resources, view: GatewayView) -> None:
        """HTTPS: SNI filter chains naming certificates served over SDS, and the optional
        plain-HTTP listener that redirects to HTTPS."""
        gw = view.gateway
        if gw.tls is None:
            return
        known = cast(Mapping[str, Certificate], view.objects.get("certificate", {}))
        certs = [known[n] for n in gw.tls.certificates if n in known]
        secure_listener(cast(Any, out.message(LISTENER, gw.name)), certs)
        # a missing certificate is reported by the snapshot's consistency check
        out.needs.setdefault((LISTENER, gw.name), []).extend(
            (SECRET, n) for n in gw.tls.certificates
        )
        for cert in certs:
            out.add(SECRET, cert.name, secret_resource(cert), [("certificate", cert.name)])
        client_ca = client_ca_secret(gw)  # mutual TLS (translate/edge.py)
        if client_ca is not None:
            apply_client_auth(cast(Any, out.message(LISTENER, gw.name)), gw)
            out.add(SECRET, client_ca.name, client_ca, [("gateway", gw.name)])
            out.needs[(LISTENER, gw.name)].append((SECRET, client_ca.name))
        redirect = redirect_listener(gw)
        if redirect is not None:
            out.add(LISTENER, redirect.name, redirect, [("gateway", gw.name)])

    def _add_aggregation(self, out: Resources, gw: Gateway, table: RouteTable) -> None:
        """Aggregate routes: the service's cluster and the listener it calls parts through."""
        if not table.aggregates:
            return
        aggregates = sorted(table.aggregates)
        out.add(CLUSTER, AGGREGATOR_CLUSTER, self._aggregator, Sources("route", tuple(aggregates)))
        timeouts = part_timeouts(table.aggregates.values())
        out.add(
            LISTENER,
            parts_listener_name(gw),
            parts_listener(gw, timeouts, self.aggregation.address),
            [("gateway", gw.name), *(("route", name) for name in aggregates)],
            needs=[(CLUSTER, c) for c in sorted(timeouts)],
        )

    def _sync_login_routes(
        self, view: GatewayView, table: RouteTable, context: RouteContext
    ) -> list[OidcProvider]:
        """Keep the callback and logout routes of the providers the gateway's routes log in
        with (translate/oidc.py) in its table; the providers in use."""
        gw = view.gateway.name
        known = cast(Mapping[str, OidcProvider], view.objects.get("oidc_provider", {}))
        previous = self._login_routes.get(gw, {})
        of = self._login_of.get(gw, {})
        # the generated routes still in the table count as users of their provider
        own = Counter(
            oidc_filter_name(r.auth.oidc)
            for n, r in previous.items()
            if n in table and r.auth and r.auth.oidc
        )
        users = {n: table.features[n] - own[n] for n in table.features}
        wanted: dict[str, Route] = {}
        in_use: dict[str, OidcProvider] = {}
        for name in used_providers(users):
            provider = known.get(name)
            if provider is None:
                continue  # a dangling reference: reported by the write's reference check
            in_use[name] = provider
            mine = [r for r in previous.values() if r.auth and r.auth.oidc == name]
            if of.get(name) is not provider or len(mine) != 2:
                mine = login_routes(gw, provider)
            wanted.update((r.name, r) for r in mine)
        paths: dict[str, str] = {}
        for provider in in_use.values():
            for path in (provider.callback_path, provider.logout_path):
                other = paths.setdefault(path.lower(), provider.name)
                if other != provider.name:
                    raise TranslationError(
                        f"gateway {gw!r}: oidc providers {other!r} and {provider.name!r} both "
                        f"use the path {path!r}; give one another callback_path/logout_path"
                    )
        if wanted or previous:
            table.sync(wanted, context, frozenset(wanted) | frozenset(previous))
        if wanted:
            self._login_routes[gw], self._login_of[gw] = wanted, in_use
        else:
            self._login_routes.pop(gw, None)
            self._login_of.pop(gw, None)
        return [in_use[n] for n in sorted(in_use)]

    def _add_login(self, out: Resources, gw: Gateway, providers: list[OidcProvider]) -> None:
        """Each provider's token-endpoint cluster and its SDS secrets."""
        for provider in providers:
            src = [("oidc_provider", provider.name)]
            cluster = provider_cluster(provider)
            out.add(CLUSTER, token_cluster_name(provider.name), cluster, src)
            needs = out.needs.setdefault((LISTENER, gw.name), [])
            needs.append((CLUSTER, token_cluster_name(provider.name)))
            for secret in provider_secrets(provider):
                out.add(SECRET, secret.name, secret, src)
                needs.append((SECRET, secret.name))

    def forget_gateway(self, gateway: str) -> None:
        self._tables.pop(gateway, None)
        self._login_routes.pop(gateway, None)
        self._login_of.pop(gateway, None)
        for key in [k for k in self._extensions if k[0] == gateway]:
            del self._extensions[key]

    def forget_cluster(self, cluster: str) -> None:
        self._clusters.pop(cluster, None)


def build_views(
    gateways: Iterable[Gateway],
    routes: Iterable[Route],
    clusters: Mapping[str, Cluster],
    objects: Mapping[str, Mapping[str, PolicyModel]] | None = None,
) -> dict[str, GatewayView]:
    """Group policy per gateway (the runner keeps these groups up to date instead)."""
    by_gateway: dict[str, dict[str, Route]] = {}
    for route in routes:
        for name in route.gateways:
            by_gateway.setdefault(name, {})[route.name] = route
    return {
        gw.name: GatewayView(gw, by_gateway.get(gw.name, {}), clusters, objects or {})
        for gw in gateways
    }

"""Aggregate routes -> a route to the aggregation service, and the listener it calls back.

An aggregate route forwards the client's request (after the gateway's authentication and
rate limits, like any route) to the ``_aggregator`` cluster: the replicas of ``gatewayctl
aggregator``. The route adds the composition as a header (:mod:`controlplane.aggregator.spec`),
overwriting any copy the client sent. The service calls every part in parallel through the
*parts listener* of the Envoy that sent the request (a second listener of the gateway,
bound to an internal address, opened only when the gateway has aggregate routes): one
route per aggregated cluster, selected by the ``x-gateway-part`` header. So parts get
the cluster's load balancing, health checks and circuit breakers, and the service needs
no configuration besides its port.

The parts listener answers only for clusters that the gateway's aggregates name, and
carries no authentication: it must not be reachable by clients (the default address is
127.0.0.1; in docker-compose the internal network, with no port published).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, health_check_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.type.v3 import range_pb2
from google.protobuf import duration_pb2, wrappers_pb2

from ..aggregator.spec import PART_HEADER, SPEC_HEADER, Part, Spec
from ..errors import GatewayError
from ..policy import Gateway, Route
from ..policy.aggregate import OnError
from ..policy.common import duration_ms, is_ip, parse_hostport
from ..policy.reserved import AGGREGATOR_CLUSTER
from .cluster import endpoints_of
from .common import duration, pack, string_match

if TYPE_CHECKING:  # settings are the controller's; translation only reads two fields
    from ..settings import Settings

__all__ = [
    "AGGREGATOR_CLUSTER",
    "AggregationTarget",
    "aggregate_action",
    "aggregator_cluster",
    "apply_aggregate",
    "parts_listener",
    "parts_listener_name",
    "spec_of",
]

#: time the service gets beyond the slowest part's timeout to answer
_MARGIN_MS = 1000
_HCM = "envoy.filters.network.http_connection_manager"


@dataclass(frozen=True)
class AggregationTarget:
    """Where the aggregation service runs and where the parts listeners bind (deployment
    settings of the controller, not policy: they differ between ``up`` and compose)."""

    service: tuple[tuple[str, int], ...] = (("127.0.0.1", 8081),)
    address: str = "127.0.0.1"

    @classmethod
    def parse(cls, service: str, address: str) -> AggregationTarget:
        """``service``: ``host:port[,host:port...]``; a DNS name resolves to every replica."""
        endpoints = tuple(parse_hostport(s.strip()) for s in service.split(",") if s.strip())
        if not endpoints:
            raise ValueError("the aggregation service needs at least one host:port")
        if not is_ip(address):
            raise ValueError(f"{address!r} is not an IP address")
        return cls(endpoints, address)


def aggregation_target(settings: Settings) -> AggregationTarget:
    """The target of the controller's settings (``aggregator``, ``aggregation_address``);
    here rather than in the controller so that a write's check (validate.py) translates
    without importing the controller's server stack (~24 MiB of the CLI's memory)."""
    try:
        return AggregationTarget.parse(settings.aggregator, settings.aggregation_address)
    except ValueError as exc:
        raise GatewayError(f"aggregation settings: {exc}") from None


def _ms(value: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=value // 1000, nanos=(value % 1000) * 1_000_000)


def spec_of(route: Route, port: int) -> Spec:
    agg = route.aggregate
    assert agg is not None
    return Spec(
        parts=tuple(Part(p.name, p.cluster, p.path, duration_ms(p.timeout)) for p in agg.parts),
        port=port,
        partial=agg.on_error == OnError.partial,
        forward_query=agg.forward_query,
        forward_headers=tuple(agg.forward_headers),
        path_regex=route.match.path_regex,
    )


def aggregate_action(route: Route) -> rc.RouteAction:
    """To the service, with a timeout that lets the slowest part time out first."""
    agg = route.aggregate
    assert agg is not None
    slowest = max(duration_ms(p.timeout) for p in agg.parts)
    action = rc.RouteAction(cluster=AGGREGATOR_CLUSTER, timeout=_ms(slowest + _MARGIN_MS))
    # a replica that is gone (scaled down, restarting) costs a retry on another, not an error;
    # nothing is retried once a replica has the request
    action.retry_policy.CopyFrom(
        rc.RetryPolicy(
            retry_on="connect-failure,refused-stream",
            num_retries=wrappers_pb2.UInt32Value(value=2),
            retry_host_predicate=[
                rc.RetryPolicy.RetryHostPredicate(
                    name="envoy.retry_host_predicates.previous_hosts",
                    typed_config=pack(previous_hosts_pb2.PreviousHostsPredicate()),
                )
            ],
            host_selection_retry_max_attempts=3,
        )
    )
    if route.idle_timeout is not None:
        action.idle_timeout.CopyFrom(duration(route.idle_timeout))
    return action


def apply_aggregate(message: rc.Route, route: Route, port: int) -> None:
    """Add the composition header (replacing a client's copy) to an aggregate route."""
    if route.aggregate is None:
        return
    message.request_headers_to_add.append(
        base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=SPEC_HEADER, value=spec_of(route, port).encode()),
            append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
        )
    )


def aggregator_cluster(target: AggregationTarget) -> cluster_pb2.Cluster:
    """The service's replicas: IPs as a static list, a DNS name as every address it has
    (docker-compose answers a service name with all its replicas), health-checked so a
    stopped replica gets no requests."""
    out = cluster_pb2.Cluster(
        name=AGGREGATOR_CLUSTER,
        connect_timeout=_ms(1000),
        lb_policy=cluster_pb2.Cluster.LEAST_REQUEST,
        load_assignment=endpoints_of(AGGREGATOR_CLUSTER, target.service),
    )
    if all(is_ip(host) for host, _ in target.service):
        out.type = cluster_pb2.Cluster.STATIC
    else:
        out.type = cluster_pb2.Cluster.STRICT_DNS
        out.dns_lookup_family = cluster_pb2.Cluster.V4_PREFERRED
    out.health_checks.append(
        health_check_pb2.HealthCheck(
            timeout=_ms(1000),
            interval=_ms(2000),
            healthy_threshold=wrappers_pb2.UInt32Value(value=1),
            unhealthy_threshold=wrappers_pb2.UInt32Value(value=2),
            http_health_check=health_check_pb2.HealthCheck.HttpHealthCheck(
                path="/healthz", expected_statuses=[range_pb2.Int64Range(start=200, end=201)]
            ),
        )
    )
    return out


def parts_listener_name(gateway: Gateway) -> str:
    return f"{gateway.name}.aggregation"


def part_timeouts(aggregates: Iterable[Route]) -> dict[str, int]:
    """Cluster -> the longest timeout any part on it has (ms)."""
    out: dict[str, int] = {}
    for route in aggregates:
        for part in route.aggregate.parts if route.aggregate else ():
            out[part.cluster] = max(out.get(part.cluster, 0), duration_ms(part.timeout))
    return out


def parts_listener(
    gateway: Gateway, timeouts: dict[str, int], address: str
) -> listener_pb2.Listener:
    """One route per aggregated cluster, chosen by ``x-gateway-part``; anything else 404."""
    name = parts_listener_name(gateway)
    routes = [
        rc.Route(
            name=f"part:{cluster}",
            match=rc.RouteMatch(
                prefix="/",
                headers=[
                    rc.HeaderMatcher(name=PART_HEADER, string_match=string_match(exact=cluster))
                ],
            ),
            route=rc.RouteAction(cluster=cluster, timeout=_ms(timeouts[cluster] + _MARGIN_MS)),
            request_headers_to_remove=[PART_HEADER],
        )
        for cluster in sorted(timeouts)
    ]
    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix=name,
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        route_config=route_pb2.RouteConfiguration(
            name=name,
            virtual_hosts=[rc.VirtualHost(name=name, domains=["*"], routes=routes)],
        ),
        http_filters=[
            hcm_pb2.HttpFilter(
                name="envoy.filters.http.router", typed_config=pack(router_pb2.Router())
            )
        ],
    )
    return listener_pb2.Listener(
        name=name,
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(
                address=address, port_value=gateway.aggregation_port
            )
        ),
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[listener_components_pb2.Filter(name=_HCM, typed_config=pack(hcm))]
            )
        ],
    )

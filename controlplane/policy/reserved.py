"""Names users cannot give: the namespace of what the translator generates and the bootstrap
defines.

Every Envoy resource the controller generates has a name no policy object can have, so a
user object can never replace one (a cluster named like a provider's JWKS fetch cluster made
Envoy fetch that provider's keys from the user's server). The rule has three parts:

* generated names carry a character the name grammar refuses (``jwks:<provider>``,
  ``cache:<route>:<cluster>``, ``analytics:sink``, ``tracing:otlp``, ``part:<cluster>``,
  ``<gateway>#<shard>``)
  or start with ``_`` (``_aggregator``);
* generated names that cannot change because Envoy's stats or the bootstrap carry them start
  with ``gateway.`` (filter and ECDS names, ``gateway.replicas``, ``gateway.not_found``), a
  prefix no object name may start with;
* the bootstrap's own clusters (``xds_cluster``, ``gateway_replicas``) are refused by name.

Names derived from a gateway's own name (its listener, RouteConfiguration, parts and redirect
listeners) only appear in that gateway's configuration, where nothing else derives from it.
The snapshot builder checks, as a last line, that no two resources of a type share a name.
"""

from __future__ import annotations

__all__ = [
    "AGGREGATOR_CLUSTER",
    "REPLICAS_ASSIGNMENT",
    "REPLICAS_CLUSTER",
    "RESERVED_NAMES",
    "RESERVED_PREFIXES",
    "SINK_CLUSTER",
    "TRACING_CLUSTER",
    "XDS_CLUSTER",
    "cache_cluster_name",
    "jwks_cluster_name",
    "reserved_problem",
]

#: the bootstrap's static cluster to the controller (envoy/bootstrap.yaml): a route to a
#: policy cluster of this name would reach the controller's ADS port
XDS_CLUSTER = "xds_cluster"
#: the bootstrap's local cluster (its members are the Envoys serving the gateway)
REPLICAS_CLUSTER = "gateway_replicas"
#: the ClusterLoadAssignment of REPLICAS_CLUSTER, served by the controller (xds/cache.py)
REPLICAS_ASSIGNMENT = "gateway.replicas"
#: the controller's access-log sink when a gateway's analytics name no other
SINK_CLUSTER = "analytics:sink"
#: the OTLP/gRPC collector of a gateway's tracing (translate/tracing.py)
TRACING_CLUSTER = "tracing:otlp"
#: the aggregation service (translate/aggregate.py)
AGGREGATOR_CLUSTER = "_aggregator"

RESERVED_NAMES = frozenset({XDS_CLUSTER, REPLICAS_CLUSTER})
RESERVED_PREFIXES = ("gateway.",)


def jwks_cluster_name(provider: str) -> str:
    """The cluster Envoy fetches a provider's remote JWKS through."""
    return f"jwks:{provider}"


def cache_cluster_name(route: str, cluster: str) -> str:
    """The copy of ``cluster`` a cached route fetches misses from (translate/traffic.py);
    ':' keeps ``route`` and ``cluster`` apart, since both may contain '.'."""
    return f"cache:{route}:{cluster}"


def reserved_problem(name: str) -> str | None:
    """Why ``name`` (already a valid name otherwise) cannot be given by a user, or None."""
    if name in RESERVED_NAMES:
        return f"{name!r} is reserved (a cluster of Envoy's bootstrap)"
    for prefix in RESERVED_PREFIXES:
        if name.startswith(prefix):
            return f"{name!r} is reserved: names starting with {prefix!r} are the gateway's own"
    return None

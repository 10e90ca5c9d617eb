"""Route shards: a large gateway's routes split over many RouteConfigurations.

Envoy rebuilds a whole RouteConfiguration whenever anything in it changes: about 5 us per
route on a 2-core machine, ~50 ms at 10,000 routes (docs/benchmarks.md). With scoped RDS
one HTTP connection manager picks, per request, one of many RouteConfigurations by a key.
A sharded gateway's key is the first ``L`` characters of the request path (after Envoy's
path normalisation, without the query), written into a request header by an early header
mutation, so a change re-sends and rebuilds only the shard holding the changed route.

Why this keeps routing unchanged: a route can match a path only if its literal path (the
exact path, or the prefix) starts that path. When every route's literal is at least ``L``
characters long, a route can only match paths whose first ``L`` characters equal its own,
so it is needed in exactly one shard; a path whose first ``L`` characters no route has
matches no route at all (Envoy answers 404 itself). Within a shard the routes keep the
gateway's order and every shard has all the gateway's virtual hosts, so host selection and
first-match order are those of the unsharded table. Gateways with a regex path route (no
literal), or a route whose literal is ``/``, are not sharded; neither are gateways with
gRPC-JSON transcoding, whose filter re-routes on a rewritten path.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2
from envoy.config.core.v3 import base_pb2, extension_pb2
from envoy.config.route.v3 import scoped_route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.http.early_header_mutation.header_mutation.v3 import (
    header_mutation_pb2,
)

from ..policy import Route
from ..policy.headers import GATEWAY_HEADER_PREFIX
from .common import ads_source, pack

__all__ = [
    "SCOPE_HEADER",
    "ShardPlan",
    "choose_length",
    "early_mutation",
    "literal",
    "scope_key",
    "scope_resource",
    "scoped_routes",
    "shard_name",
]

#: request header carrying the shard key; set by the gateway, never taken from the client
SCOPE_HEADER = GATEWAY_HEADER_PREFIX + "route-scope"
#: the key lengths considered: "/" plus at least one character, every length up to 16
LENGTHS = (*range(2, 17), 20, 24, 32)


def literal(route: Route) -> str | None:
    """The characters every path this route matches starts with (None: any path)."""
    m = route.match
    if m.path is not None:
        return m.path
    if m.path_regex is not None:
        return None
    prefix = m.path_prefix or "/"
    # a prefix "/a/" also matches the path "/a" (translate/route.py, with_slash_twin)
    return prefix[:-1] if len(prefix) > 1 and prefix.endswith("/") else prefix


def _fold(key: str) -> str:
    """ASCII lower case, as Envoy compares paths of routes that ignore case."""
    return key.encode().lower().decode()


class ShardPlan:
    """The figures a sharding decision needs, kept up to date route by route.

    For each candidate key length, the routes per key and the shards per size: the decision
    is then a function of the routes alone (not of their history), so a restarted
    controller, or another controller sharing the database, picks the layout the Envoys
    already have, and answering it costs no pass over the routes.
    """

    def __init__(self) -> None:
        #: routes per literal length
        self.lengths: Counter[int] = Counter()
        #: routes without a literal (regex paths)
        self.unshardable = 0
        #: per candidate length: routes per key, and shards per size (plain dicts: this
        #: runs for every route of a bulk load)
        self._keys: dict[int, dict[str, int]] = {n: {} for n in LENGTHS}
        self._sizes: dict[int, dict[int, int]] = {n: {} for n in LENGTHS}
        #: per candidate length: distinct keys per case-folded key, and how many folded
        #: keys have more than one (such a length is not used: routes match paths whatever
        #: their case, but a request picks its shard by its own case; ADR 0022)
        self._folded: dict[int, dict[str, int]] = {n: {} for n in LENGTHS}
        self._clashes: dict[int, int] = dict.fromkeys(LENGTHS, 0)

    def add(self, lit: str | None) -> None:
        if lit is None:
            self.unshardable += 1
            return
        self.lengths[len(lit)] += 1
        for n in LENGTHS:
            if n > len(lit):
                break
            keys, sizes = self._keys[n], self._sizes[n]
            key = lit[:n]
            size = keys.get(key, 0)
            if size:
                _decrement(sizes, size)
            else:
                folded = self._folded[n]
                variants = folded.get(_fold(key), 0)
                if variants == 1:
                    self._clashes[n] += 1
                folded[_fold(key)] = variants + 1
            keys[key] = size + 1
            sizes[size + 1] = sizes.get(size + 1, 0) + 1

    def remove(self, lit: str | None) -> None:
        if lit is None:
            self.unshardable -= 1
            return
        _decrement(self.lengths, len(lit))
        for n in LENGTHS:
            if n > len(lit):
                break
            keys, sizes = self._keys[n], self._sizes[n]
            key = lit[:n]
            size = keys[key]
            _decrement(sizes, size)
            _decrement(keys, key)
            if size > 1:
                sizes[size - 1] = sizes.get(size - 1, 0) + 1
            else:
                folded = self._folded[n]
                if folded[_fold(key)] == 2:
                    self._clashes[n] -= 1
                _decrement(folded, _fold(key))

    def shortest(self) -> int:
        return min(self.lengths) if self.lengths else 0

    def case_clash(self, length: int) -> bool:
        """Whether two keys of this length differ only in case."""
        return self._clashes[length] > 0

    def largest(self, length: int) -> int:
        """Routes in the largest shard with keys of this length."""
        sizes = self._sizes[length]
        return max(sizes) if sizes else 0


def _decrement(counts: dict[Any, int], key: Any) -> None:
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]


def choose_length(plan: ShardPlan, count: int, min_routes: int) -> int | None:
    """The shard key length for a gateway of ``count`` routes, or None (one table).

    The shortest candidate length whose largest shard has at most max(16, sqrt(count))
    routes, or else the one that spreads them most; None when even that leaves one shard
    with more than half the routes. Lengths longer than the shortest literal are not
    candidates (such a route would belong to many shards), nor lengths where two keys
    differ only in case (a case variant of a path could then reach another route's shard:
    routes ignore case, a request's key has its own; ADR 0022).
    """
    if min_routes <= 0 or count < min_routes or plan.unshardable:
        return None
    shortest = plan.shortest()
    target = max(16, math.isqrt(count))
    best: tuple[int, int] | None = None  # (largest shard, length)
    for length in LENGTHS:
        if length > shortest:
            break
        if plan.case_clash(length):
            continue
        largest = plan.largest(length)
        if largest <= target:
            best = (largest, length)
            break
        if best is None or largest < best[0]:
            best = (largest, length)
    if best is None or best[0] > count // 2:
        return None
    return best[1]


def scope_key(length: int, lit: str) -> str:
    """The key of the shard holding a route with this literal; the length is part of it,
    so the shards of two layouts (old and new listener while one drains) never collide."""
    return f"{length}{lit[:length]}"


def shard_name(gateway: str, key: str) -> str:
    """RouteConfiguration and scope name of one shard of a gateway."""
    return f"{gateway}#{key}"


def scope_resource(name: str, key: str) -> scoped_route_pb2.ScopedRouteConfiguration:
    return scoped_route_pb2.ScopedRouteConfiguration(
        name=name,
        route_configuration_name=name,
        key=scoped_route_pb2.ScopedRouteConfiguration.Key(
            fragments=[scoped_route_pb2.ScopedRouteConfiguration.Key.Fragment(string_key=key)]
        ),
    )


def scoped_routes(gateway: str) -> hcm_pb2.ScopedRoutes:
    """The connection manager's route source for a sharded gateway: the whole header is
    the key (no element separator, so no character of a path can split it)."""
    extractor = hcm_pb2.ScopedRoutes.ScopeKeyBuilder.FragmentBuilder.HeaderValueExtractor(
        name=SCOPE_HEADER, index=0
    )
    return hcm_pb2.ScopedRoutes(
        name=gateway,
        scope_key_builder=hcm_pb2.ScopedRoutes.ScopeKeyBuilder(
            fragments=[
                hcm_pb2.ScopedRoutes.ScopeKeyBuilder.FragmentBuilder(
                    header_value_extractor=extractor
                )
            ]
        ),
        rds_config_source=ads_source(),
        scoped_rds=hcm_pb2.ScopedRds(scoped_rds_config_source=ads_source()),
    )


def early_mutation(length: int) -> extension_pb2.TypedExtensionConfig:
    """Sets the key header before route selection, overwriting any value the client sent:
    the length, then the first ``length`` characters of the normalised path (no query)."""
    mutation = header_mutation_pb2.HeaderMutation(
        mutations=[
            mutation_rules_pb2.HeaderMutation(
                append=base_pb2.HeaderValueOption(
                    header=base_pb2.HeaderValue(
                        key=SCOPE_HEADER, value=f"{length}%PATH(NQ:PATH):{length}%"
                    ),
                    append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
                )
            )
        ]
    )
    return extension_pb2.TypedExtensionConfig(
        name="gateway.route_scope", typed_config=pack(mutation)
    )

"""Route shards: a large gateway's routes split over many RouteConfigurations.

Envoy rebuilds a whole RouteConfiguration whenever anything in it changes: about 5 us per
route on a 2-core machine, ~50 ms at 10,000 routes (docs/benchmarks.md). With scoped RDS
one HTTP connection manager picks, per request, one of many RouteConfigurations by a key.
A sharded gateway's key is the first ``L`` characters of the request path (after Envoy's
path normalisation, without the query), written into a request header by an early header
mutation, so a change re-sends and rebuilds only the shard holding the changed route.

Why this keeps routing unchanged: a route can match a path only if its literal path (the
exact path, or the prefix) starts that path, whatever the case (literals ignore case, ADR
0022). A route whose literal has at least ``L`` characters (a *long* route) can only match
paths whose first ``L`` characters equal its own up to case, so it is needed in exactly one
shard: the one keyed by those characters in lower case. A route with a shorter literal (a
*short* route, e.g. ``/new`` added to 10,000 routes ``/r/00000``..) may match paths of many
keys: it goes into every shard whose key starts with its literal and into the layout's
*fallback* shard, so adding it changes neither the key length nor the listener (ADR 0045).

A request whose key (in its own case) names no shard, or whose route table has no virtual
host for it, is re-keyed by a small Lua filter at the head of the chain, which every
shard's virtual hosts switch off (so a request that found its shard never runs it): the
key in lower case first (a case variant of a long route's path finds that route's shard),
then, if that finds no route, the fallback shard; clearing the route cache makes Envoy
select the scope again. A request that reaches the fallback can match no long route (its key would
then name that route's shard), so the fallback, holding the short routes alone, routes it
as the whole table would. Within a shard the routes keep the gateway's order and every
shard has all the gateway's virtual hosts, so host selection and first-match order are
those of the unsharded table. Gateways with a regex path route (no literal) are not
sharded; neither are gateways with gRPC-JSON transcoding, whose filter re-routes on a
rewritten path.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2
from envoy.config.core.v3 import base_pb2, extension_pb2
from envoy.config.route.v3 import scoped_route_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.http.early_header_mutation.header_mutation.v3 import (
    header_mutation_pb2,
)
from google.protobuf import struct_pb2

from ..policy import Route
from ..policy.headers import GATEWAY_HEADER_PREFIX
from .common import ads_source, pack

__all__ = [
    "FALLBACK_FILTER",
    "SCOPE_HEADER",
    "ShardPlan",
    "choose_length",
    "early_mutation",
    "fallback_filter",
    "fallback_key",
    "is_fallback",
    "literal",
    "refuse_rekeyed",
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

    For each candidate key length, the long routes per key (literals in lower case: keys
    ignore case) and the shards per size, and the routes per literal length: the decision is
    then a function of the routes alone (not of their history), so a restarted controller,
    or another controller sharing the database, picks the layout the Envoys already have,
    and answering it costs no pass over the routes.
    """

    def __init__(self) -> None:
        #: routes per literal length
        self.lengths: Counter[int] = Counter()
        #: routes without a literal (regex paths)
        self.unshardable = 0
        #: literal lengths of routes that switch on a filter the chain lists disabled: they
        #: are never short (a re-keyed request's chain lacks such filters, see below)
        self.needy: Counter[int] = Counter()
        #: per candidate length: routes per key, and shards per size (plain dicts: this
        #: runs for every route of a bulk load)
        self._keys: dict[int, dict[str, int]] = {n: {} for n in LENGTHS}
        self._sizes: dict[int, dict[int, int]] = {n: {} for n in LENGTHS}

    def add(self, lit: str | None, needy: bool = False) -> None:
        if lit is None:
            self.unshardable += 1
            return
        lit = _fold(lit)
        self.lengths[len(lit)] += 1
        if needy:
            self.needy[len(lit)] += 1
        for n in LENGTHS:
            if n > len(lit):
                break
            keys, sizes = self._keys[n], self._sizes[n]
            key = lit[:n]
            size = keys.get(key, 0)
            if size:
                _decrement(sizes, size)
            keys[key] = size + 1
            sizes[size + 1] = sizes.get(size + 1, 0) + 1

    def remove(self, lit: str | None, needy: bool = False) -> None:
        if lit is None:
            self.unshardable -= 1
            return
        lit = _fold(lit)
        _decrement(self.lengths, len(lit))
        if needy:
            _decrement(self.needy, len(lit))
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

    def shortest(self) -> int:
        return min(self.lengths) if self.lengths else 0

    def short(self, length: int) -> int:
        """Routes whose literal is shorter than ``length`` (they go to the fallback shard)."""
        return sum(count for n, count in self.lengths.items() if n < length)

    def largest(self, length: int) -> int:
        """Long routes in the largest shard with keys of this length."""
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

    The shortest candidate length whose largest shard, counting the fallback (the routes
    whose literal is shorter than it), has at most max(16, sqrt(count)) routes, or else the
    one whose largest shard is smallest; None when even that holds more than half the
    routes. Lengths longer than every literal are not candidates, nor lengths longer than
    the literal of a route that switches on a filter listed disabled (a request reaching
    it re-keyed would miss that filter: translate/shard.py). A short route added to a
    sharded gateway (``/new`` next to ``/r/00000``..) goes to the fallback and changes
    neither the length nor the listener (ADR 0045), where a length bounded by the shortest
    literal fell back to one table.
    """
    if min_routes <= 0 or count < min_routes or plan.unshardable:
        return None
    target = max(16, math.isqrt(count))
    longest = min(plan.needy) if plan.needy else LENGTHS[-1]
    best: tuple[int, int] | None = None  # (largest shard, length)
    for length in LENGTHS:
        if length > longest:
            break  # a route that needs its chain would be short
        largest = plan.largest(length)
        if largest == 0:
            break  # no literal this long: longer lengths have none either
        largest = max(largest, plan.short(length))
        if largest <= target:
            best = (largest, length)
            break
        if best is None or largest < best[0]:
            best = (largest, length)
    if best is None or best[0] > count // 2:
        return None
    return best[1]


def scope_key(length: int, lit: str) -> str:
    """The key of the shard holding a long route with this literal: the length, then the
    literal's first ``length`` characters in lower case (the fallback filters lower-case a
    request's key that names no shard). The length is part of the key, so the shards of
    two layouts (old and new listener while one drains) never collide."""
    return f"{length}{_fold(lit[:length])}"


def fallback_key(length: int) -> str:
    """The key of a layout's fallback shard (short routes and the final 404). A request's
    own key is the length and a path, which starts with "/" (only ``OPTIONS *`` gives
    ``*``, and it lands in the fallback either way)."""
    return f"{length}*"


def is_fallback(key: str) -> bool:
    return key.endswith("*")


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


#: the fallback filter (ADR 0045), first in a sharded gateway's chain and switched off by
#: every shard's virtual hosts: only a request that found no virtual host runs it (Envoy
#: decides which filters a route disables when the chain is made, from the first route)
FALLBACK_FILTER = "gateway.route_scope_fallback"


def refuse_rekeyed() -> struct_pb2.Struct:
    """Route metadata (under FALLBACK_FILTER) of a route a re-keyed request must not reach."""
    out = struct_pb2.Struct()
    out.update({"refuse": True})
    return out


def fallback_filter(length: int) -> lua_pb2.Lua:
    """Re-keys a request that found no virtual host: first the key in lower case when that
    differs (a case variant of a long route's path finds that route's shard), then, when
    that finds no route either, the layout's fallback. Clearing the route cache makes Envoy
    select the scope again; ``metadata()`` makes it resolve the route there and then, so
    the route name tells whether the lower-case key found a virtual host (every virtual
    host ends with the named 404 route, so a found one always gives a name).

    Envoy decides which of the filters listed disabled a request gets when it makes the
    request's chain, from the route found first: a re-keyed request gets none of them,
    whatever its final route switches on. A route that switches one on (an API key, a JWT,
    rules, a body transform...) is therefore never short (``choose_length``), and carries
    ``refuse`` in its metadata under this filter's name: a case variant of its path,
    re-keyed to its shard, gets 404 (as a case variant did before re-keying) instead of
    being served without the filter."""
    script = (
        "function envoy_on_request(h)\n"
        f'  local key = h:headers():get("{SCOPE_HEADER}") or ""\n'
        "  local lower = key:lower()\n"
        "  if lower ~= key then\n"
        f'    h:headers():replace("{SCOPE_HEADER}", lower)\n'
        "    h:clearRouteCache()\n"
        "    local meta = h:metadata()\n"
        '    if (h:streamInfo():routeName() or "") ~= "" then\n'
        '      if meta:get("refuse") then h:respond({[":status"] = "404"}, "") end\n'
        "      return\n"
        "    end\n"
        "  end\n"
        f'  h:headers():replace("{SCOPE_HEADER}", "{fallback_key(length)}")\n'
        "  h:clearRouteCache()\n"
        "end\n"
    )
    return lua_pb2.Lua(default_source_code=base_pb2.DataSource(inline_string=script))


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

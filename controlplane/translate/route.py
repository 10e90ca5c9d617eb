"""Route policy -> Envoy Route, and a gateway's routes -> one RouteConfiguration.

Each Route message depends only on its policy object, so it is built once per object
version and reused across revisions; a change to one of 10,000 routes rebuilds one message.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.type.matcher.v3 import regex_pb2
from google.protobuf import wrappers_pb2
from google.protobuf.message import Message

from ..policy import Gateway, Route
from ..policy.ratelimit import Per, RateLimit
from ..policy.route import HeaderOps
from .aggregate import aggregate_action, apply_aggregate
from .auth import (
    API_KEY_FILTER,
    CONSUMER_HEADER,
    JWT_FILTER,
    JWT_NAMESPACE,
    RBAC_FILTER,
    STRIP_FILTER,
    RouteContext,
    effective_auth,
    jwt_requirements,
    not_found_route,
    route_context,
    route_variants,
    strip_on,
    virtual_host_defaults,
)
from .common import blame, duration, pack, regex, string_match
from .cors import CORS_FILTER, apply_cors
from .edge import body_limit_variants, configure_route, edge_clusters, edge_features
from .filters import chain_disabled
from .oidc import OIDC_PREFIX, login_features
from .protocols import apply_protocols, protocol_features
from .quota import switch_on
from .ratelimit import apply_rate_limit, uses_consumers
from .shard import (
    FALLBACK_FILTER,
    SCOPE_HEADER,
    ShardPlan,
    fallback_key,
    is_fallback,
    literal,
    refuse_rekeyed,
    scope_key,
    shard_name,
)
from .traffic import apply_traffic, envoy_header_value, route_features
from .wire import Encoded, field

#: the context of a gateway without auth and consumers
NO_AUTH = RouteContext(default=None, groups=())
#: appended to every virtual host, so unmatched requests get 404 rather than 401
_NOT_FOUND = field(3, not_found_route().SerializeToString(deterministic=True))
#: VirtualHost.typed_per_filter_config (15): map entries {key (1), value (2)}, sorted by key


def _per_filter(settings: Mapping[str, Message]) -> bytes:
    """VirtualHost.typed_per_filter_config (15): map entries {key (1), value (2)}, sorted
    by key as deterministic serialisation writes them."""
    return b"".join(
        field(15, field(1, key.encode()) + field(2, value.SerializeToString(deterministic=True)))
        for key, value in sorted(settings.items())
    )


_VIRTUAL_HOST_DEFAULTS = _per_filter(virtual_host_defaults())
#: the same for a gateway whose routes use identity: the strip filter (listed disabled) on
#: at every virtual host, so every route of it strips client-sent identity headers
_IDENTITY_VIRTUAL_HOST_DEFAULTS = _per_filter(
    {**virtual_host_defaults(), STRIP_FILTER: pack(strip_on())}
)
#: per-filter configs that mean a route uses identity, and bytes of its encoding that do
#: (a header value or rate-limit descriptor reading x-consumer-id or a JWT claim)
_IDENTITY_FILTERS = frozenset({JWT_FILTER, API_KEY_FILTER, RBAC_FILTER})
_IDENTITY_MARKERS = (CONSUMER_HEADER.encode(), JWT_NAMESPACE.encode())
_REFUSE = refuse_rekeyed()

#: a shard's virtual hosts also switch the fallback filter off (translate/shard.py): a
#: request that found a virtual host of its shard is not re-keyed
_SHARD_VIRTUAL_HOST_DEFAULTS = _per_filter(
    {**virtual_host_defaults(), FALLBACK_FILTER: pack(rc.FilterConfig(disabled=True))}
)

__all__ = ["RouteTable", "route_configuration", "route_resource", "sort_key"]

_REDIRECT_CODES = {
    301: rc.RedirectAction.MOVED_PERMANENTLY,
    302: rc.RedirectAction.FOUND,
    303: rc.RedirectAction.SEE_OTHER,
    307: rc.RedirectAction.TEMPORARY_REDIRECT,
    308: rc.RedirectAction.PERMANENT_REDIRECT,
}
_PATH_RANK = {"path": 0, "path_regex": 1, "path_prefix": 2}


def sort_key(route: Route) -> tuple[int, int, int, int, int, int, str]:
    """Higher priority, then exact < regex < prefix, longer paths, more conditions, name.

    Conditions are header and query conditions counted together; a method condition only
    breaks ties between routes with as many. Between otherwise equal routes, one naming
    hosts comes before a catch-all, which would otherwise shadow it in its virtual host.
    """
    m = route.match
    kind = (
        "path"
        if m.path is not None
        else "path_regex"
        if m.path_regex is not None
        else "path_prefix"
    )
    path = m.path or m.path_regex or m.path_prefix or ""
    return (
        -route.priority,
        _PATH_RANK[kind],
        -len(path),
        -(len(m.headers) + len(m.query)),
        -1 if m.methods else 0,
        0 if route.hosts else 1,
        route.name,
    )


def _match(route: Route) -> rc.RouteMatch:
    m = route.match
    out = rc.RouteMatch()
    if m.path is not None:
        out.path = m.path
    elif m.path_regex is not None:
        out.safe_regex.CopyFrom(regex(m.path_regex))
    else:
        out.prefix = m.path_prefix or "/"
    if m.path_regex is None:
        # Literal paths match whatever the case (ADR 0022): many backends read /PRIVATE as
        # /private, so a case variant must meet the route that protects the path.
        out.case_sensitive.value = False
    if m.methods:
        methods = [str(x) for x in m.methods]
        method_match = (
            string_match(exact=methods[0])
            if len(methods) == 1
            else string_match(pattern="^(" + "|".join(methods) + ")$")
        )
        out.headers.append(rc.HeaderMatcher(name=":method", string_match=method_match))
    for h in m.headers:
        hm = rc.HeaderMatcher(name=h.name, invert_match=h.invert)
        if h.present is not None:
            hm.present_match = h.present
        else:
            hm.string_match.CopyFrom(string_match(exact=h.exact, prefix=h.prefix, pattern=h.regex))
        out.headers.append(hm)
    for q in m.query:
        qm = rc.QueryParameterMatcher(name=q.name)
        if q.present is not None:
            qm.present_match = q.present
        else:
            qm.string_match.CopyFrom(string_match(exact=q.exact, pattern=q.regex))
        out.query_parameters.append(qm)
    return out


def _header_options(ops: HeaderOps) -> list[base_pb2.HeaderValueOption]:
    out = []
    for mapping, action in (
        (ops.set, base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD),
        (ops.add, base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD),
    ):
        for key in sorted(mapping):
            out.append(
                base_pb2.HeaderValueOption(
                    header=base_pb2.HeaderValue(key=key, value=envoy_header_value(mapping[key])),
                    append_action=action,
                )
            )
    return out


def _forward(route: Route) -> rc.RouteAction:
    action = rc.RouteAction()
    if route.cluster is not None:
        action.cluster = route.cluster
    else:
        for b in route.backends or []:
            action.weighted_clusters.clusters.append(
                rc.WeightedCluster.ClusterWeight(
                    name=b.cluster, weight=wrappers_pb2.UInt32Value(value=b.weight)
                )
            )
    if route.prefix_rewrite is not None:
        action.prefix_rewrite = route.prefix_rewrite
    if route.regex_rewrite is not None:
        action.regex_rewrite.CopyFrom(
            regex_pb2.RegexMatchAndSubstitute(
                pattern=regex(route.regex_rewrite.pattern),
                substitution=route.regex_rewrite.substitution,
            )
        )
    if route.host_rewrite is not None:
        action.host_rewrite_literal = route.host_rewrite
    if route.timeout is not None:
        action.timeout.CopyFrom(duration(route.timeout))
    if route.idle_timeout is not None:
        action.idle_timeout.CopyFrom(duration(route.idle_timeout))
    if route.retries is not None:
        r = route.retries
        policy = rc.RetryPolicy(
            retry_on=",".join(r.retry_on),
            num_retries=wrappers_pb2.UInt32Value(value=r.attempts),
            retriable_status_codes=r.retriable_status_codes,
        )
        if r.per_try_timeout is not None:
            policy.per_try_timeout.CopyFrom(duration(r.per_try_timeout))
        action.retry_policy.CopyFrom(policy)
    return action


def route_resource(route: Route) -> rc.Route:
    out = rc.Route(name=route.name, match=_match(route))
    if route.redirect is not None:
        r = route.redirect
        redirect = rc.RedirectAction(
            response_code=_REDIRECT_CODES[r.status], strip_query=r.strip_query
        )
        if r.scheme:
            redirect.scheme_redirect = r.scheme
        if r.host:
            redirect.host_redirect = r.host
        if r.port:
            redirect.port_redirect = r.port
        if r.path:
            redirect.path_redirect = r.path
        elif r.prefix_rewrite is not None:
            redirect.prefix_rewrite = r.prefix_rewrite
        out.redirect.CopyFrom(redirect)
    elif route.direct_response is not None:
        d = route.direct_response
        out.direct_response.status = d.status
        if d.body is not None:
            out.direct_response.body.inline_string = d.body
    elif route.aggregate is not None:
        out.route.CopyFrom(aggregate_action(route))
    else:
        out.route.CopyFrom(_forward(route))
    if route.request_headers is not None:
        out.request_headers_to_add.extend(_header_options(route.request_headers))
        out.request_headers_to_remove.extend(route.request_headers.remove)
    if route.response_headers is not None:
        out.response_headers_to_add.extend(_header_options(route.response_headers))
        out.response_headers_to_remove.extend(route.response_headers.remove)
    apply_traffic(out, route)
    return out


def with_slash_twin(message: rc.Route) -> list[rc.Route]:
    """The route, and the same route for its path with or without a trailing slash.

    Most backends serve ``/a/`` as ``/a`` (and a prefix ``/a/`` mounted app at ``/a``), so
    a route protecting ``/a`` must also catch ``/a/`` rather than let it fall through to a
    catch-all (ADR 0022): an exact ``/a`` also matches ``/a/``; a prefix ``/a/`` also
    matches exactly ``/a``. The twin comes right after its route, so it never goes ahead of
    a route that names its path itself (exact paths sort first, longer paths first).
    """
    m = message.match
    kind = m.WhichOneof("path_specifier")
    if kind == "path" and not m.path.endswith("/"):
        twin_path = m.path + "/"
    elif kind == "prefix" and len(m.prefix) > 1 and m.prefix.endswith("/"):
        twin_path = m.prefix[:-1]
    else:
        return [message]
    twin = rc.Route()
    twin.CopyFrom(message)
    twin.match.path = twin_path
    return [message, twin]


#: first route of every virtual host of a gateway refusing path parameters (ADR 0022):
#: ';' (or %3B) before the query, which many backends strip before routing (``/a;x`` read
#: as ``/a``, ``..;`` as ``..``), so the path Envoy matched would not be the one served
_PATH_PARAMS = field(
    3,
    rc.Route(
        name="gateway.path_parameters",
        match=rc.RouteMatch(safe_regex=regex(".*(;|%3[bB]).*")),
        direct_response=rc.DirectResponseAction(
            status=400,
            body=base_pb2.DataSource(inline_string="path parameters (;) are not accepted\n"),
        ),
    ).SerializeToString(deterministic=True),
)


def _guards(gateway: Gateway) -> bytes:
    """Routes ahead of every route of the gateway's virtual hosts."""
    return _PATH_PARAMS if gateway.path_semicolons == "reject" else b""


_VERSIONS = itertools.count()


class _Ordered:
    """Encoded routes kept in sort-key order, for one virtual host."""

    def __init__(self) -> None:
        self.keys: list[tuple[object, ...]] = []
        self.data: list[bytes] = []
        #: changes with every put/remove; unique across lists, so a stamp never repeats
        self.version = next(_VERSIONS)

    def put(self, key: tuple[object, ...], data: bytes) -> None:
        i = bisect.bisect_left(self.keys, key)  # type: ignore[type-var]
        self.keys.insert(i, key)
        self.data.insert(i, data)
        self.version = next(_VERSIONS)

    def remove(self, key: tuple[object, ...]) -> None:
        i = bisect.bisect_left(self.keys, key)  # type: ignore[type-var]
        del self.keys[i], self.data[i]
        self.version = next(_VERSIONS)

    def copy(self) -> _Ordered:
        out = _Ordered()
        out.keys, out.data = list(self.keys), list(self.data)
        return out


class _Shard:
    """The routes of one shard: catch-alls, and per host the routes naming it; ``long``
    names the routes keyed here (a shard without any goes, its short routes with it)."""

    def __init__(self) -> None:
        self.catch_all = _Ordered()
        self.hosts: dict[str, _Ordered] = {}
        self.names: set[str] = set()
        self.long: set[str] = set()


def _length_of(scope_key: str) -> int:
    """The key length a scope key was made with (its digits before the path)."""
    digits = len(scope_key) - len(scope_key.lstrip("0123456789"))
    return int(scope_key[:digits])


def _fold(text: str) -> str:
    """ASCII lower case, as scope keys are (translate/shard.py)."""
    return text.encode().lower().decode()


def _merged(a: _Ordered | None, b: _Ordered) -> bytes:
    """Two ordered route lists as one, in key order."""
    if a is None or not a.keys:
        return b"".join(b.data)
    first, second = zip(a.keys, a.data, strict=True), zip(b.keys, b.data, strict=True)
    pairs = heapq.merge(first, second)  # type: ignore[type-var]
    return b"".join(data for _, data in pairs)


def _place(shard: _Shard, route: Route, key: tuple[object, ...], data: bytes) -> None:
    if route.hosts:
        for host in route.hosts:
            shard.hosts.setdefault(host, _Ordered()).put(key, data)
    else:
        shard.catch_all.put(key, data)
    shard.names.add(route.name)


#: the four (identity, cors) pairs a route's flags can be, shared by every route
_FLAG_PAIRS = (((False, False), (False, True)), ((True, False), (True, True)))


class RouteTable:
    """One gateway's routes, encoded and ordered, updated by what changed.

    ``sync`` finds changed routes by object identity (policy objects are immutable and
    replaced on change), so a change to one of 10,000 routes encodes one route and moves
    a few list entries; assembling the RouteConfiguration is then a join of bytes.
    """

    def __init__(self) -> None:
        self._entries: dict[str, tuple[Route, tuple[object, ...], bytes]] = {}
        self._catch_all = _Ordered()  # routes without hosts
        self._hosts: dict[str, _Ordered] = {}  # host -> its routes and every catch-all
        self.clusters: Counter[str] = Counter()
        #: sets of JWT providers routes accept (one named requirement each)
        self.jwt_requirements: Counter[tuple[str, ...]] = Counter()
        self._context: RouteContext | None = None
        #: route -> its effective rate limit, for the routes that may be limited
        self.rate_limits: dict[str, RateLimit] = {}
        #: bumped whenever ``rate_limits`` changes (the filter config is cached on it)
        self.rate_limit_version = 0
        #: the gateway's rate-limit filter config, with the inputs it was built from
        self.rate_limit_cache: tuple[object, object] | None = None
        #: the quota filters' configs per unit, with the key they were built for
        self.quota_cache: dict[object, tuple[object, object]] = {}
        #: the quota filters in the gateway's chain when its routes were last encoded
        self.quota_units: frozenset[Per] = frozenset()
        #: routes whose effective rate limit applies the consumers' plans
        self.plan_limited = 0
        #: routes whose Envoy config reads the identity the gateway sets (authentication,
        #: rules, consumer templates or limits): the strip filter is on for the gateway
        self.identity_routes: int = 0
        #: routes with a CORS policy: the cors filter is in the chain
        self.cors_routes: int = 0
        self._flags: dict[str, tuple[bool, bool]] = {}
        #: routes per traffic feature (translate/traffic.py): which filters are needed
        self.features: Counter[str] = Counter()
        #: aggregate routes by name (they need the aggregation service and parts listener)
        self.aggregates: dict[str, Route] = {}
        #: routes per protocol feature (transcoding, grpc_web): their filters are in the chain
        self.protocols: Counter[str] = Counter()
        #: sharding (translate/shard.py): the figures it is decided on, the key length in
        #: use (None: one RouteConfiguration), the shards, and their last encodings
        self.shard_plan = ShardPlan()
        #: routes that switch on a filter the chain lists disabled
        self._needy: set[str] = set()
        self.shard_length: int | None = None
        #: key lengths whose shards are kept: the current one and any a draining listener uses
        self._lengths: set[int] = set()
        #: shards of every kept layout by scope key (the key starts with its length)
        self._shards: dict[str, _Shard] = {}
        #: per kept length, the short routes (literal shorter than it) by name, lower-cased
        #: literal first: they join every shard whose key their literal starts
        self._short: dict[int, dict[str, tuple[str, Route, tuple[object, ...], bytes]]] = {}
        self._shard_out: dict[str, tuple[tuple[object, ...], Encoded, tuple[str, ...]]] = {}

    @property
    def uses_plans(self) -> bool:
        """Whether plans and consumers matter to this gateway's rate limits."""
        return self.plan_limited > 0

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def sync(
        self,
        routes: Mapping[str, Route],
        context: RouteContext | None = None,
        changed: frozenset[str] | None = None,
    ) -> None:
        """Make the table hold ``routes``; ``changed`` (when known) limits the work to them."""
        context = context or NO_AUTH
        if context != self._context:  # e.g. the gateway's default auth: re-encode all
            for name in list(self._entries):
                self._remove(name)
            self._context = context
            changed = None
        if changed is None:
            for name in self._entries.keys() - routes.keys():
                self._remove(name)
            names: Iterable[str] = routes.keys()
        else:
            names = changed
        for name in names:
            route = routes.get(name)
            entry = self._entries.get(name)
            if entry is not None and entry[0] is route:
                continue
            if entry is not None:
                self._remove(name)
            if route is not None:
                with blame("route", name):
                    self._add(route)

    def _add(self, route: Route) -> None:
        assert self._context is not None
        key = sort_key(route)
        ctx = self._context
        policy = None
        base = route_resource(route)
        apply_protocols(base, route, ctx.protos)
        self.protocols.update(protocol_features(route))
        variants = route_variants(route, base, ctx)
        for variant in variants:
            apply_cors(variant, route, ctx)
            apply_aggregate(variant, route, ctx.aggregation_port)
            policy = apply_rate_limit(variant, route, ctx.rate_limit)
            if policy is not None:
                switch_on(variant, ctx.quota_units)
            configure_route(variant, route)
        variants = body_limit_variants(variants, route, ctx)
        needy = any(chain_disabled(name) for v in variants for name in v.typed_per_filter_config)
        if needy:  # never reached re-keyed (translate/shard.py)
            for variant in variants:
                variant.metadata.filter_metadata[FALLBACK_FILTER].CopyFrom(_REFUSE)
            self._needy.add(route.name)
        variants = [twin for variant in variants for twin in with_slash_twin(variant)]
        if policy is not None:
            self.rate_limits[route.name] = policy
            self.rate_limit_version += 1
            if uses_consumers(policy) and policy.use_plans:
                self.plan_limited += 1
        data = b"".join(field(3, v.SerializeToString(deterministic=True)) for v in variants)
        self._entries[route.name] = (route, key, data)
        identity = any(
            name in _IDENTITY_FILTERS or name.startswith(OIDC_PREFIX)
            for v in variants
            for name in v.typed_per_filter_config
        ) or any(marker in data for marker in _IDENTITY_MARKERS)
        cors = any(CORS_FILTER in v.typed_per_filter_config for v in variants)
        self._flags[route.name] = _FLAG_PAIRS[identity][cors]  # shared: no tuple per route
        self.identity_routes += identity
        self.cors_routes += cors
        self.shard_plan.add(literal(route), needy)
        if self._lengths:
            self._shard_put(route, key, data)
        if route.aggregate is not None:
            self.aggregates[route.name] = route
        self.clusters.update(route.clusters())
        self.clusters.update(edge_clusters(route))
        self.features.update(route_features(route))
        self.features.update(edge_features(route, ctx))
        self.features.update(login_features(effective_auth(route, ctx)))
        requirement = jwt_requirements(route, self._context)
        if requirement is not None:
            self.jwt_requirements[requirement] += 1
        if route.hosts:
            for host in route.hosts:
                if host not in self._hosts:
                    self._hosts[host] = self._catch_all.copy()
                self._hosts[host].put(key, data)
        else:
            self._catch_all.put(key, data)
            for ordered in self._hosts.values():
                ordered.put(key, data)

    def _remove(self, name: str) -> None:
        route, key, _ = self._entries.pop(name)
        identity, cors = self._flags.pop(name)
        self.identity_routes -= identity
        self.cors_routes -= cors
        needy = name in self._needy
        self._needy.discard(name)
        self.shard_plan.remove(literal(route), needy)
        if self._lengths:
            self._shard_drop(route, key)
        self.aggregates.pop(name, None)
        self.protocols.subtract(protocol_features(route))
        policy = self.rate_limits.pop(name, None)
        if policy is not None:
            self.rate_limit_version += 1
            if uses_consumers(policy) and policy.use_plans:
                self.plan_limited -= 1
        self.clusters.subtract(route.clusters())
        self.clusters.subtract(edge_clusters(route))
        for cluster in (*route.clusters(), *edge_clusters(route)):
            if self.clusters[cluster] <= 0:
                self.clusters.pop(cluster, None)
        self.features.subtract(route_features(route))
        assert self._context is not None
        self.features.subtract(edge_features(route, self._context))
        self.features.subtract(login_features(effective_auth(route, self._context)))
        requirement = jwt_requirements(route, self._context)
        if requirement is not None:
            self.jwt_requirements[requirement] -= 1
            if self.jwt_requirements[requirement] <= 0:
                del self.jwt_requirements[requirement]
        if route.hosts:
            for host in route.hosts:
                ordered = self._hosts[host]
                ordered.remove(key)
                if len(ordered.keys) == len(self._catch_all.keys):  # no route names it now
                    del self._hosts[host]
        else:
            self._catch_all.remove(key)
            for ordered in self._hosts.values():
                ordered.remove(key)

    # -- shards (translate/shard.py) -----------------------------------------------------

    def _shard_keys(self, route: Route) -> Iterator[tuple[int, str]]:
        """(length, key) of every shard holding this route in each layout kept: a long
        route's own shard; for a short route the fallback and every shard whose key its
        literal starts (translate/shard.py)."""
        lit = literal(route)
        if lit is None:
            return
        for length in self._lengths:
            if len(lit) >= length:
                yield length, scope_key(length, lit)
                continue
            yield length, fallback_key(length)
            start = f"{length}{_fold(lit)}"
            for skey, shard in self._shards.items():
                if shard.long and skey.startswith(start) and _length_of(skey) == length:
                    yield length, skey

    def _shard_put(self, route: Route, key: tuple[object, ...], data: bytes) -> None:
        lit = literal(route)
        for length, skey in list(self._shard_keys(route)):
            shard = self._shards.get(skey)
            if shard is None:
                shard = self._shards[skey] = _Shard()
            assert lit is not None
            if len(lit) >= length:
                if not shard.long:  # a new shard: the short routes its key starts with
                    for folded, other, other_key, other_data in self._short[length].values():
                        if skey.startswith(f"{length}{folded}"):
                            _place(shard, other, other_key, other_data)
                shard.long.add(route.name)
            else:
                self._short[length][route.name] = (_fold(lit), route, key, data)
            _place(shard, route, key, data)

    def _shard_drop(self, route: Route, key: tuple[object, ...]) -> None:
        for length, skey in list(self._shard_keys(route)):
            shard = self._shards[skey]
            if route.hosts:
                for host in route.hosts:
                    ordered = shard.hosts[host]
                    ordered.remove(key)
                    if not ordered.keys:
                        del shard.hosts[host]
            else:
                shard.catch_all.remove(key)
            shard.names.discard(route.name)
            shard.long.discard(route.name)
            self._short[length].pop(route.name, None)
            if not shard.long and not is_fallback(skey):
                del self._shards[skey]
                self._shard_out.pop(skey, None)

    def set_layouts(self, current: int | None, kept: Iterable[int | None] = ()) -> None:
        """Shard by ``current`` (None: one RouteConfiguration), and keep the shards of the
        ``kept`` lengths up to date too (layouts a draining listener still uses)."""
        self.shard_length = current
        wanted = {x for x in (current, *kept) if x is not None}
        if wanted == self._lengths:
            return
        for skey in [k for k in self._shards if _length_of(k) not in wanted]:
            del self._shards[skey]
            self._shard_out.pop(skey, None)
        for length in [n for n in self._short if n not in wanted]:
            del self._short[length]
        added = wanted - self._lengths
        self._lengths = wanted
        if added:
            lengths, self._lengths = self._lengths, added
            for length in added:
                self._short[length] = {}
                self._shards[fallback_key(length)] = _Shard()
            # long routes first, so each short route meets every shard it belongs to
            entries = sorted(
                self._entries.values(),
                key=lambda e: -len(literal(e[0]) or ""),
            )
            for route, key, data in entries:
                self._shard_put(route, key, data)
            self._lengths = lengths

    def encode_shards(
        self, gateway: Gateway, length: int
    ) -> dict[str, tuple[Encoded, tuple[str, ...]]]:
        """One RouteConfiguration per shard key of one layout, with the names of its routes;
        a shard whose routes (and the gateway's hosts) did not change keeps its previous
        object, so it is not sent again."""
        hosts = tuple(sorted(self._hosts))
        default = self._default_domains(gateway)
        out: dict[str, tuple[Encoded, tuple[str, ...]]] = {}
        for skey, shard in self._shards.items():
            if _length_of(skey) != length:
                continue
            stamp = (
                hosts,
                tuple(default),
                gateway.path_semicolons,
                shard.catch_all.version,
                tuple((h, o.version) for h, o in sorted(shard.hosts.items())),
            )
            cached = self._shard_out.get(skey)
            if cached is not None and cached[0] == stamp:
                out[skey] = cached[1:]
                continue
            name = shard_name(gateway.name, skey)
            parts = [field(1, name.encode())]
            guards = _guards(gateway)
            for host in hosts:
                body = guards + _merged(shard.hosts.get(host), shard.catch_all) + _NOT_FOUND
                parts.append(
                    field(2, _virtual_host(host, [host], body, _SHARD_VIRTUAL_HOST_DEFAULTS))
                )
            if default:
                body = guards + b"".join(shard.catch_all.data) + _NOT_FOUND
                parts.append(
                    field(
                        2,
                        _virtual_host(gateway.name, default, body, _SHARD_VIRTUAL_HOST_DEFAULTS),
                    )
                )
            parts.append(field(8, SCOPE_HEADER.encode()))
            encoded = Encoded(route_pb2.RouteConfiguration, b"".join(parts))
            names = tuple(sorted(shard.names))
            self._shard_out[skey] = (stamp, encoded, names)
            out[skey] = (encoded, names)
        return out

    def _default_domains(self, gateway: Gateway) -> list[str]:
        if gateway.hostnames:
            return [h for h in gateway.hostnames if h not in self._hosts]
        return ["*"]

    def encode(self, gateway: Gateway) -> Encoded:
        """Virtual hosts: one per host named by a route, plus one for the gateway's others.

        A route without ``hosts`` applies to every host, so it is in each virtual host;
        Envoy picks the most specific virtual host first, so host-specific routes always
        win over a catch-all for their host.
        """
        parts = [field(1, gateway.name.encode())]
        guards = _guards(gateway)
        defaults = (
            _IDENTITY_VIRTUAL_HOST_DEFAULTS if self.identity_routes else _VIRTUAL_HOST_DEFAULTS
        )
        for host in sorted(self._hosts):
            body = guards + b"".join(self._hosts[host].data) + _NOT_FOUND
            parts.append(field(2, _virtual_host(host, [host], body, defaults)))
        default_domains = self._default_domains(gateway)
        if default_domains:
            body = guards + b"".join(self._catch_all.data) + _NOT_FOUND
            parts.append(field(2, _virtual_host(gateway.name, default_domains, body, defaults)))
        return Encoded(route_pb2.RouteConfiguration, b"".join(parts))


def route_configuration(
    gateway: Gateway, routes: Iterable[Route], context: RouteContext | None = None
) -> Encoded:
    """The RouteConfiguration of a gateway with these routes (no state kept)."""
    table = RouteTable()
    table.sync({r.name: r for r in routes}, context or route_context(gateway, {}))
    return table.encode(gateway)


def _virtual_host(
    name: str, domains: list[str], routes: bytes, defaults: bytes = _VIRTUAL_HOST_DEFAULTS
) -> bytes:
    """VirtualHost: name (1), domains (2), routes (3, already encoded), then the per-filter
    defaults (15), in field order as deterministic serialisation writes them."""
    return (
        field(1, name.encode())
        + b"".join(field(2, d.encode()) for d in domains)
        + routes
        + defaults
    )

"""Route policy -> Envoy Route, and a gateway's routes -> one RouteConfiguration.

Each Route message depends only on its policy object, so it is built once per object
version and reused across revisions; a change to one of 10,000 routes rebuilds one message.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.type.matcher.v3 import regex_pb2
from google.protobuf import wrappers_pb2

from ..policy import Gateway, Route
from ..policy.route import HeaderOps
from .common import duration, regex, string_match
from .wire import Encoded, field

__all__ = ["RouteCache", "route_configuration", "route_resource", "sort_key"]

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
                    header=base_pb2.HeaderValue(key=key, value=mapping[key]), append_action=action
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
    else:
        out.route.CopyFrom(_forward(route))
    if route.request_headers is not None:
        out.request_headers_to_add.extend(_header_options(route.request_headers))
        out.request_headers_to_remove.extend(route.request_headers.remove)
    if route.response_headers is not None:
        out.response_headers_to_add.extend(_header_options(route.response_headers))
        out.response_headers_to_remove.extend(route.response_headers.remove)
    return out


class RouteCache:
    """Serialised routes by policy object identity: unchanged objects are not rebuilt."""

    def __init__(self) -> None:
        self._built: dict[str, tuple[Route, bytes, tuple[object, ...]]] = {}

    def get(self, route: Route) -> tuple[bytes, tuple[object, ...]]:
        """(the route as VirtualHost field 3, its sort key)."""
        hit = self._built.get(route.name)
        if hit is not None and hit[0] is route:
            return hit[1], hit[2]
        data = field(3, route_resource(route).SerializeToString(deterministic=True))
        key = sort_key(route)
        self._built[route.name] = (route, data, key)
        return data, key

    def forget(self, keep: Iterable[str]) -> None:
        alive = set(keep)
        for name in [n for n in self._built if n not in alive]:
            del self._built[name]


def route_configuration(
    gateway: Gateway, routes: Sequence[Route], cache: RouteCache | None = None
) -> Encoded:
    """Virtual hosts: one per host named by a route, plus one for the gateway's other hosts.

    A route without ``hosts`` applies to every host, so it is added to each virtual host;
    Envoy picks the most specific virtual host first, so host-specific routes always win
    over a catch-all for their host.
    """
    cache = cache or RouteCache()
    built = [(*cache.get(r)[::-1], r) for r in routes]  # (sort key, bytes, route)
    built.sort(key=lambda item: item[0])
    hosts = sorted({h for r in routes for h in r.hosts})
    parts = [field(1, gateway.name.encode())]
    for host in hosts:
        body = b"".join(data for _, data, r in built if not r.hosts or host in r.hosts)
        parts.append(field(2, _virtual_host(host, [host], body)))
    default_domains = (
        [h for h in gateway.hostnames if h not in hosts] if gateway.hostnames else ["*"]
    )
    if default_domains:
        body = b"".join(data for _, data, r in built if not r.hosts)
        parts.append(field(2, _virtual_host(gateway.name, default_domains, body)))
    return Encoded(route_pb2.RouteConfiguration, b"".join(parts))


def _virtual_host(name: str, domains: list[str], routes: bytes) -> bytes:
    """VirtualHost: name (1), domains (2), routes (3, already encoded)."""
    return field(1, name.encode()) + b"".join(field(2, d.encode()) for d in domains) + routes

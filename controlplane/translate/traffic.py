"""Traffic policy -> Envoy: hash keys, fault injection, header templates, query and body
changes, response caching and compression.

Each HTTP filter here is absent from a gateway none of whose routes uses it, so gateways
without these features keep the configuration they had. Filters that only some routes use
are listed *disabled* and turned on per route, so a route without the feature pays nothing.

Filters, in chain order (after authentication and rate limits, before the router):

* ``gateway.fault`` (fault): per-route delays and aborts.
* ``gateway.request_mutation`` (header_mutation): query-parameter changes and the cache-key
  header, before the cache so that the key sees them.
* ``gateway.compress.<algorithm>`` (compressor): before the cache, so cached responses are
  kept uncompressed and hits are compressed like misses.
* ``gateway.cache`` (cache_v2, in-memory ``simple_http_cache``); a miss is fetched by the
  cache itself from ``cache:<route>:<cluster>``, a copy of the route's cluster whose
  upstream filter adds the caching headers (see :func:`cache_cluster`).
* ``gateway.body_transform`` (lua): JSON body changes, nearest the router, so the cache
  keeps transformed responses.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2
from envoy.config.core.v3 import base_pb2, extension_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.common.matching.v3 import extension_matcher_pb2 as matching_pb2
from envoy.extensions.compression.brotli.compressor.v3 import brotli_pb2
from envoy.extensions.compression.gzip.compressor.v3 import gzip_pb2
from envoy.extensions.compression.zstd.compressor.v3 import zstd_pb2
from envoy.extensions.filters.common.fault.v3 import fault_pb2 as common_fault
from envoy.extensions.filters.common.matcher.action.v3 import skip_action_pb2 as skip_filter_pb2
from envoy.extensions.filters.http.cache_v2.v3 import cache_pb2
from envoy.extensions.filters.http.compressor.v3 import compressor_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.http.upstream_codec.v3 import upstream_codec_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.http.cache_v2.simple_http_cache.v3 import config_pb2 as simple_cache
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.matcher.v3 import http_inputs_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import struct_pb2, wrappers_pb2
from google.protobuf.message import Message
from xds.core.v3 import extension_pb2 as xds_extension_pb2
from xds.type.matcher.v3 import matcher_pb2 as xds_matcher_pb2
from xds.type.matcher.v3 import string_pb2 as xds_string_pb2

from ..policy import Gateway, Route
from ..policy.common import duration_ms
from ..policy.headers import GATEWAY_HEADER_PREFIX
from ..policy.reserved import cache_cluster_name
from ..policy.traffic import Compression, CompressionAlgorithm, header_template
from .auth import CONSUMER_HEADER, JWT_NAMESPACE, JWT_PAYLOAD
from .common import duration, pack
from .lua_json import body_script
from .view import GatewayView

__all__ = [
    "BODY_FILTER",
    "CACHE_FILTER",
    "CACHE_KEY_FILTER",
    "CACHE_KEY_HEADER",
    "CACHE_KEY_PARAM",
    "COMPRESS_PREFIX",
    "FAULT_FILTER",
    "MUTATION_FILTER",
    "apply_traffic",
    "cache_cluster",
    "cache_cluster_name",
    "cached_routes",
    "compressor",
    "envoy_header_value",
    "route_features",
]

FAULT_FILTER = "gateway.fault"
MUTATION_FILTER = "gateway.request_mutation"
CACHE_FILTER = "gateway.cache"
BODY_FILTER = "gateway.body_transform"
COMPRESS_PREFIX = "gateway.compress."
#: request header with a cached route's key: its cache generation and, if asked, the
#: consumer; set before the cache filter and removed before the request leaves Envoy
CACHE_KEY_HEADER = GATEWAY_HEADER_PREFIX + "cache-key"
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
#: query parameter the cache key is carried in: Envoy's cache keys on host, path and query
#: only, so ``gateway.cache_key`` appends the key header's value to the query
CACHE_KEY_PARAM = "gateway-cache-key"
CACHE_KEY_FILTER = "gateway.cache_key"
#: appends the cache-key header to the query; a client's own copies of the parameter
#: stay in front of it, so a key always ends with the caller's own identity
_CACHE_KEY_SCRIPT = """
local function escape(text)
  return (text:gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", c:byte()) end))
end
function envoy_on_request(handle)
  local headers = handle:headers()
  local key = headers:get("KEY_HEADER")
  if key == nil then return end
  local path = headers:get(":path")
  local sep = path:find("?", 1, true) and "&" or "?"
  headers:replace(":path", path .. sep .. "KEY_PARAM=" .. escape(key))
end
""".replace("KEY_HEADER", CACHE_KEY_HEADER).replace("KEY_PARAM", CACHE_KEY_PARAM)

_LIBRARIES: dict[CompressionAlgorithm, tuple[str, Message]] = {
    CompressionAlgorithm.gzip: ("envoy.compression.gzip.compressor", gzip_pb2.Gzip()),
    CompressionAlgorithm.brotli: ("envoy.compression.brotli.compressor", brotli_pb2.Brotli()),
    CompressionAlgorithm.zstd: ("envoy.compression.zstd.compressor", zstd_pb2.Zstd()),
}


# -- header values --------------------------------------------------------------------------


def envoy_header_value(value: str) -> str:
    """A policy header value as an Envoy header value: placeholders become substitution
    formatters and a literal ``%`` becomes ``%%`` (Envoy reads every ``%`` as a formatter)."""
    out = []
    for kind, text in header_template(value):
        if kind == "text":
            out.append(text.replace("%", "%%"))
        elif kind == "consumer":
            out.append(f"%REQ({CONSUMER_HEADER})%")
        elif kind == "header":
            out.append(f"%REQ({text})%")
        else:  # a JWT claim from the payload jwt_authn keeps in dynamic metadata
            path = ":".join([JWT_PAYLOAD, *text.split(".")])
            out.append(f"%DYNAMIC_METADATA({JWT_NAMESPACE}:{path})%")
    return "".join(out)


# -- which filters a gateway needs ----------------------------------------------------------


def route_features(route: Route) -> Iterator[str]:
    """The filters of this module a route needs (counted per gateway by the RouteTable)."""
    if route.fault is not None:
        yield FAULT_FILTER
    if route.request_query is not None or route.cache is not None:
        yield MUTATION_FILTER
    if route.cache is not None:
        yield CACHE_FILTER
    if route.request_body is not None or route.response_body is not None:
        yield BODY_FILTER
    if route.compression:
        yield "compression"


def fault_filter() -> fault_pb2.HTTPFault:
    return fault_pb2.HTTPFault()  # nothing by itself: routes carry their faults


def mutation_filter() -> header_mutation_pb2.HeaderMutation:
    """Removes client-sent cache-key headers first; a cached route then sets its own (route
    settings are applied after the filter's own, as the most specific)."""
    return header_mutation_pb2.HeaderMutation(
        mutations=header_mutation_pb2.Mutations(
            request_mutations=[mutation_rules_pb2.HeaderMutation(remove=CACHE_KEY_HEADER)]
        ),
        most_specific_header_mutations_wins=True,
    )


def cache_filter() -> matching_pb2.ExtensionWithMatcher:
    """The in-memory cache, skipped for requests without the gateway's cache-key header.

    The cache filter takes no per-route settings (Envoy refuses them, enabling included),
    so it runs only where ``gateway.request_mutation`` has set the key, i.e. on routes
    with a ``cache`` policy.
    """
    cache = cache_pb2.CacheV2Config(typed_config=pack(simple_cache.SimpleHttpCacheV2Config()))
    keyed = xds_matcher_pb2.Matcher.MatcherList.Predicate.SinglePredicate(
        input=xds_extension_pb2.TypedExtensionConfig(
            name="cache-key",
            typed_config=pack(
                http_inputs_pb2.HttpRequestHeaderMatchInput(header_name=CACHE_KEY_HEADER)
            ),
        ),
        value_match=xds_string_pb2.StringMatcher(prefix="g"),
    )
    skip = xds_matcher_pb2.Matcher.OnMatch(
        action=xds_extension_pb2.TypedExtensionConfig(
            name="skip", typed_config=pack(skip_filter_pb2.SkipFilter())
        )
    )
    predicate = xds_matcher_pb2.Matcher.MatcherList.Predicate
    return matching_pb2.ExtensionWithMatcher(
        extension_config=extension_pb2.TypedExtensionConfig(
            name=CACHE_FILTER, typed_config=pack(cache)
        ),
        xds_matcher=xds_matcher_pb2.Matcher(
            matcher_list=xds_matcher_pb2.Matcher.MatcherList(
                matchers=[
                    xds_matcher_pb2.Matcher.MatcherList.FieldMatcher(
                        predicate=predicate(not_matcher=predicate(single_predicate=keyed)),
                        on_match=skip,
                    )
                ]
            )
        ),
    )


def cache_key_filter() -> lua_pb2.Lua:
    return lua_pb2.Lua(default_source_code=base_pb2.DataSource(inline_string=_CACHE_KEY_SCRIPT))


def body_filter() -> lua_pb2.Lua:
    # routes bring their own scripts; the default does nothing
    return lua_pb2.Lua(default_source_code=base_pb2.DataSource(inline_string="-- per route\n"))


def compression_settings(gateway: Gateway) -> Compression:
    return gateway.compression or Compression()


def compressor(
    gateway: Gateway, routes_enable: bool, algorithm: CompressionAlgorithm
) -> compressor_pb2.Compressor | None:
    """The compressor for one algorithm, if the gateway (or one of its routes) uses it."""
    if gateway.compression is None and not routes_enable:
        return None
    settings = compression_settings(gateway)
    if algorithm not in settings.algorithms:
        return None
    library_name, library = _LIBRARIES[algorithm]
    return compressor_pb2.Compressor(
        compressor_library=extension_pb2.TypedExtensionConfig(
            name=library_name, typed_config=pack(library)
        ),
        response_direction_config=compressor_pb2.Compressor.ResponseDirectionConfig(
            common_config=compressor_pb2.Compressor.CommonDirectionConfig(
                min_content_length=wrappers_pb2.UInt32Value(value=settings.min_length),
                content_type=settings.content_types,
            )
        ),
        # the gateway's first algorithm wins when the client likes several equally
        choose_first=algorithm == settings.algorithms[0],
    )


# -- per route ------------------------------------------------------------------------------


def _percent(value: float) -> percent_pb2.FractionalPercent:
    return percent_pb2.FractionalPercent(
        numerator=round(value * 10_000), denominator=percent_pb2.FractionalPercent.MILLION
    )


def _fault(route: Route) -> fault_pb2.HTTPFault:
    assert route.fault is not None
    out = fault_pb2.HTTPFault()
    if route.fault.delay is not None:
        out.delay.CopyFrom(
            common_fault.FaultDelay(
                fixed_delay=duration(route.fault.delay.duration),
                percentage=_percent(route.fault.delay.percent),
            )
        )
    if route.fault.abort is not None:
        out.abort.CopyFrom(
            fault_pb2.FaultAbort(
                http_status=route.fault.abort.status, percentage=_percent(route.fault.abort.percent)
            )
        )
    return out


def _mutation(route: Route) -> header_mutation_pb2.HeaderMutationPerRoute:
    mutations = header_mutation_pb2.Mutations()
    q = route.request_query
    if q is not None:
        for name in q.remove:
            mutations.query_parameter_mutations.append(base_pb2.KeyValueMutation(remove=name))
        for mapping, action in (
            (q.set, base_pb2.KeyValueAppend.OVERWRITE_IF_EXISTS_OR_ADD),
            (q.add, base_pb2.KeyValueAppend.APPEND_IF_EXISTS_OR_ADD),
        ):
            for name in sorted(mapping):
                mutations.query_parameter_mutations.append(
                    base_pb2.KeyValueMutation(
                        append=base_pb2.KeyValueAppend(
                            record=base_pb2.KeyValuePair(
                                key=name, value=struct_pb2.Value(string_value=mapping[name])
                            ),
                            action=action,
                        )
                    )
                )
    if route.cache is not None:
        key = f"g{route.cache.generation}"
        if route.cache.per_consumer:
            key += f":%REQ({CONSUMER_HEADER})%"
        mutations.request_mutations.append(
            mutation_rules_pb2.HeaderMutation(
                append=base_pb2.HeaderValueOption(
                    header=base_pb2.HeaderValue(key=CACHE_KEY_HEADER, value=key),
                    append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
                )
            )
        )
    return header_mutation_pb2.HeaderMutationPerRoute(mutations=mutations)


def cached_routes(view: GatewayView, features: Counter[str]) -> list[Route]:
    """The gateway's routes with a cache policy (a scan only when there are some)."""
    if features[CACHE_FILTER] <= 0:
        return []
    return sorted((r for r in view.routes.values() if r.cache is not None), key=lambda r: r.name)


def _cache_headers(route: Route) -> header_mutation_pb2.HeaderMutation:
    """What a cached route's responses get before the cache sees them (the policy TTL);
    the cache key, as header and query parameter, does not reach the backend."""
    assert route.cache is not None
    response = []
    if route.cache.ttl is not None:
        seconds = max(1, duration_ms(route.cache.ttl) // 1000)
        response.append(
            mutation_rules_pb2.HeaderMutation(
                append=base_pb2.HeaderValueOption(
                    header=base_pb2.HeaderValue(key="cache-control", value=f"max-age={seconds}"),
                    append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
                    if route.cache.override
                    else base_pb2.HeaderValueOption.ADD_IF_ABSENT,
                )
            )
        )
    return header_mutation_pb2.HeaderMutation(
        mutations=header_mutation_pb2.Mutations(
            request_mutations=[mutation_rules_pb2.HeaderMutation(remove=CACHE_KEY_HEADER)],
            query_parameter_mutations=[base_pb2.KeyValueMutation(remove=CACHE_KEY_PARAM)],
            response_mutations=response,
        )
    )


def cache_cluster(base: cluster_pb2.Cluster, route: Route) -> cluster_pb2.Cluster:
    """The cluster a cached route sends to: its cluster plus an upstream filter that sets
    the caching headers.

    Envoy's cache filter fetches a miss itself, past the router's per-route header
    changes, so the only place between the backend and the cache that can still change
    the response is the cluster's upstream filter chain. The copy reads the same EDS
    assignment as the original (same service name).
    """
    out = cluster_pb2.Cluster()
    out.CopyFrom(base)
    out.name = cache_cluster_name(route.name, base.name)
    options = http_protocol_options_pb2.HttpProtocolOptions()
    existing = out.typed_extension_protocol_options.get(_HTTP_OPTIONS)
    if existing is not None:
        existing.Unpack(options)
    else:
        options.explicit_http_config.http_protocol_options.SetInParent()
    options.http_filters.extend(
        [
            hcm_pb2.HttpFilter(
                name="gateway.cache_headers", typed_config=pack(_cache_headers(route))
            ),
            hcm_pb2.HttpFilter(
                name="envoy.filters.http.upstream_codec",
                typed_config=pack(upstream_codec_pb2.UpstreamCodec()),
            ),
        ]
    )
    out.typed_extension_protocol_options[_HTTP_OPTIONS].CopyFrom(pack(options))
    return out


def _hash_policy(route: Route) -> list[rc.RouteAction.HashPolicy]:
    out = []
    for key in route.hash_on:
        policy = rc.RouteAction.HashPolicy()
        if key.header is not None:
            policy.header.header_name = key.header
        elif key.cookie is not None:
            policy.cookie.name = key.cookie.name
            if key.cookie.ttl is not None:
                policy.cookie.ttl.CopyFrom(duration(key.cookie.ttl))
            if key.cookie.path is not None:
                policy.cookie.path = key.cookie.path
        elif key.source_ip:
            policy.connection_properties.source_ip = True
        else:
            policy.query_parameter.name = key.query_parameter or ""
        out.append(policy)
    return out


def apply_traffic(message: rc.Route, route: Route) -> None:
    """Per-route settings of this module's filters, and hash keys on the route action."""
    per = message.typed_per_filter_config
    if route.hash_on and message.HasField("route"):
        message.route.hash_policy.extend(_hash_policy(route))
    if route.fault is not None:
        per[FAULT_FILTER].CopyFrom(pack(_fault(route)))
    if route.request_query is not None or route.cache is not None:
        per[MUTATION_FILTER].CopyFrom(pack(_mutation(route)))
    if route.cache is not None and message.HasField("route"):
        action = message.route
        if action.cluster:
            action.cluster = cache_cluster_name(route.name, action.cluster)
        for weighted in action.weighted_clusters.clusters:
            weighted.name = cache_cluster_name(route.name, weighted.name)
    if route.request_body is not None or route.response_body is not None:
        script = body_script(route.request_body, route.response_body)
        per[BODY_FILTER].CopyFrom(
            pack(lua_pb2.LuaPerRoute(source_code=base_pb2.DataSource(inline_string=script)))
        )
    if route.compression is not None:
        for algorithm in CompressionAlgorithm:
            name = COMPRESS_PREFIX + algorithm.value
            if route.compression:  # a route config turns on a filter that is off by default
                per[name].CopyFrom(
                    pack(
                        compressor_pb2.CompressorPerRoute(
                            overrides=compressor_pb2.CompressorOverrides()
                        )
                    )
                )
            else:
                per[name].CopyFrom(pack(compressor_pb2.CompressorPerRoute(disabled=True)))

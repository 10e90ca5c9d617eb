"""Authentication and authorisation at the edge: JWT, API keys, rules, consumer identity.

Everything is enforced by Envoy filters; nothing calls into Python per request.

* ``gateway.strip_identity`` (header_mutation) removes client-sent copies of the identity
  headers first, so only the gateway can set ``x-consumer-id`` and claim headers.
* ``gateway.jwt_authn`` checks tokens; the consumer claim becomes ``x-consumer-id``.
* ``gateway.api_key_auth`` checks ``x-api-key`` and passes the key's consumer (and expiry)
  to ``gateway.api_key_expiry`` in an internal header; the key is not forwarded.
* ``gateway.api_key_expiry`` (Lua) refuses a key past its expiry by Envoy's own clock, so an
  expired key stops working even while the controller is down, and sets ``x-consumer-id``.
* ``gateway.rbac`` applies per-route rules (scopes, claims, consumers, groups) -> 403.

Filter configs that depend on policy objects (providers, keys) are delivered over ECDS, so a
revoked key or a new provider changes no listener: connections stay open and the next
request sees the change. A route accepting *either* credential becomes two Envoy routes:
one for requests carrying ``x-api-key`` (API key required), one for the rest (JWT required).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2
from envoy.config.core.v3 import base_pb2, http_uri_pb2
from envoy.config.rbac.v3 import rbac_pb2 as rbac_config
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.api_key_auth.v3 import api_key_auth_pb2 as apikey
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter
from envoy.type.matcher.v3 import metadata_pb2, regex_pb2, string_pb2, value_pb2
from google.protobuf import any_pb2

from ..policy import ApiKey, AuthPolicy, Consumer, Gateway, JwtProvider, Route
from ..policy.cors import CorsPolicy
from ..policy.headers import API_KEY_HEADER, CONSUMER_HEADER
from ..policy.proto import Proto
from ..policy.ratelimit import Per, RateLimit
from ..policy.reserved import jwks_cluster_name
from .cluster import url_cluster
from .common import duration, pack
from .oidc import enable_login
from .view import GatewayView

__all__ = [
    "API_KEY_FILTER",
    "CONSUMER_HEADER",
    "DENIED_CLAIM",
    "DENIED_CONSUMER",
    "DENIED_SCOPE",
    "JWT_FILTER",
    "KEY_CLIENT_HEADER",
    "KEY_EXPIRY_FILTER",
    "KEY_EXPIRY_SWITCH",
    "RBAC_FILTER",
    "STRIP_FILTER",
    "RouteContext",
    "api_key_filter",
    "jwks_clusters",
    "jwt_filter",
    "key_expiry_filter",
    "keys_expire",
    "rbac_filter_config",
    "route_context",
    "route_variants",
    "strip_filter",
    "strip_on",
]

STRIP_FILTER = "gateway.strip_identity"
JWT_FILTER = "gateway.jwt_authn"
API_KEY_FILTER = "gateway.api_key_auth"
KEY_EXPIRY_FILTER = "gateway.api_key_expiry"
RBAC_FILTER = "gateway.rbac"
#: names of the route rules' RBAC policies: prefix + the scope or claim; the 403 body names
#: the policy that refused a request
DENIED_SCOPE = "scope:"
DENIED_CLAIM = "claim:"
DENIED_CONSUMER = "consumer"
#: where api_key_auth puts the key's client ("<consumer>" or "<consumer> <expiry, epoch s>")
#: for the expiry check; removed from client requests and never forwarded (a reserved
#: ``x-gateway-`` name, policy/headers.py)
KEY_CLIENT_HEADER = "x-gateway-key-client"
JWT_NAMESPACE = "envoy.filters.http.jwt_authn"
JWT_PAYLOAD = "jwt_payload"


@dataclass(frozen=True)
class RouteContext:
    """What a route's translation depends on besides the route itself.

    Route encodings are cached per route object; when this context changes (a gateway
    default, group membership), the gateway's routes are re-encoded.
    """

    default: AuthPolicy | None
    groups: tuple[tuple[str, tuple[str, ...]], ...]  # group -> consumers, sorted
    cors: CorsPolicy | None = None  # the gateway's CORS policy
    rate_limit: RateLimit | None = None  # the gateway's default rate limit
    aggregation_port: int = 0  # the gateway's parts listener, named by aggregate routes
    #: proto name -> proto, only for gateways with a transcoding route
    protos: tuple[tuple[str, Proto], ...] = ()
    #: where the gateway's clients send API keys (Gateway.api_key_header/api_key_query)
    api_key_header: str = API_KEY_HEADER
    api_key_query: str | None = None
    #: the gateway's default request body limit (translate/edge.py)
    max_request_body: int | None = None
    #: some usable key of the gateway expires: keyed routes run the expiry check (Lua);
    #: without one the key filter hands the consumer straight to x-consumer-id (ADR 0045)
    key_expiry: bool = True
    #: OpenID provider -> the origin its logins return to, where one is configured
    #: (translate/oidc.py)
    login_origins: tuple[tuple[str, str], ...] = ()
    #: units some route of the gateway counts through the quota service: limited routes
    #: switch those filters on (translate/quota.py)
    quota_units: frozenset[Per] = frozenset()

    def members(self, group: str) -> tuple[str, ...]:
        return dict(self.groups).get(group, ())


def route_context(gateway: Gateway, consumers: Mapping[str, Consumer]) -> RouteContext:
    groups: dict[str, list[str]] = {}
    for consumer in consumers.values():
        for group in consumer.groups:
            groups.setdefault(group, []).append(consumer.name)
    return RouteContext(
        gateway.auth,
        tuple(sorted((g, tuple(sorted(m))) for g, m in groups.items())),
        gateway.cors,
        api_key_header=gateway.api_key_header,
        api_key_query=gateway.api_key_query,
        max_request_body=gateway.max_request_body,
    )


def _objects(view: GatewayView, kind: str) -> Mapping[str, object]:
    return view.objects.get(kind, {})


def _providers(view: GatewayView) -> list[JwtProvider]:
    providers = cast(Mapping[str, JwtProvider], _objects(view, "jwt_provider"))
    return sorted(providers.values(), key=lambda p: p.name)


# -- gateway-level filter configs (delivered over ECDS) -------------------------------------


def strip_filter(view: GatewayView) -> header_mutation_pb2.HeaderMutation:
    """Client-sent copies of every header the gateway sets as identity. Other spellings of
    them (``x_consumer_id``) never get this far: the listener refuses (or drops) header
    names with underscores, and Envoy compares names without case."""
    headers = {CONSUMER_HEADER, KEY_CLIENT_HEADER}
    for provider in _providers(view):
        headers.update(provider.claims_to_headers.values())
    return header_mutation_pb2.HeaderMutation(
        mutations=header_mutation_pb2.Mutations(
            request_mutations=[mutation_rules_pb2.HeaderMutation(remove=h) for h in sorted(headers)]
        )
    )


def _jwks_cluster_name(provider: JwtProvider) -> str:
    return jwks_cluster_name(provider.name)


def _provider(provider: JwtProvider) -> jwt.JwtProvider:
    out = jwt.JwtProvider(
        issuer=provider.issuer,
        audiences=provider.audiences,
        forward=provider.forward_token,
        require_expiration=not provider.allow_missing_exp,
        clock_skew_seconds=max(1, int(duration(provider.clock_skew).seconds)),
        payload_in_metadata=JWT_PAYLOAD,
        from_headers=[jwt.JwtHeader(name=h.name, value_prefix=h.prefix) for h in provider.headers],
        from_params=provider.query_params,
        from_cookies=provider.cookies,
        claim_to_headers=[
            jwt.JwtClaimToHeader(header_name=CONSUMER_HEADER, claim_name=provider.consumer_claim)
        ]
        + [
            jwt.JwtClaimToHeader(header_name=header, claim_name=claim)
            for claim, header in sorted(provider.claims_to_headers.items())
        ],
        jwt_cache_config=jwt.JwtCacheConfig(jwt_cache_size=1000),
    )
    if provider.jwks is not None:
        out.local_jwks.inline_string = provider.jwks
    else:
        out.remote_jwks.CopyFrom(
            jwt.RemoteJwks(
                http_uri=http_uri_pb2.HttpUri(
                    uri=provider.jwks_uri,
                    cluster=_jwks_cluster_name(provider),
                    timeout=duration(provider.jwks_fetch_timeout),
                ),
                cache_duration=duration(provider.jwks_cache_duration),
                async_fetch=jwt.JwksAsyncFetch(),
            )
        )
    return out


def jwt_filter(view: GatewayView, requirements: list[tuple[str, ...]]) -> jwt.JwtAuthentication:
    """Every provider, and one named requirement per set of providers routes accept."""
    config = jwt.JwtAuthentication(
        providers={p.name: _provider(p) for p in _providers(view)},
        # A real preflight on a route with a CORS policy is answered by the cors filter
        # before this one; anything preflight-shaped that reaches here is authenticated
        # like any request (no CORS policy, an origin not allowed).
        bypass_cors_preflight=False,
    )
    for names in requirements:
        config.requirement_map[_requirement_name(names)].CopyFrom(_requirement(names))
    return config


def _requirement_name(providers: tuple[str, ...]) -> str:
    return "any:" + ",".join(providers)


def _requirement(providers: tuple[str, ...]) -> jwt.JwtRequirement:
    if len(providers) == 1:
        return jwt.JwtRequirement(provider_name=providers[0])
    return jwt.JwtRequirement(
        requires_any=jwt.JwtRequirementOrList(
            requirements=[jwt.JwtRequirement(provider_name=p) for p in providers]
        )
    )


def api_key_filter(view: GatewayView, now: datetime | None = None) -> apikey.ApiKeyAuth:
    """Every usable key with its consumer; expired and revoked keys are simply absent.
    The consumer goes to the expiry check's header when some key expires, else straight to
    x-consumer-id (as the keyed routes' own settings say, ``_configure``)."""
    now = now or datetime.now(UTC)
    stored = cast(Mapping[str, ApiKey], _objects(view, "api_key"))
    keys = sorted((k for k in stored.values() if k.usable(now)), key=lambda k: k.name)
    expiring = any(k.expires_at is not None for k in keys)
    return apikey.ApiKeyAuth(
        credentials=[apikey.Credential(key=k.key or "", client=key_client(k)) for k in keys],
        key_sources=key_sources(view.gateway),
        forwarding=_API_KEY_ROUTE.forwarding if expiring else _API_KEY_DIRECT.forwarding,
    )


def keys_expire(objects: Mapping[str, object], now: datetime | None = None) -> bool:
    """Whether some usable key expires (the keyed routes then run the expiry check)."""
    now = now or datetime.now(UTC)
    return any(
        isinstance(k, ApiKey) and k.usable(now) and k.expires_at is not None
        for k in objects.values()
    )


def key_sources(gateway: Gateway) -> list[apikey.KeySource]:
    """The header, then the query parameter (when the gateway has one), in Envoy's order of
    lookup; ``hide_credentials`` removes whichever carried the key before the backend."""
    sources = [apikey.KeySource(header=gateway.api_key_header)]
    if gateway.api_key_query is not None:
        sources.append(apikey.KeySource(query=gateway.api_key_query))
    return sources


def key_client(key: ApiKey) -> str:
    """The client api_key_auth forwards for a key: its consumer, and the second from which
    it is refused at the edge (whole seconds, rounded down: never accepted late)."""
    if key.expires_at is None:
        return key.consumer
    return f"{key.consumer} {int(key.expires_at.timestamp())}"


#: Runs after api_key_auth where a route accepts keys. Keys without expiry cost a header
#: lookup and a pattern match; os.time() is Envoy's wall clock (ADR 0022).
_EXPIRY_LUA = f"""
function envoy_on_request(handle)
  local headers = handle:headers()
  local client = headers:get("{KEY_CLIENT_HEADER}")
  if client == nil then
    return
  end
  headers:remove("{KEY_CLIENT_HEADER}")
  local consumer, expires = string.match(client, "^(%S+) (%d+)$")
  if consumer == nil then
    consumer = client
  elseif os.time() >= tonumber(expires) then
    handle:respond(
      {{[":status"] = "401", ["www-authenticate"] = 'ApiKey realm="gateway", error="expired"'}},
      "API key expired\\n")
    return
  end
  headers:replace("{CONSUMER_HEADER}", consumer)
end
"""


_EXPIRY_SOURCE = "key_expiry"
#: the snapshot's name for "the keyed routes run the expiry check" (Resources.route_switches):
#: the first key that expires must reach a proxy's routes before its credentials do, or the
#: backend gets "<consumer> <expiry>" as the consumer with the expiry unchecked; the last
#: one must leave the credentials first, or the routes forward that pair unchecked
KEY_EXPIRY_SWITCH = "key_expiry"


def key_expiry_filter() -> lua_pb2.Lua:
    """The script is named, not the default: a route runs it by naming it (below)."""
    return lua_pb2.Lua(
        source_codes={_EXPIRY_SOURCE: base_pb2.DataSource(inline_string=_EXPIRY_LUA)}
    )


def next_key_expiry(objects: Mapping[str, object], now: datetime) -> datetime | None:
    """When the next still-valid key expires: the runner rebuilds then."""
    pending = [
        k.expires_at  # type: ignore[attr-defined]
        for k in objects.values()
        if isinstance(k, ApiKey) and k.usable(now) and k.expires_at is not None
    ]
    return min(pending) if pending else None


def rbac_filter_config(_view: GatewayView) -> rbac_filter.RBAC:
    """No gateway-wide rules: routes carry their own (an RBAC without rules allows all)."""
    return rbac_filter.RBAC()


def jwks_clusters(view: GatewayView) -> list[cluster_pb2.Cluster]:
    """One cluster per remote JWKS host, TLS (system CAs, SNI) for https URIs."""
    return [
        url_cluster(_jwks_cluster_name(p), p.jwks_uri, p.jwks_fetch_timeout)
        for p in _providers(view)
        if p.jwks_uri is not None
    ]


# -- per-route ------------------------------------------------------------------------------


_API_KEY_ROUTE = apikey.ApiKeyAuthPerRoute(
    forwarding=apikey.Forwarding(header=KEY_CLIENT_HEADER, hide_credentials=True)
)
#: no key expires: the consumer straight to x-consumer-id, no expiry check to run (the
#: strip filter removed any client copy first)
_API_KEY_DIRECT = apikey.ApiKeyAuthPerRoute(
    forwarding=apikey.Forwarding(header=CONSUMER_HEADER, hide_credentials=True)
)
#: turns the expiry check (off in the chain) on for a route that accepts keys
_KEY_EXPIRY_ROUTE = lua_pb2.LuaPerRoute(name="key_expiry")


def effective_auth(route: Route, context: RouteContext) -> AuthPolicy | None:
    return route.auth if route.auth is not None else context.default


def jwt_requirements(route: Route, context: RouteContext) -> tuple[str, ...] | None:
    auth = effective_auth(route, context)
    return tuple(sorted(auth.jwt)) if auth is not None and auth.jwt else None


def _string(value: str) -> value_pb2.ValueMatcher:
    return value_pb2.ValueMatcher(string_match=string_pb2.StringMatcher(exact=value))


def _claim(claim: str, matcher: value_pb2.ValueMatcher) -> rbac_config.Principal:
    """A claim of the verified token, read from jwt_authn's dynamic metadata
    (``sourced_metadata``: ``Principal.metadata`` is deprecated)."""
    return rbac_config.Principal(
        sourced_metadata=rbac_config.SourcedMetadata(
            metadata_matcher=metadata_pb2.MetadataMatcher(
                filter=JWT_NAMESPACE,
                path=[
                    metadata_pb2.MetadataMatcher.PathSegment(key=JWT_PAYLOAD),
                    metadata_pb2.MetadataMatcher.PathSegment(key=claim),
                ],
                value=matcher,
            ),
            metadata_source=rbac_config.MetadataSource.DYNAMIC,
        )
    )


def _scope(scope: str) -> rbac_config.Principal:
    """``scope`` as a space-separated string (RFC 8693) or ``scp`` as a list."""
    word = "(^|.* )" + _re_escape(scope) + "( .*|$)"
    as_string = _claim(
        "scope",
        value_pb2.ValueMatcher(
            string_match=string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=word))
        ),
    )
    as_list = _claim(
        "scp", value_pb2.ValueMatcher(list_match=value_pb2.ListMatcher(one_of=_string(scope)))
    )
    return rbac_config.Principal(or_ids=rbac_config.Principal.Set(ids=[as_string, as_list]))


def _re_escape(text: str) -> str:
    return "".join("\\" + c if not c.isalnum() and c not in "_-:/" else c for c in text)


def _consumer_is(names: list[str]) -> rbac_config.Principal:
    return rbac_config.Principal(
        or_ids=rbac_config.Principal.Set(
            ids=[
                rbac_config.Principal(
                    header=rc.HeaderMatcher(
                        name=CONSUMER_HEADER, string_match=string_pb2.StringMatcher(exact=n)
                    )
                )
                for n in names
            ]
        )
    )


def _rules(auth: AuthPolicy, context: RouteContext, via_jwt: bool) -> rbac_filter.RBACPerRoute:
    """One DENY policy per requirement, named after it (``scope:NAME``, ``claim:NAME``,
    ``consumer``): a request is refused when any requirement is unmet, and Envoy reports
    the (first, by name) policy that refused it, so the 403 can say which requirement
    failed (listener.py, ``forbidden_replies``) without echoing anything from the token."""
    policies: dict[str, rbac_config.Principal] = {}
    if via_jwt:
        for scope in auth.scopes:
            policies[f"{DENIED_SCOPE}{scope}"] = _scope(scope)
        for claim, values in sorted(auth.claims.items()):
            policies[f"{DENIED_CLAIM}{claim}"] = rbac_config.Principal(
                or_ids=rbac_config.Principal.Set(ids=[_claim(claim, _string(v)) for v in values])
            )
    allowed = _allowed_consumers(auth, context)
    if allowed is not None:
        policies[DENIED_CONSUMER] = (
            _consumer_is(allowed)
            if allowed
            else rbac_config.Principal(not_id=rbac_config.Principal(any=True))
        )
    return rbac_filter.RBACPerRoute(
        rbac=rbac_filter.RBAC(
            rules=rbac_config.RBAC(
                action=rbac_config.RBAC.DENY,
                policies={
                    name: rbac_config.Policy(
                        permissions=[rbac_config.Permission(any=True)],
                        principals=[rbac_config.Principal(not_id=met)],
                    )
                    for name, met in policies.items()
                },
            )
        )
    )


def _allowed_consumers(auth: AuthPolicy, context: RouteContext) -> list[str] | None:
    """None: anyone authenticated; otherwise the listed consumers plus the groups' members."""
    if not auth.consumers and not auth.groups:
        return None
    names = set(auth.consumers)
    for group in auth.groups:
        names.update(context.members(group))
    return sorted(names)


def not_found_route() -> rc.Route:
    """The last route of every virtual host: a plain 404 that asks for no credentials.

    Without it a request matching no route would meet the filters' gateway-wide settings
    (an API key demanded) instead of the virtual host's, and get 401 instead of 404.
    """
    return rc.Route(
        name="gateway.not_found",
        match=rc.RouteMatch(prefix="/"),
        direct_response=rc.DirectResponseAction(status=404),
    )


def strip_on() -> rc.FilterConfig:
    """Switches the strip filter (listed disabled) on: its own mutations apply, the empty
    per-route settings add none (Envoy wants a config to switch a filter on)."""
    return rc.FilterConfig(config=pack(header_mutation_pb2.HeaderMutationPerRoute()))


def virtual_host_defaults() -> dict[str, any_pb2.Any]:
    """Per-filter settings of every virtual host: the API-key filter is off unless a route
    turns it on."""
    return {API_KEY_FILTER: pack(rc.FilterConfig(disabled=True))}


def route_variants(route: Route, message: rc.Route, context: RouteContext) -> list[rc.Route]:
    """The Envoy route(s) for one policy route, with per-filter settings for its auth."""
    auth = effective_auth(route, context)
    if auth is None or auth.public:
        _configure(message, jwt_req=None, api_key=False, rules=None)
        return [message]
    if auth.oidc is not None:  # a browser login stands alone (policy/auth.py)
        enable_login(message, auth, dict(context.login_origins).get(auth.oidc))
        return [message]
    rules = auth if auth.has_rules else None
    if auth.jwt and auth.api_key:
        # a request carrying a key (in the header, or the query parameter) is checked as a
        # keyed request; any other needs a JWT
        keyed = rc.Route()
        keyed.CopyFrom(message)
        keyed.match.headers.append(
            rc.HeaderMatcher(name=context.api_key_header, present_match=True)
        )
        _configure(keyed, jwt_req=None, api_key=True, rules=rules, context=context)
        variants = [keyed]
        if context.api_key_query is not None:
            by_query = rc.Route()
            by_query.CopyFrom(message)
            by_query.match.query_parameters.append(
                rc.QueryParameterMatcher(name=context.api_key_query, present_match=True)
            )
            _configure(by_query, jwt_req=None, api_key=True, rules=rules, context=context)
            variants.append(by_query)
        _configure(
            message, jwt_req=tuple(sorted(auth.jwt)), api_key=False, rules=rules, context=context
        )
        return [*variants, message]
    _configure(
        message,
        jwt_req=tuple(sorted(auth.jwt)) if auth.jwt else None,
        api_key=auth.api_key,
        rules=rules,
        context=context,
    )
    return [message]


def _configure(
    message: rc.Route,
    *,
    jwt_req: tuple[str, ...] | None,
    api_key: bool,
    rules: AuthPolicy | None,
    context: RouteContext | None = None,
) -> None:
    # Only protected routes carry settings: jwt_authn passes requests whose route names no
    # requirement, and the API-key filter is off at the virtual host (VIRTUAL_HOST_DEFAULTS).
    # A 10,000-route configuration without auth stays as small as without these filters.
    per = message.typed_per_filter_config
    if jwt_req is not None:
        per[JWT_FILTER].CopyFrom(
            pack(jwt.PerRouteConfig(requirement_name=_requirement_name(jwt_req)))
        )
    if api_key:  # a route's settings replace the filter's: forwarding is repeated
        if context is None or context.key_expiry:
            per[API_KEY_FILTER].CopyFrom(pack(_API_KEY_ROUTE))
            per[KEY_EXPIRY_FILTER].CopyFrom(pack(_KEY_EXPIRY_ROUTE))
        else:
            per[API_KEY_FILTER].CopyFrom(pack(_API_KEY_DIRECT))
    if rules is not None and context is not None:
        per[RBAC_FILTER].CopyFrom(pack(_rules(rules, context, via_jwt=jwt_req is not None)))

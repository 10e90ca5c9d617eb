"""``gateway|cluster|route add|list|get|update|delete``.

Each kind declares its options once, as a function returning the fields the user set; ``add``
validates them as a new object, ``update`` merges them into the stored one inside the write
transaction (so two concurrent updates of different fields both land).
"""

import inspect
import sys
from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer

from ..errors import PolicyInvalid
from .context import ctx_of, finish_atomic, finish_change, finish_remote
from .edge import consumer_edge_fields, gateway_edge_fields, route_edge_fields
from .options import pairs as _pairs
from .output import Format, emit, emit_table
from .protocol_options import protocol_fields
from .traffic import cluster_traffic_fields, gateway_traffic_fields, route_traffic_fields

__all__ = ["register_resources"]

WaitOption = Annotated[
    str | None,
    typer.Option(
        "--wait",
        metavar="[TIMEOUT]",
        help="Return once every proxy of the affected gateways runs the change (default 30s).",
    ),
]

AtomicOption = Annotated[
    bool,
    typer.Option(
        "--atomic",
        help="Wait for the proxies (--wait, default 30s); if one rejects the change or does "
        "not run it in time, write the previous values back as a new revision and exit 7.",
    ),
]

ExpectRevisionOption = Annotated[
    int | None,
    typer.Option(
        "--expect-revision",
        metavar="N",
        help="Refuse (exit 4, nothing written) unless the policy is still at revision N.",
    ),
]


def _atomic_query(atomic: bool, wait: str | None) -> tuple[dict[str, Any], str | None, int]:
    """``--atomic`` through the admin API: ``atomic=true`` and the wait the local command
    uses (``--wait``, default 30s); the server restores the previous values if a proxy
    rejects the change. Returns (query, wait, wait rounds for the read timeout)."""
    if not atomic:
        return {}, wait, 1
    return {"atomic": True}, wait or "30s", 2


def _condition(item: str, option: str, allow_prefix: bool) -> dict[str, Any]:
    """``name=value`` exact, ``name~regex``, ``name^=prefix``, or ``name`` present."""
    if "^=" in item and allow_prefix:
        name, value = item.split("^=", 1)
        return {"name": name, "prefix": value}
    for sep, field in (("=", "exact"), ("~", "regex")):
        if sep in item:
            name, value = item.split(sep, 1)
            if not name:
                raise PolicyInvalid(f"{option}: {item!r} has no name")
            return {"name": name, field: value}
    return {"name": item, "present": True}


def _set(out: dict[str, Any], key: str, value: Any) -> None:
    if value is not None and value != []:
        out[key] = value


# -- per-kind options ---------------------------------------------------------------------


def gateway_fields(
    port: Annotated[int | None, typer.Option(help="Listener port (1-65535).")] = None,
    address: Annotated[str | None, typer.Option(help="Listener IP address [0.0.0.0].")] = None,
    hostname: Annotated[
        list[str] | None, typer.Option(help="Host name served (repeatable; default any).")
    ] = None,
    tls_cert: Annotated[
        list[str] | None,
        typer.Option(help="Serve HTTPS with this certificate (repeatable; first = default)."),
    ] = None,
    http_redirect_port: Annotated[
        int | None, typer.Option(help="Also redirect plain HTTP on this port to HTTPS.")
    ] = None,
    aggregation_port: Annotated[
        int | None,
        typer.Option(help="Internal port aggregate routes call their parts through [18081]."),
    ] = None,
    escaped_slashes: Annotated[
        str | None,
        typer.Option(help="Paths with %2F/%5C: redirect (to the decoded path) or reject."),
    ] = None,
    path_semicolons: Annotated[
        str | None, typer.Option(help="Paths with ';' (path parameters): reject or allow.")
    ] = None,
    underscore_headers: Annotated[
        str | None, typer.Option(help="Header names with '_': reject (400) or drop.")
    ] = None,
    rate_limit_mode: Annotated[
        str | None,
        typer.Option(
            help="Minute/hour budgets across the gateway's Envoys: local (budget / Envoys) "
            "or shared (leased by the controller's quota service) [local]."
        ),
    ] = None,
    api_key_header: Annotated[
        str | None, typer.Option(help="Header clients send API keys in [x-api-key].")
    ] = None,
    api_key_query: Annotated[
        str | None,
        typer.Option(help="Also accept API keys in this query parameter (removed upstream)."),
    ] = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    _set(out, "api_key_header", api_key_header)
    _set(out, "api_key_query", api_key_query)
    _set(out, "port", port)
    _set(out, "escaped_slashes", escaped_slashes)
    _set(out, "path_semicolons", path_semicolons)
    _set(out, "underscore_headers", underscore_headers)
    _set(out, "rate_limit_mode", rate_limit_mode)
    _set(out, "aggregation_port", aggregation_port)
    _set(out, "address", address)
    _set(out, "hostnames", hostname)
    tls: dict[str, Any] = {}
    _set(tls, "certificates", tls_cert)
    _set(tls, "http_redirect_port", http_redirect_port)
    if tls:
        out["tls"] = tls
    return out


def cluster_fields(
    endpoint: Annotated[
        list[str] | None, typer.Option(help="Backend HOST:PORT (repeatable; replaces the list).")
    ] = None,
    lb: Annotated[
        str | None,
        typer.Option(help="round_robin, least_request, random, ring_hash or maglev."),
    ] = None,
    connect_timeout: Annotated[str | None, typer.Option(help="e.g. 1s, 250ms.")] = None,
    protocol: Annotated[str | None, typer.Option(help="http1 or http2 (gRPC).")] = None,
    health_check_path: Annotated[
        str | None, typer.Option(help="Enable active HTTP health checks on this path.")
    ] = None,
    health_check_interval: Annotated[str | None, typer.Option()] = None,
    max_connections: Annotated[int | None, typer.Option(help="Circuit breaker.")] = None,
    max_pending_requests: Annotated[int | None, typer.Option(help="Circuit breaker.")] = None,
    max_requests: Annotated[int | None, typer.Option(help="Circuit breaker.")] = None,
    outlier_consecutive_5xx: Annotated[
        int | None, typer.Option(help="Eject an endpoint after N consecutive 5xx.")
    ] = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    _set(out, "endpoints", endpoint)
    _set(out, "lb_policy", lb)
    _set(out, "connect_timeout", connect_timeout)
    _set(out, "protocol", protocol)
    hc: dict[str, Any] = {}
    _set(hc, "path", health_check_path)
    _set(hc, "interval", health_check_interval)
    if hc:
        out["health_check"] = hc
    cb: dict[str, Any] = {}
    _set(cb, "max_connections", max_connections)
    _set(cb, "max_pending_requests", max_pending_requests)
    _set(cb, "max_requests", max_requests)
    if cb:
        out["circuit_breakers"] = cb
    if outlier_consecutive_5xx is not None:
        out["outlier_detection"] = {"consecutive_5xx": outlier_consecutive_5xx}
    return out


def route_fields(
    gateway: Annotated[list[str] | None, typer.Option(help="Gateway (repeatable).")] = None,
    host: Annotated[list[str] | None, typer.Option(help="Host name (repeatable).")] = None,
    path: Annotated[str | None, typer.Option(help="Match this exact path.")] = None,
    path_prefix: Annotated[str | None, typer.Option(help="Match paths with this prefix.")] = None,
    path_regex: Annotated[str | None, typer.Option(help="Match paths with this RE2 regex.")] = None,
    method: Annotated[list[str] | None, typer.Option(help="HTTP method (repeatable).")] = None,
    header: Annotated[
        list[str] | None, typer.Option(help="NAME=VALUE, NAME~REGEX, NAME^=PREFIX or NAME.")
    ] = None,
    query: Annotated[
        list[str] | None, typer.Option(help="Query parameter NAME=VALUE, NAME~REGEX or NAME.")
    ] = None,
    cluster: Annotated[
        str | None, typer.Option(help="Send matching requests to this cluster.")
    ] = None,
    backend: Annotated[
        list[str] | None, typer.Option(help="Weighted CLUSTER=WEIGHT (repeatable), e.g. a canary.")
    ] = None,
    redirect: Annotated[str | None, typer.Option(help="Redirect to this URL or path.")] = None,
    redirect_status: Annotated[int | None, typer.Option(help="301, 302, 303, 307 or 308.")] = None,
    direct_response: Annotated[int | None, typer.Option(help="Answer with this status.")] = None,
    body: Annotated[str | None, typer.Option(help="Body of the direct response.")] = None,
    prefix_rewrite: Annotated[str | None, typer.Option()] = None,
    regex_rewrite: Annotated[str | None, typer.Option(help="PATTERN=SUBSTITUTION.")] = None,
    host_rewrite: Annotated[str | None, typer.Option()] = None,
    timeout: Annotated[str | None, typer.Option(help="Request timeout, e.g. 5s.")] = None,
    idle_timeout: Annotated[str | None, typer.Option()] = None,
    retries: Annotated[int | None, typer.Option(help="Retry attempts.")] = None,
    retry_on: Annotated[str | None, typer.Option(help="Comma-separated conditions.")] = None,
    per_try_timeout: Annotated[str | None, typer.Option()] = None,
    set_request_header: Annotated[list[str] | None, typer.Option(help="NAME=VALUE.")] = None,
    add_request_header: Annotated[list[str] | None, typer.Option(help="NAME=VALUE.")] = None,
    remove_request_header: Annotated[list[str] | None, typer.Option()] = None,
    set_response_header: Annotated[list[str] | None, typer.Option(help="NAME=VALUE.")] = None,
    add_response_header: Annotated[list[str] | None, typer.Option(help="NAME=VALUE.")] = None,
    remove_response_header: Annotated[list[str] | None, typer.Option()] = None,
    priority: Annotated[int | None, typer.Option(help="Higher wins (default 0).")] = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    _set(out, "gateways", gateway)
    _set(out, "hosts", host)
    match: dict[str, Any] = {}
    _set(match, "path", path)
    _set(match, "path_prefix", path_prefix)
    _set(match, "path_regex", path_regex)
    _set(match, "methods", [m.upper() for m in method or []])
    _set(match, "headers", [_condition(h, "--header", True) for h in header or []])
    _set(match, "query", [_condition(q, "--query", False) for q in query or []])
    if match:
        out["match"] = match
    actions: dict[str, Any] = {}
    _set(actions, "cluster", cluster)
    if backend:
        actions["backends"] = []
        for name, weight in _pairs(backend, "--backend").items():
            if not weight.strip().isdigit():
                raise PolicyInvalid(f"--backend: weight of {name!r} must be a whole number")
            actions["backends"].append({"cluster": name, "weight": int(weight)})
    if redirect is not None:
        actions["redirect"] = _redirect(redirect, redirect_status)
    if direct_response is not None:
        actions["direct_response"] = {"status": direct_response, **({"body": body} if body else {})}
    out.update(actions)
    _set(out, "prefix_rewrite", prefix_rewrite)
    if regex_rewrite is not None:
        pattern, sep, subst = regex_rewrite.partition("=")
        if not sep:
            raise PolicyInvalid("--regex-rewrite: must be PATTERN=SUBSTITUTION")
        out["regex_rewrite"] = {"pattern": pattern, "substitution": subst}
    _set(out, "host_rewrite", host_rewrite)
    _set(out, "timeout", timeout)
    _set(out, "idle_timeout", idle_timeout)
    retry: dict[str, Any] = {}
    _set(retry, "attempts", retries)
    _set(retry, "retry_on", retry_on.split(",") if retry_on else None)
    _set(retry, "per_try_timeout", per_try_timeout)
    if retry:
        out["retries"] = retry
    for key, set_, add, remove in (
        ("request_headers", set_request_header, add_request_header, remove_request_header),
        ("response_headers", set_response_header, add_response_header, remove_response_header),
    ):
        ops: dict[str, Any] = {}
        _set(ops, "set", _pairs(set_, f"--set-{key[:-8]}-header") or None)
        _set(ops, "add", _pairs(add, f"--add-{key[:-8]}-header") or None)
        _set(ops, "remove", remove)
        if ops:
            out[key] = ops
    _set(out, "priority", priority)
    return out


def auth_fields(
    auth_jwt: Annotated[
        list[str] | None, typer.Option(help="Require a JWT from this provider (repeatable: any).")
    ] = None,
    auth_api_key: Annotated[
        bool | None,
        typer.Option("--auth-api-key/--no-auth-api-key", help="Accept an API key (x-api-key)."),
    ] = None,
    auth_public: Annotated[
        bool, typer.Option("--auth-public", help="Open to anyone (clears auth settings).")
    ] = False,
    auth_scope: Annotated[list[str] | None, typer.Option(help="Required scope (all).")] = None,
    auth_claim: Annotated[
        list[str] | None, typer.Option(help="CLAIM=V1,V2: the claim must be one of these.")
    ] = None,
    auth_consumer: Annotated[list[str] | None, typer.Option(help="Allowed consumer.")] = None,
    auth_group: Annotated[list[str] | None, typer.Option(help="Allowed consumer group.")] = None,
    auth_oidc: Annotated[
        str | None, typer.Option(help="Browser login with this OpenID provider.")
    ] = None,
) -> dict[str, Any]:
    auth: dict[str, Any] = {}
    if auth_public:
        auth = {
            "jwt": [],
            "api_key": False,
            "scopes": [],
            "claims": {},
            "consumers": [],
            "groups": [],
            "oidc": None,
        }
    _set(auth, "jwt", auth_jwt)
    if auth_api_key is not None:
        auth["api_key"] = auth_api_key
    _set(auth, "scopes", auth_scope)
    if auth_claim:
        auth["claims"] = {k: v.split(",") for k, v in _pairs(auth_claim, "--auth-claim").items()}
    _set(auth, "consumers", auth_consumer)
    _set(auth, "groups", auth_group)
    _set(auth, "oidc", auth_oidc)
    return {"auth": auth} if auth or auth_public else {}


def oidc_provider_fields(
    issuer: Annotated[str | None, typer.Option(help="The provider's issuer URL.")] = None,
    authorization_endpoint: Annotated[
        str | None, typer.Option(help="Login page URL (from the discovery document).")
    ] = None,
    token_endpoint: Annotated[str | None, typer.Option(help="Token endpoint URL.")] = None,
    end_session_endpoint: Annotated[
        str | None, typer.Option(help="Provider logout URL (RP-initiated logout).")
    ] = None,
    client_id: Annotated[str | None, typer.Option(help="This gateway's client id.")] = None,
    client_secret_file: Annotated[
        str | None,
        typer.Option(help="File holding the client secret (kept out of shell history)."),
    ] = None,
    scope: Annotated[list[str] | None, typer.Option(help="Requested scope (repeatable).")] = None,
    callback_path: Annotated[str | None, typer.Option(help="Redirect URI path.")] = None,
    logout_path: Annotated[str | None, typer.Option(help="Path that ends the session.")] = None,
    redirect_origin: Annotated[
        str | None, typer.Option(help="scheme://host[:port] browsers use for the gateway.")
    ] = None,
    refresh: Annotated[bool | None, typer.Option("--refresh/--no-refresh")] = None,
    forward_access_token: Annotated[
        bool | None, typer.Option("--forward-access-token/--no-forward-access-token")
    ] = None,
    session_lifetime: Annotated[
        str | None, typer.Option(help="Session length without expires_in, e.g. 1h.")
    ] = None,
    cookie_domain: Annotated[str | None, typer.Option(help="Cookie domain.")] = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    _set(out, "issuer", issuer)
    _set(out, "authorization_endpoint", authorization_endpoint)
    _set(out, "token_endpoint", token_endpoint)
    _set(out, "end_session_endpoint", end_session_endpoint)
    _set(out, "client_id", client_id)
    if client_secret_file is not None:
        try:
            with open(client_secret_file, encoding="utf-8") as handle:
                out["client_secret"] = handle.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            why = getattr(exc, "strerror", None) or "not UTF-8 text"
            raise PolicyInvalid(
                f"--client-secret-file: cannot read {client_secret_file}: {why}"
            ) from None
    _set(out, "scopes", scope)
    _set(out, "callback_path", callback_path)
    _set(out, "logout_path", logout_path)
    _set(out, "redirect_origin", redirect_origin)
    if refresh is not None:
        out["refresh"] = refresh
    if forward_access_token is not None:
        out["forward_access_token"] = forward_access_token
    _set(out, "session_lifetime", session_lifetime)
    _set(out, "cookie_domain", cookie_domain)
    return out


def cors_fields(
    cors_origin: Annotated[
        list[str] | None, typer.Option(help="Allowed origin, e.g. https://*.example.com.")
    ] = None,
    cors_method: Annotated[list[str] | None, typer.Option(help="Allowed method.")] = None,
    cors_header: Annotated[list[str] | None, typer.Option(help="Allowed request header.")] = None,
    cors_expose_header: Annotated[list[str] | None, typer.Option()] = None,
    cors_credentials: Annotated[
        bool | None, typer.Option("--cors-credentials/--no-cors-credentials")
    ] = None,
    cors_max_age: Annotated[str | None, typer.Option(help="Preflight cache, e.g. 10m.")] = None,
) -> dict[str, Any]:
    cors: dict[str, Any] = {}
    _set(cors, "allow_origins", cors_origin)
    _set(cors, "allow_methods", cors_method)
    _set(cors, "allow_headers", cors_header)
    _set(cors, "expose_headers", cors_expose_header)
    if cors_credentials is not None:
        cors["allow_credentials"] = cors_credentials
    _set(cors, "max_age", cors_max_age)
    return {"cors": cors} if cors else {}


def jwt_provider_fields(
    issuer: Annotated[str | None, typer.Option(help="The iss claim tokens carry (URL).")] = None,
    audience: Annotated[list[str] | None, typer.Option(help="Accepted aud (repeatable).")] = None,
    jwks_file: Annotated[
        str | None, typer.Option(help="File with the JSON Web Key Set (inline keys).")
    ] = None,
    jwks_uri: Annotated[str | None, typer.Option(help="URL Envoy fetches the keys from.")] = None,
    jwks_cache_duration: Annotated[str | None, typer.Option(help="e.g. 5m.")] = None,
    token_header: Annotated[
        list[str] | None, typer.Option(help="NAME or NAME=PREFIX holding the token.")
    ] = None,
    token_query: Annotated[list[str] | None, typer.Option(help="Query parameter.")] = None,
    token_cookie: Annotated[list[str] | None, typer.Option(help="Cookie.")] = None,
    clock_skew: Annotated[str | None, typer.Option(help="e.g. 60s.")] = None,
    claim_header: Annotated[
        list[str] | None, typer.Option(help="CLAIM=HEADER passed to the backend.")
    ] = None,
    consumer_claim: Annotated[str | None, typer.Option(help="Claim naming the consumer.")] = None,
    forward_token: Annotated[
        bool | None, typer.Option("--forward-token/--no-forward-token")
    ] = None,
    allow_missing_exp: Annotated[
        bool | None,
        typer.Option(
            "--allow-missing-exp/--require-exp",
            help="Accept tokens without an exp claim (default: refused with 401).",
        ),
    ] = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    _set(out, "issuer", issuer)
    _set(out, "audiences", audience)
    if jwks_file is not None:
        from ..policy.loader import decode

        try:
            with open(jwks_file, "rb") as handle:
                out["jwks"] = decode(handle.read(), f"--jwks-file {jwks_file}")
        except OSError as exc:
            raise PolicyInvalid(f"--jwks-file: cannot read {jwks_file}: {exc.strerror}") from None
        out["jwks_uri"] = None
    if jwks_uri is not None:
        out["jwks_uri"], out["jwks"] = jwks_uri, None
    _set(out, "jwks_cache_duration", jwks_cache_duration)
    if token_header:
        out["headers"] = [
            {"name": n, "prefix": p} if sep else {"name": n, "prefix": ""}
            for n, sep, p in (h.partition("=") for h in token_header)
        ]
    _set(out, "query_params", token_query)
    _set(out, "cookies", token_cookie)
    _set(out, "clock_skew", clock_skew)
    if claim_header:
        out["claims_to_headers"] = _pairs(claim_header, "--claim-header")
    _set(out, "consumer_claim", consumer_claim)
    if forward_token is not None:
        out["forward_token"] = forward_token
    if allow_missing_exp is not None:
        out["allow_missing_exp"] = allow_missing_exp
    return out


def _limits(values: list[str] | None, burst: int | None, option: str) -> list[dict[str, Any]]:
    """``60/minute`` or ``60/minute:90`` (burst 90); ``--burst`` applies to a single limit."""
    out: list[dict[str, Any]] = []
    if not values and burst is None:
        return out
    from ..policy.ratelimit import parse_limit

    for item in values or []:
        text, sep, own_burst = item.partition(":")
        if sep and not own_burst.strip().lstrip("-").isdigit():
            raise PolicyInvalid(f"{option}: burst in {item!r} must be a whole number")
        try:
            out.append(parse_limit(text, int(own_burst) if sep else None))
        except ValueError as exc:
            raise PolicyInvalid(f"{option}: {exc}") from None
    if burst is not None:
        if len(out) != 1:
            raise PolicyInvalid(
                f"{option}: --burst needs exactly one limit (or write 60/minute:90 per limit)"
            )
        out[0]["burst"] = burst
    return out


#: ``--time-zone`` of plans and consumers (and ``ratelimit set``)
TimeZoneOption = Annotated[
    str | None,
    typer.Option(
        "--time-zone",
        help="Time zone of the day/week/month quotas' calendar, an IANA name such as "
        "Europe/Paris (default UTC).",
    ),
]


def consumer_fields(
    group: Annotated[list[str] | None, typer.Option(help="Group (repeatable; replaces).")] = None,
    plan: Annotated[
        str | None, typer.Option(help="Usage plan whose limits apply ('' for none).")
    ] = None,
    limit: Annotated[
        list[str] | None,
        typer.Option(help="Own limit replacing the plan's, e.g. 100/minute (repeatable)."),
    ] = None,
    no_limits: Annotated[
        bool, typer.Option("--no-limits", help="Drop the consumer's own limits.")
    ] = False,
    time_zone: TimeZoneOption = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    _set(out, "groups", group)
    if plan is not None:
        out["plan"] = plan or None
    _set(out, "limits", _limits(limit, None, "--limit"))
    if no_limits:
        out["limits"] = []
    _set(out, "time_zone", time_zone)
    return out


def plan_fields(
    limit: Annotated[
        list[str] | None,
        typer.Option(
            help="N/second|minute|hour|day|week|month, e.g. 60/minute or 100000/month "
            "(repeatable; replaces)."
        ),
    ] = None,
    burst: Annotated[
        int | None, typer.Option(help="Burst of the single --limit (at least its rate).")
    ] = None,
    description: Annotated[str | None, typer.Option(help="Shown in plan list.")] = None,
    time_zone: TimeZoneOption = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    _set(out, "limits", _limits(limit, burst, "--limit"))
    _set(out, "description", description)
    _set(out, "time_zone", time_zone)
    return out


def rate_limit_fields(
    rate_limit_key: Annotated[
        str | None,
        typer.Option(help="Count per consumer, client_ip, header:NAME or none (whole route)."),
    ] = None,
    rate_limit: Annotated[
        list[str] | None,
        typer.Option(help="Limit for callers without a plan, e.g. 100/minute (repeatable)."),
    ] = None,
    rate_limit_burst: Annotated[int | None, typer.Option(help="Burst of a single limit.")] = None,
    rate_limit_plans: Annotated[
        bool | None,
        typer.Option(
            "--rate-limit-plans/--no-rate-limit-plans",
            help="Consumers' plans apply (key consumer; default on).",
        ),
    ] = None,
    rate_limit_off: Annotated[
        bool, typer.Option("--rate-limit-off", help="No rate limit (clears the settings).")
    ] = False,
    rate_limit_time_zone: Annotated[
        str | None,
        typer.Option(help="Time zone of its day/week/month quotas (IANA name; default UTC)."),
    ] = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if rate_limit_off:
        out = {"key": "none", "limits": [], "use_plans": False}
    if rate_limit_key is not None:
        out["key"] = rate_limit_key
        out["use_plans"] = rate_limit_key.strip() == "consumer"
    if rate_limit is not None or rate_limit_burst is not None:
        out["limits"] = _limits(rate_limit, rate_limit_burst, "--rate-limit")
    if rate_limit_plans is not None:
        out["use_plans"] = rate_limit_plans
    if rate_limit_time_zone is not None:
        out["time_zone"] = rate_limit_time_zone
    return {"rate_limit": out} if out else {}


def _redirect(target: str, status: int | None) -> dict[str, Any]:
    parts = urlsplit(target)
    out: dict[str, Any] = {}
    if parts.scheme:
        out["scheme"] = parts.scheme
    if parts.hostname:
        out["host"] = parts.hostname
    if parts.port:
        out["port"] = parts.port
    if parts.path:
        out["path"] = parts.path
    if status is not None:
        out["status"] = status
    if not out:
        raise PolicyInvalid(f"--redirect: {target!r} names no scheme, host or path")
    return out


def _merge(spec: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """Fields the user set replace stored ones; nested sections merge one level deep.

    Setting one action (cluster, backends, redirect, direct_response) drops the others, so
    ``route update api --cluster v2`` moves a canary route back to a single cluster.
    """
    actions = {"cluster", "backends", "redirect", "direct_response", "aggregate"}
    merged = dict(spec)
    if actions & fields.keys():
        for key in actions:
            merged.pop(key, None)
    if "match" in fields and {"path", "path_prefix", "path_regex"} & fields["match"].keys():
        merged["match"] = {
            k: v
            for k, v in merged.get("match", {}).items()
            if k not in ("path", "path_prefix", "path_regex")
        }
    for key, value in fields.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def merge_patch(fields: dict[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that makes the server's update what :func:`_merge`
    does locally: setting one action removes the others (``null``), setting one path match
    removes the other path matches; sections merge with the stored ones."""
    actions = {"cluster", "backends", "redirect", "direct_response", "aggregate"}
    patch: dict[str, Any] = dict(fields)
    if actions & fields.keys():
        for key in actions - fields.keys():
            patch[key] = None
    if "match" in fields and {"path", "path_prefix", "path_regex"} & fields["match"].keys():
        match = dict(fields["match"])
        for key in ("path", "path_prefix", "path_regex"):
            match.setdefault(key, None)
        patch["match"] = match
    return patch


def remote_patch(
    api: Any, plural: str, label: str, name: str, fields: dict[str, Any], wait: str | None
) -> None:
    """``KIND update`` through the admin API as a merge patch of ``fields``, said as the
    local command says it (updated / unchanged)."""
    from .contexts import path_of

    resp = api.request(
        "PATCH",
        path_of(plural, name),
        body=fields,
        wait=wait,
        content_type="application/merge-patch+json",
    ).data
    changed = bool(resp.get("changes"))
    verb = "updated" if changed else "unchanged"
    finish_remote(resp, f"{label} {name!r} {verb}", wait if changed else None)


def remote_update(
    api: Any,
    kind: str,
    name: str,
    patch: Callable[[dict[str, Any]], dict[str, Any]],
    wait: str | None,
) -> dict[str, Any]:
    """A whole-object change through the admin API: read the object, change it as the local
    command does, and PUT it back with ``If-Match`` of the revision read, so a concurrent
    write makes it fail (409, exit 4, nothing written) instead of being overwritten. For
    changes a merge patch cannot express (a section replaced as a whole)."""
    from .contexts import path_of

    got = api.request("GET", path_of(plural_of(kind), name))
    revision = got.data.get("revision") if isinstance(got.data, dict) else None
    spec = patch(spec_of(got.data))
    resp: dict[str, Any] = api.request(
        "PUT",
        path_of(plural_of(kind), name),
        body=spec,
        revision=revision if revision is not None else got.revision,
        wait=wait,
    ).data
    return resp


def observability_fields(
    access_log: Annotated[
        str | None, typer.Option(help="Access log lines on Envoy's stdout: json, text or off.")
    ] = None,
    access_log_field: Annotated[
        list[str] | None,
        typer.Option(help="Field of the access log line (repeatable; default all)."),
    ] = None,
    analytics: Annotated[
        bool | None,
        typer.Option("--analytics/--no-analytics", help="Usage analytics for this gateway."),
    ] = None,
    analytics_sink: Annotated[
        str | None,
        typer.Option(help="HOST:PORT of a `gatewayctl analytics-sink` (default: the controller)."),
    ] = None,
    analytics_flush_interval: Annotated[
        str | None, typer.Option(help="How long Envoy buffers access-log entries [1s].")
    ] = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    log: dict[str, Any] = {}
    if access_log is not None:
        log["format"] = access_log
    if access_log_field:
        log["fields"] = access_log_field
    if log:
        out["access_log"] = log
    section: dict[str, Any] = {}
    if analytics is not None:
        section["enabled"] = analytics
    if analytics_sink is not None:
        section["sink"] = analytics_sink
        section.setdefault("enabled", True)
    if analytics_flush_interval is not None:
        section["flush_interval"] = analytics_flush_interval
    if section:
        out["analytics"] = section
    return out


def plural_of(kind: str) -> str:
    """The admin API collection of a kind (``jwt_provider`` -> ``jwt-providers``)."""
    return kind.replace("_", "-") + "s"


def spec_of(item: dict[str, Any]) -> dict[str, Any]:
    """An object of an admin API answer (``{"kind","name","spec"}``) as the local command
    prints it: its spec, name first."""
    spec = item.get("spec", item)
    if "name" in spec:
        return dict(spec)
    return {"name": item.get("name"), **spec}


# -- columns for list ---------------------------------------------------------------------


def _match_text(m: dict[str, Any]) -> str:
    path = (
        f"= {m['path']}"
        if "path" in m
        else f"~ {m['path_regex']}"
        if "path_regex" in m
        else f"{m.get('path_prefix', '/')}*"
    )
    extra = [",".join(m["methods"])] if m.get("methods") else []
    extra += [f"{len(m['headers'])} header(s)"] if m.get("headers") else []
    extra += [f"{len(m['query'])} query"] if m.get("query") else []
    return " ".join([path, *extra])


def _limits_text(limits: list[dict[str, Any]], time_zone: str | None = None) -> str:
    """``100/minute (burst 150), 5000/month``; `` (Europe/Paris)`` after the day/week/month
    quotas' calendar when it is not UTC."""
    text = ", ".join(
        f"{x['requests']}/{x['per']}" + (f" (burst {x['burst']})" if x.get("burst") else "")
        for x in limits
    )
    calendar = any(x["per"] in ("day", "week", "month") for x in limits)
    return f"{text} ({time_zone})" if calendar and time_zone and time_zone != "UTC" else text


def _action_text(s: dict[str, Any]) -> str:
    if "cluster" in s:
        return f"-> {s['cluster']}"
    if "backends" in s:
        return "-> " + ", ".join(f"{b['cluster']}:{b['weight']}" for b in s["backends"])
    if "redirect" in s:
        r = s["redirect"]
        return f"redirect {r.get('status', 302)} {r.get('host', '')}{r.get('path', '')}"
    if "aggregate" in s:
        parts = s["aggregate"]["parts"]
        return "aggregate " + ", ".join(f"{p['name']}:{p['cluster']}" for p in parts)
    d = s["direct_response"]
    return f"respond {d['status']}"


COLUMNS: dict[str, tuple[list[str], Callable[[dict[str, Any]], list[Any]]]] = {
    "gateway": (
        ["NAME", "ADDRESS", "PORT", "HOSTNAMES"],
        lambda s: [
            s["name"],
            s.get("address", "0.0.0.0"),
            s["port"],
            ", ".join(s.get("hostnames", [])) or "*",
        ],
    ),
    "jwt_provider": (
        ["NAME", "ISSUER", "AUDIENCES", "KEYS"],
        lambda s: [
            s["name"],
            s["issuer"],
            ", ".join(s.get("audiences", [])) or "*",
            s.get("jwks_uri") or "inline",
        ],
    ),
    "oidc_provider": (
        ["NAME", "ISSUER", "CLIENT", "CALLBACK"],
        lambda s: [
            s["name"],
            s["issuer"],
            s["client_id"],
            s.get("callback_path", "/oauth2/callback"),
        ],
    ),
    "consumer": (
        ["NAME", "GROUPS", "PLAN"],
        lambda s: [
            s["name"],
            ", ".join(s.get("groups", [])),
            "own limits" if s.get("limits") else s.get("plan", ""),
        ],
    ),
    "plan": (
        ["NAME", "LIMITS", "DESCRIPTION"],
        lambda s: [
            s["name"],
            _limits_text(s.get("limits", []), s.get("time_zone")),
            s.get("description", ""),
        ],
    ),
    "cluster": (
        ["NAME", "ENDPOINTS", "LB", "PROTOCOL"],
        lambda s: [
            s["name"],
            ", ".join(s["endpoints"]),
            s.get("lb_policy", "round_robin"),
            s.get("protocol", "http1"),
        ],
    ),
    "route": (
        ["NAME", "GATEWAYS", "HOSTS", "MATCH", "ACTION", "PRIORITY"],
        lambda s: [
            s["name"],
            ", ".join(s["gateways"]),
            ", ".join(s.get("hosts", [])) or "*",
            _match_text(s.get("match", {})),
            _action_text(s),
            s.get("priority", 0),
        ],
    ),
}

FIELDS: dict[str, list[Callable[..., dict[str, Any]]]] = {
    "gateway": [
        *(gateway_fields, auth_fields, cors_fields, rate_limit_fields),
        gateway_traffic_fields,
        observability_fields,
        gateway_edge_fields,
    ],
    "cluster": [cluster_fields, cluster_traffic_fields],
    "route": [
        route_fields,
        auth_fields,
        cors_fields,
        rate_limit_fields,
        route_traffic_fields,
        protocol_fields,
        route_edge_fields,
    ],
    "jwt_provider": [jwt_provider_fields],
    "oidc_provider": [oidc_provider_fields],
    "consumer": [consumer_fields, consumer_edge_fields],
    "plan": [plan_fields],
}
#: kind -> command group name
COMMAND = {"jwt_provider": "jwt-provider", "oidc_provider": "oidc-provider"}


# -- command factories --------------------------------------------------------------------


def _command(
    body: Callable[..., None], fields_fns: list[Callable[..., dict[str, Any]]], with_wait: bool
) -> Callable[..., None]:
    """A function whose signature is ctx + NAME + the kind's options (+ --wait) for typer."""
    params = [
        inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
        inspect.Parameter(
            "name",
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            annotation=Annotated[str, typer.Argument(help="Object name.")],
        ),
    ]
    option_names: list[list[str]] = []
    for fn in fields_fns:
        names = []
        for p in inspect.signature(fn, eval_str=True).parameters.values():
            params.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY))
            names.append(p.name)
        option_names.append(names)
    if with_wait:  # the mutating commands
        params.append(
            inspect.Parameter(
                "wait", inspect.Parameter.KEYWORD_ONLY, annotation=WaitOption, default=None
            )
        )
        params.append(
            inspect.Parameter(
                "expect_revision",
                inspect.Parameter.KEYWORD_ONLY,
                annotation=ExpectRevisionOption,
                default=None,
            )
        )
        params.append(
            inspect.Parameter(
                "atomic", inspect.Parameter.KEYWORD_ONLY, annotation=AtomicOption, default=False
            )
        )

    def command(ctx: typer.Context, name: str, **kwargs: Any) -> None:
        fields: dict[str, Any] = {}
        for fn, names in zip(fields_fns, option_names, strict=True):
            for key, value in fn(**{k: kwargs[k] for k in names}).items():
                # two option groups may fill one section (circuit_breakers, outlier_detection)
                if isinstance(value, dict) and isinstance(fields.get(key), dict):
                    value = {**fields[key], **value}
                fields[key] = value
        if with_wait:
            body(
                ctx,
                name,
                fields,
                kwargs.get("wait"),
                kwargs.get("expect_revision"),
                atomic=kwargs.get("atomic", False),
            )
        else:
            body(ctx, name, fields, None, None)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = body.__doc__
    return command


def _kind_app(kind: str) -> typer.Typer:
    label = kind.replace("_", " ")
    app = typer.Typer(help=f"Manage {label}s.", no_args_is_help=True)
    fields_fn = FIELDS[kind]

    from .contexts import path_of

    plural = plural_of(kind)

    def add(
        ctx: typer.Context,
        name: str,
        fields: dict[str, Any],
        wait: str | None,
        expect: int | None,
        *,
        atomic: bool = False,
    ) -> None:
        c = ctx_of(ctx)
        api = c.remote
        if api is not None:  # the server validates: the client imports no model
            query, wait, rounds = _atomic_query(atomic, wait)
            resp = api.request(
                "POST",
                path_of(plural),
                body={"name": name, **fields},
                query=query,
                revision=expect,
                wait=wait,
                wait_rounds=rounds,
            ).data
            finish_remote(resp, f"{kind} {name!r} created", wait)
            return
        from ..policy import parse_object

        obj = parse_object(kind, {"name": name, **fields})
        if atomic:
            result = c.store.write([("create", kind, name, obj)], expect_revision=expect)
            finish_atomic(c, result, f"{kind} {name!r} created", wait)
            return
        revision = c.store.create(obj, expect_revision=expect)
        finish_change(c, revision, f"{kind} {name!r} created", wait)

    def update(
        ctx: typer.Context,
        name: str,
        fields: dict[str, Any],
        wait: str | None,
        expect: int | None,
        *,
        atomic: bool = False,
    ) -> None:
        c = ctx_of(ctx)
        if not fields:
            raise PolicyInvalid(f"{kind} update: give at least one option to change")
        api = c.remote
        if api is not None:
            query, wait, rounds = _atomic_query(atomic, wait)
            resp = api.request(
                "PATCH",
                path_of(plural, name),
                body=merge_patch(fields),
                query=query,
                revision=expect,
                wait=wait,
                wait_rounds=rounds,
                content_type="application/merge-patch+json",
            ).data
            if not resp.get("changes"):
                finish_remote(resp, f"{kind} {name!r} unchanged", None)
            else:
                finish_remote(resp, f"{kind} {name!r} updated", wait)
            return
        result = c.store.update(
            kind, name, lambda spec: _merge(spec, fields), expect_revision=expect
        )
        if not result.changes:
            finish_change(c, result.revision, f"{kind} {name!r} unchanged", None)
        elif atomic:
            finish_atomic(c, result, f"{kind} {name!r} updated", wait)
        else:
            finish_change(c, result.revision, f"{kind} {name!r} updated", wait)

    def delete(
        ctx: typer.Context,
        name: str,
        fields: dict[str, Any],
        wait: str | None,
        expect: int | None,
        *,
        atomic: bool = False,
    ) -> None:
        c = ctx_of(ctx)
        api = c.remote
        if api is not None:
            query, wait, rounds = _atomic_query(atomic, wait)
            resp = api.request(
                "DELETE",
                path_of(plural, name),
                query=query,
                revision=expect,
                wait=wait,
                wait_rounds=rounds,
            ).data
            finish_remote(resp, f"{kind} {name!r} deleted", wait)
            return
        if atomic:
            result = c.store.write([("delete", kind, name, None)], expect_revision=expect)
            finish_atomic(c, result, f"{kind} {name!r} deleted", wait)
            return
        revision = c.store.delete(kind, name, expect_revision=expect)
        finish_change(c, revision, f"{kind} {name!r} deleted", wait)

    def get(
        ctx: typer.Context, name: str, fields: dict[str, Any], wait: str | None, expect: int | None
    ) -> None:
        c = ctx_of(ctx)
        api = c.remote
        spec = spec_of(api.get(path_of(plural, name))) if api else _shown(c.store.get(kind, name))
        emit(spec, Format.json if c.output == Format.json else Format.yaml)

    add.__doc__ = f"Create a {kind}."
    update.__doc__ = f"Change some fields of a {kind}."
    delete.__doc__ = f"Delete a {kind}."
    get.__doc__ = f"Show one {kind}."
    app.command("add")(_command(add, fields_fn, True))
    app.command("update")(_command(update, fields_fn, True))
    app.command("delete")(_command(delete, [], True))
    app.command("get")(_command(get, [], False))

    @app.command("list")
    def list_(ctx: typer.Context) -> None:
        """List every object of this kind."""
        c = ctx_of(ctx)
        api = c.remote
        if api is not None:
            if c.output == Format.json:
                # the server encodes the specs exactly as -o json prints them: the bytes go
                # to the terminal unparsed (10,000 routes: no decode, copy and re-encode)
                body = api.get_bytes(path_of(plural), view="specs", pretty=True)
                if body.startswith(b"["):
                    sys.stdout.buffer.write(body)
                    return
                # a controller without ?view=specs answered with the envelope
                import orjson

                specs = [spec_of(item) for item in orjson.loads(body)["items"]]
            else:
                specs = [spec_of(item) for item in api.get(path_of(plural))["items"]]
        else:
            specs = [_shown(o) for o in c.store.list_objects(kind)]
        if c.output == Format.table:
            columns, row = COLUMNS[kind]
            emit_table(columns, [row(s) for s in specs])
        else:
            emit(specs, c.output)

    return app


def _shown(obj: Any) -> dict[str, Any]:
    """An object's spec as get and list print it: without its secret fields (an OpenID
    client secret), as the admin API answers; ``export --secrets`` is the way to them."""
    spec: dict[str, Any] = obj.spec()
    for field in getattr(obj, "secret_fields", ()):
        spec.pop(field, None)
    return spec


def register_resources(app: typer.Typer) -> typer.Typer:
    """Add a command group per declarative kind; returns the consumer group (for keys)."""
    groups = {}
    for kind in FIELDS:
        groups[kind] = _kind_app(kind)
        app.add_typer(groups[kind], name=COMMAND.get(kind, kind))
    return groups["consumer"]

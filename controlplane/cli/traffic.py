"""Options for traffic policy (hashing, faults, query and body changes, caching,
compression, retry budgets), and ``gatewayctl cache purge``.

Each ``*_fields`` function is one more option group of an existing kind's add/update
commands (see ``FIELDS`` in ``resources.py``); ``--X-off`` options return the field as
None, which the update merge turns into "remove the setting".
"""

from typing import Annotated, Any

import typer

from ..errors import PolicyInvalid
from .context import ctx_of, finish_change
from .options import pairs as _pairs

__all__ = [
    "cluster_traffic_fields",
    "gateway_traffic_fields",
    "register_cache",
    "route_traffic_fields",
]


def _with_percent(text: str, option: str) -> tuple[str, float | None]:
    """``VALUE`` or ``VALUE@PERCENT``."""
    value, sep, percent = text.partition("@")
    if not sep:
        return value, None
    try:
        return value, float(percent.rstrip("%"))
    except ValueError:
        raise PolicyInvalid(f"{option}: {percent!r} is not a percentage") from None


def _body(rename: list[str] | None, remove: list[str] | None, wrap: str | None, option: str) -> Any:
    out: dict[str, Any] = {}
    if rename:
        out["rename"] = _pairs(rename, f"--{option}-rename")
    if remove:
        out["remove"] = remove
    if wrap is not None:
        out["wrap"] = wrap
    return out or None


def route_traffic_fields(
    hash_header: Annotated[
        list[str] | None, typer.Option(help="Consistent-hash on this header (ring_hash/maglev).")
    ] = None,
    hash_cookie: Annotated[
        str | None, typer.Option(help="Consistent-hash on a cookie: NAME or NAME:TTL (sticky).")
    ] = None,
    hash_source_ip: Annotated[
        bool, typer.Option("--hash-source-ip", help="Consistent-hash on the client IP.")
    ] = False,
    hash_off: Annotated[bool, typer.Option("--hash-off", help="No consistent-hash keys.")] = False,
    fault_delay: Annotated[
        str | None, typer.Option(help="Inject a delay: DURATION[@PERCENT], e.g. 2s@10.")
    ] = None,
    fault_abort: Annotated[
        str | None, typer.Option(help="Inject an error: STATUS[@PERCENT], e.g. 503@5.")
    ] = None,
    fault_off: Annotated[bool, typer.Option("--fault-off", help="No injected faults.")] = False,
    set_query: Annotated[list[str] | None, typer.Option(help="Query NAME=VALUE (replace).")] = None,
    add_query: Annotated[list[str] | None, typer.Option(help="Query NAME=VALUE (append).")] = None,
    remove_query: Annotated[
        list[str] | None, typer.Option(help="Drop this query parameter.")
    ] = None,
    request_body_rename: Annotated[list[str] | None, typer.Option(help="JSON OLD=NEW.")] = None,
    request_body_remove: Annotated[list[str] | None, typer.Option(help="JSON field.")] = None,
    request_body_wrap: Annotated[str | None, typer.Option(help="Wrap as {NAME: body}.")] = None,
    response_body_rename: Annotated[list[str] | None, typer.Option(help="JSON OLD=NEW.")] = None,
    response_body_remove: Annotated[list[str] | None, typer.Option(help="JSON field.")] = None,
    response_body_wrap: Annotated[str | None, typer.Option(help="Wrap as {NAME: body}.")] = None,
    body_transform_off: Annotated[
        bool, typer.Option("--body-transform-off", help="No body changes.")
    ] = False,
    cache: Annotated[
        bool, typer.Option("--cache", help="Cache GET/HEAD responses (Cache-Control decides).")
    ] = False,
    cache_ttl: Annotated[
        str | None, typer.Option(help="Cache for this long when the backend says nothing.")
    ] = None,
    cache_override: Annotated[
        bool | None, typer.Option("--cache-override/--no-cache-override", help="TTL always wins.")
    ] = None,
    cache_per_consumer: Annotated[
        bool | None,
        typer.Option("--cache-per-consumer/--cache-shared", help="Entries per consumer."),
    ] = None,
    cache_off: Annotated[bool, typer.Option("--cache-off", help="No caching.")] = False,
    compress: Annotated[
        bool | None,
        typer.Option("--compress/--no-compress", help="Compress this route (or never)."),
    ] = None,
    compress_default: Annotated[
        bool,
        typer.Option(
            "--compress-default", help="Compress as the gateway says (clears the route's choice)."
        ),
    ] = False,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    keys: list[dict[str, Any]] = [{"header": h} for h in hash_header or []]
    if hash_cookie is not None:
        name, _, ttl = hash_cookie.partition(":")
        keys.append({"cookie": {"name": name, **({"ttl": ttl} if ttl else {})}})
    if hash_source_ip:
        keys.append({"source_ip": True})
    if keys:
        out["hash_on"] = keys
    elif hash_off:
        out["hash_on"] = []
    fault: dict[str, Any] = {}
    if fault_delay is not None:
        value, percent = _with_percent(fault_delay, "--fault-delay")
        fault["delay"] = {"duration": value, **({"percent": percent} if percent else {})}
    if fault_abort is not None:
        value, percent = _with_percent(fault_abort, "--fault-abort")
        if not value.isdigit():
            raise PolicyInvalid(f"--fault-abort: {value!r} is not an HTTP status")
        fault["abort"] = {"status": int(value), **({"percent": percent} if percent else {})}
    if fault:
        out["fault"] = fault
    elif fault_off:
        out["fault"] = None
    query: dict[str, Any] = {}
    if set_query:
        query["set"] = _pairs(set_query, "--set-query")
    if add_query:
        query["add"] = _pairs(add_query, "--add-query")
    if remove_query:
        query["remove"] = remove_query
    if query:
        out["request_query"] = query
    request = _body(request_body_rename, request_body_remove, request_body_wrap, "request-body")
    response = _body(
        response_body_rename, response_body_remove, response_body_wrap, "response-body"
    )
    if request is not None:
        out["request_body"] = request
    if response is not None:
        out["response_body"] = response
    if body_transform_off and request is None and response is None:
        out["request_body"] = out["response_body"] = None
    spec: dict[str, Any] = {}
    if cache_ttl is not None:
        spec["ttl"] = cache_ttl
    if cache_override is not None:
        spec["override"] = cache_override
    if cache_per_consumer is not None:
        spec["per_consumer"] = cache_per_consumer
    if spec or cache:
        out["cache"] = spec
    elif cache_off:
        out["cache"] = None
    if compress is not None:
        out["compression"] = compress
    elif compress_default:
        out["compression"] = None
    return out


def gateway_traffic_fields(
    compress: Annotated[
        str | None,
        typer.Option(help="Compress responses: gzip, brotli, zstd (comma list, preferred first)."),
    ] = None,
    compress_min_length: Annotated[
        int | None, typer.Option(help="Smallest response compressed (bytes).")
    ] = None,
    compress_type: Annotated[
        list[str] | None, typer.Option(help="Media type compressed (repeatable).")
    ] = None,
    compress_off: Annotated[bool, typer.Option("--compress-off", help="No compression.")] = False,
) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if compress is not None:
        spec["algorithms"] = [a.strip() for a in compress.split(",") if a.strip()]
    if compress_min_length is not None:
        spec["min_length"] = compress_min_length
    if compress_type:
        spec["content_types"] = compress_type
    if spec:
        return {"compression": spec}
    return {"compression": None} if compress_off else {}


def cluster_traffic_fields(
    retry_budget: Annotated[
        float | None,
        typer.Option(help="Retries in flight as a % of requests in flight (retry budget)."),
    ] = None,
    retry_budget_min: Annotated[
        int | None, typer.Option(help="Retries always allowed at once under the budget.")
    ] = None,
    outlier_interval: Annotated[
        str | None, typer.Option(help="How often ejections are evaluated, e.g. 1s.")
    ] = None,
    outlier_ejection_time: Annotated[
        str | None, typer.Option(help="Base time an endpoint stays ejected, e.g. 30s.")
    ] = None,
    outlier_max_ejection_percent: Annotated[
        int | None, typer.Option(help="At most this % of endpoints ejected at once.")
    ] = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    budget: dict[str, Any] = {}
    if retry_budget is not None:
        budget["percent"] = retry_budget
    if retry_budget_min is not None:
        budget["min_concurrency"] = retry_budget_min
    if budget:
        out["circuit_breakers"] = {"retry_budget": budget}
    outlier: dict[str, Any] = {}
    for key, value in (
        ("interval", outlier_interval),
        ("base_ejection_time", outlier_ejection_time),
        ("max_ejection_percent", outlier_max_ejection_percent),
    ):
        if value is not None:
            outlier[key] = value
    if outlier:
        out["outlier_detection"] = outlier
    return out


_WaitOption = Annotated[
    str | None,
    typer.Option(
        "--wait",
        metavar="[TIMEOUT]",
        help="Return once every proxy of the route's gateways runs the change (default 30s).",
    ),
]


def register_cache(app: typer.Typer) -> None:
    cache = typer.Typer(help="Response caches of routes.", no_args_is_help=True)

    @cache.command("purge")
    def purge(
        ctx: typer.Context,
        route: Annotated[str, typer.Argument(help="Route whose cached responses to drop.")],
        wait: _WaitOption = None,
    ) -> None:
        """Make every cached response of a route unreachable (its cache generation + 1).

        Envoy's in-memory cache has no delete; the generation is part of every cache key,
        so after the change no request finds an earlier entry, on every Envoy at once.
        Old entries stay in memory until the cache evicts them.
        """
        c = ctx_of(ctx)

        def bump(spec: dict[str, Any]) -> dict[str, Any]:
            if spec.get("cache") is None:
                raise PolicyInvalid(f"route {route!r}: cache: the route does not cache")
            current = spec["cache"]
            return {**spec, "cache": {**current, "generation": current.get("generation", 0) + 1}}

        api = c.remote
        if api is not None:
            from .context import finish_remote
            from .resources import remote_update

            resp = remote_update(api, "route", route, bump, wait)
            finish_remote(resp, f"route {route!r} cache purged", wait)
            return
        result = c.store.update("route", route, bump)
        finish_change(c, result.revision, f"route {route!r} cache purged", wait)

    app.add_typer(cache, name="cache")

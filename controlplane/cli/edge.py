"""Options for the edge controls (client address, IP rules, limits, ext_authz) of
``gateway`` and ``route`` add/update (see ``FIELDS`` in ``resources.py``).

``--X-off`` options return the field as None, which the update merge turns into "remove
the setting". The full settings (every limit, ext_authz headers) are in the declarative
format; these cover the common ones.
"""

from typing import Annotated, Any

import typer

__all__ = ["gateway_edge_fields", "route_edge_fields"]


def _rules(allow: list[str] | None, deny: list[str] | None, off: bool) -> dict[str, Any]:
    rules: dict[str, Any] = {}
    if allow:
        rules["allow"] = allow
    if deny:
        rules["deny"] = deny
    if rules:
        return {"ip_rules": rules}
    return {"ip_rules": None} if off else {}


def gateway_edge_fields(
    trusted_hops: Annotated[
        int | None,
        typer.Option(help="Proxies in front of every request (X-Forwarded-For hops trusted)."),
    ] = None,
    trusted_cidr: Annotated[
        list[str] | None,
        typer.Option(help="Proxy range whose X-Forwarded-For is believed (repeatable)."),
    ] = None,
    client_address_off: Annotated[
        bool,
        typer.Option("--client-address-off", help="The TCP peer is the client (the default)."),
    ] = False,
    ip_allow: Annotated[
        list[str] | None, typer.Option(help="Only these client ranges (CIDR, repeatable).")
    ] = None,
    ip_deny: Annotated[
        list[str] | None, typer.Option(help="Refuse these client ranges (CIDR, repeatable).")
    ] = None,
    ip_rules_off: Annotated[bool, typer.Option("--ip-rules-off", help="No IP rules.")] = False,
    max_request_body: Annotated[
        int | None, typer.Option(help="Default request body limit of its routes, bytes (413).")
    ] = None,
    max_request_headers_kb: Annotated[
        int | None, typer.Option(help="Request headers limit in KiB [60] (431).")
    ] = None,
    max_headers_count: Annotated[
        int | None, typer.Option(help="Most request headers [100] (431).")
    ] = None,
    request_headers_timeout: Annotated[
        str | None, typer.Option(help="Request head must arrive within this [10s] (408).")
    ] = None,
    stream_idle_timeout: Annotated[
        str | None, typer.Option(help="A request idle this long is ended [5m].")
    ] = None,
    connection_idle_timeout: Annotated[
        str | None, typer.Option(help="An idle client connection is closed after this [15m].")
    ] = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if trusted_hops is not None:
        out["client_address"] = {"trusted_hops": trusted_hops}
    elif trusted_cidr:
        out["client_address"] = {"trusted_cidrs": trusted_cidr}
    elif client_address_off:
        out["client_address"] = None
    out.update(_rules(ip_allow, ip_deny, ip_rules_off))
    if max_request_body is not None:
        out["max_request_body"] = max_request_body
    limits: dict[str, Any] = {}
    for key, value in (
        ("max_request_headers_kb", max_request_headers_kb),
        ("max_headers_count", max_headers_count),
        ("request_headers_timeout", request_headers_timeout),
        ("stream_idle_timeout", stream_idle_timeout),
        ("idle_timeout", connection_idle_timeout),
    ):
        if value is not None:
            limits[key] = value
    if limits:
        out["limits"] = limits
    return out


def route_edge_fields(
    ip_allow: Annotated[
        list[str] | None, typer.Option(help="Only these client ranges (CIDR, repeatable).")
    ] = None,
    ip_deny: Annotated[
        list[str] | None, typer.Option(help="Refuse these client ranges (CIDR, repeatable).")
    ] = None,
    ip_rules_off: Annotated[bool, typer.Option("--ip-rules-off", help="No IP rules.")] = False,
    max_request_body: Annotated[
        int | None, typer.Option(help="Request body limit, bytes (413); unset: the gateway's.")
    ] = None,
    ext_authz_cluster: Annotated[
        str | None, typer.Option(help="Ask this authorization service (cluster) first.")
    ] = None,
    ext_authz_protocol: Annotated[str | None, typer.Option(help="grpc (default) or http.")] = None,
    ext_authz_timeout: Annotated[str | None, typer.Option(help="e.g. 500ms [1s].")] = None,
    ext_authz_failure_mode: Annotated[
        str | None, typer.Option(help="Service down or late: closed (403, default) or open.")
    ] = None,
    ext_authz_body: Annotated[
        int | None, typer.Option(help="Also send up to this many body bytes.")
    ] = None,
    ext_authz_off: Annotated[
        bool, typer.Option("--ext-authz-off", help="No authorization service.")
    ] = False,
) -> dict[str, Any]:
    out = _rules(ip_allow, ip_deny, ip_rules_off)
    if max_request_body is not None:
        out["max_request_body"] = max_request_body
    authz: dict[str, Any] = {}
    for key, value in (
        ("cluster", ext_authz_cluster),
        ("protocol", ext_authz_protocol),
        ("timeout", ext_authz_timeout),
        ("failure_mode", ext_authz_failure_mode),
    ):
        if value is not None:
            authz[key] = value
    if ext_authz_body is not None:
        authz["body"] = {"max_bytes": ext_authz_body}
    if authz:
        out["ext_authz"] = authz
    elif ext_authz_off:
        out["ext_authz"] = None
    return out

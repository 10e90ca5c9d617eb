"""Options for the edge controls (client address, IP rules, limits, ext_authz) of
``gateway`` and ``route`` add/update (see ``FIELDS`` in ``resources.py``).

``--X-off`` options return the field as None, which the update merge turns into "remove
the setting". The full settings (every limit, ext_authz headers) are in the declarative
format; these cover the common ones.
"""

from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import PolicyInvalid

__all__ = ["consumer_edge_fields", "gateway_edge_fields", "route_edge_fields"]


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
    client_ca: Annotated[
        str | None,
        typer.Option(help="HTTPS: ask clients for certificates of these CAs (PEM file)."),
    ] = None,
    client_cert_mode: Annotated[
        str | None, typer.Option(help="With --client-ca: required (default) or optional.")
    ] = None,
    client_auth_off: Annotated[
        bool, typer.Option("--client-auth-off", help="No client certificates.")
    ] = False,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    auth: dict[str, Any] = {}
    if client_ca is not None:
        try:
            auth["ca"] = Path(client_ca).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PolicyInvalid(f"--client-ca: cannot read {client_ca}: {exc}") from None
    if client_cert_mode is not None:
        auth["mode"] = client_cert_mode
    if auth:
        out["tls"] = {"client_auth": auth}
    elif client_auth_off:
        out["tls"] = {"client_auth": None}
    # each replaces the other (an update merges into the stored setting)
    if trusted_hops is not None:
        out["client_address"] = {"trusted_hops": trusted_hops, "trusted_cidrs": []}
    elif trusted_cidr:
        out["client_address"] = {"trusted_cidrs": trusted_cidr, "trusted_hops": 0}
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
    client_cert_name: Annotated[
        list[str] | None,
        typer.Option(help="Only clients whose verified certificate has this SAN/subject."),
    ] = None,
    client_cert_any: Annotated[
        bool,
        typer.Option("--client-cert-any", help="Any client with a verified certificate."),
    ] = False,
    client_cert_off: Annotated[
        bool, typer.Option("--client-cert-off", help="No client certificate rule.")
    ] = False,
) -> dict[str, Any]:
    out = _rules(ip_allow, ip_deny, ip_rules_off)
    if client_cert_name or client_cert_any:
        out["client_cert"] = {"names": client_cert_name or []}
    elif client_cert_off:
        out["client_cert"] = None
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


def consumer_edge_fields(
    certificate_name: Annotated[
        list[str] | None,
        typer.Option(help="Client certificate SAN/subject identifying it (repeatable)."),
    ] = None,
) -> dict[str, Any]:
    return {"certificates": certificate_name} if certificate_name else {}

"""Edge controls of gateways and routes: who the client is, which addresses may call, how
big and how slow a request may be, and external authorization.

* ``client_address`` (gateway): which address is the client's. By default the TCP peer, and
  ``X-Forwarded-For`` is never believed: a client that writes ``X-Forwarded-For: 10.0.0.1``
  stays what it is. Behind load balancers, either ``trusted_hops`` (that many proxies in
  front of every request: the address the outermost trusted proxy saw is the client's) or
  ``trusted_cidrs`` (the peer's, and each X-Forwarded-For entry's, address is believed only
  while it is inside these ranges). That one address is what IP rules, rate limits by
  ``client_ip`` and analytics use (ADR 0043).
* ``ip_rules`` (gateway and route): ``deny`` ranges refused, and when ``allow`` is given
  only those ranges admitted; the gateway's rules apply to every request, a route's in
  addition.
* ``limits`` (gateway) and ``max_request_body`` (gateway default, route): sizes and timeouts
  against large and slow clients, with safe defaults.
* ``ext_authz`` (route): an authorization service asked about every request of the route
  (Envoy's ext_authz over gRPC, the protocol OPA-Envoy speaks, or HTTP).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from .bounds import UINT32_MAX, IntRange
from .common import Duration, Name, PolicyModel
from .headers import header_name

__all__ = [
    "BODY_MAX",
    "ClientAddress",
    "ClientAuth",
    "ClientCertRule",
    "ExtAuthz",
    "ExtAuthzBody",
    "IpRules",
    "Limits",
    "cert_names",
    "cidr",
]

#: largest body limit (bytes): Envoy's buffer limits are uint32
BODY_MAX = UINT32_MAX
BodyLimit = Annotated[int, IntRange(1, BODY_MAX)]
_PATH = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@/%-]*$")


def cidr(value: str) -> str:
    """A CIDR range (IPv4 or IPv6; a bare address is its /32 or /128), normalised.

    Host bits must be zero (``10.0.0.1/8`` is refused: it reads like a host yet means the
    whole network), so what is written is what is matched.
    """
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a CIDR range")
    try:
        network = ipaddress.ip_network(value.strip(), strict=True)
    except ValueError as exc:
        reason = str(exc)
        if "host bits set" in reason:
            raise ValueError(
                f"{value!r} has host bits set (the network is written with zeros)"
            ) from None
        raise ValueError(f"{value!r} is not a CIDR range (a.b.c.d/n or an IPv6 prefix)") from None
    return network.with_prefixlen


def _cidrs(values: list[str], what: str) -> list[str]:
    """Normalised, each once, none inside another of the same list (an overlap is a
    mistake: the narrower range means nothing)."""
    out = [cidr(v) for v in values]
    networks = [ipaddress.ip_network(v) for v in out]
    for i, a in enumerate(networks):
        for b in networks[i + 1 :]:
            if a.version == b.version and a.overlaps(b):
                raise ValueError(f"{what}: {a} and {b} overlap")
    return out


class ClientAddress(PolicyModel):
    """Which address is the client's: the TCP peer, or an address from X-Forwarded-For
    written by proxies the gateway trusts (set at most one of the two)."""

    trusted_hops: Annotated[int, IntRange(0, 16)] = Field(
        0,
        description="proxies in front of every request (0: the TCP peer is the client and "
        "X-Forwarded-For is never believed); with N, the Nth address from the right of "
        "X-Forwarded-For is the client's",
    )
    trusted_cidrs: list[str] = Field(
        default_factory=list,
        description="proxies trusted by address: X-Forwarded-For is read only when the TCP "
        "peer is in these ranges, and the client is its rightmost address outside them",
    )

    @field_validator("trusted_cidrs")
    @classmethod
    def _ranges(cls, value: list[str]) -> list[str]:
        return _cidrs(value, "trusted_cidrs")

    @model_validator(mode="after")
    def _one(self) -> ClientAddress:
        if self.trusted_hops and self.trusted_cidrs:
            raise ValueError("set trusted_hops or trusted_cidrs, not both")
        return self


class IpRules(PolicyModel):
    """Addresses refused (``deny``) and, when ``allow`` is not empty, the only ones admitted;
    deny wins. Matched against the client address (``client_address``) -> 403."""

    allow: list[str] = Field(default_factory=list, description="CIDR ranges admitted")
    deny: list[str] = Field(default_factory=list, description="CIDR ranges refused")

    @field_validator("allow")
    @classmethod
    def _allow(cls, value: list[str]) -> list[str]:
        return _cidrs(value, "allow")

    @field_validator("deny")
    @classmethod
    def _deny(cls, value: list[str]) -> list[str]:
        return _cidrs(value, "deny")

    @model_validator(mode="after")
    def _some(self) -> IpRules:
        if not self.allow and not self.deny:
            raise ValueError("set allow, deny or both")
        return self


class Limits(PolicyModel):
    """Sizes and timeouts of a gateway's requests; the defaults hold a slow or bloated
    client to bounds without touching ordinary traffic."""

    max_request_headers_kb: Annotated[int, IntRange(1, 8192)] = Field(
        60, description="request headers larger than this (KiB, all together) get 431"
    )
    max_headers_count: Annotated[int, IntRange(1, 10000)] = Field(
        100, description="requests with more headers are refused (431 / stream reset)"
    )
    request_headers_timeout: Duration = Field(
        "10s", description="the whole request head must arrive within this (slowloris): 408"
    )
    request_timeout: Duration | None = Field(
        None,
        description="the whole request, body included, must arrive within this (408); "
        "unset: no limit (long uploads)",
    )
    stream_idle_timeout: Duration = Field(
        "300s", description="a request with no bytes either way for this long is ended (408)"
    )
    idle_timeout: Duration = Field(
        "900s", description="a client connection without requests for this long is closed"
    )


class ExtAuthzBody(PolicyModel):
    """The request body sent along to the authorization service, up to ``max_bytes``."""

    max_bytes: BodyLimit = Field(8192, description="bytes of body buffered and sent")
    allow_partial: bool = Field(
        False,
        description="a larger body: send its first max_bytes (true), or refuse it with 413 (false)",
    )


class ExtAuthz(PolicyModel):
    """An authorization service asked about each request of the route before it is
    forwarded: allowed requests go on with the headers the service returns; denied ones get
    the service's status and body."""

    cluster: Name = Field(description="the service's cluster (http2 for grpc)")
    protocol: Literal["grpc", "http"] = Field(
        "grpc",
        description="grpc: envoy.service.auth.v3.Authorization/Check (OPA-Envoy); "
        "http: the request's method and path (after path_prefix) sent to the service",
    )
    timeout: Duration = Field("1s", description="no answer in time counts as a failure")
    failure_mode: Literal["closed", "open"] = Field(
        "closed",
        description="the service failing or timing out: refuse with 403 (closed), or let "
        "the request through (open, marked with x-envoy-auth-failure-mode-allowed)",
    )
    body: ExtAuthzBody | None = Field(None, description="also send the body; unset: headers only")
    headers: list[str] = Field(
        default_factory=list,
        description="request headers sent to the service (empty: all headers for grpc; "
        "for http, Envoy's default set: host, method, path, content-length, authorization)",
    )
    upstream_headers: list[str] = Field(
        default_factory=list,
        description="http: headers of the service's OK answer passed to the backend "
        "(grpc: every header the service returns)",
    )
    path_prefix: str | None = Field(None, description="http: prefixed to the checked path")

    @field_validator("headers", "upstream_headers")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        out = [header_name(v) for v in value]
        if len(set(out)) != len(out):
            raise ValueError("each header may appear once")
        return out

    @field_validator("path_prefix")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None and not _PATH.match(value):
            raise ValueError(f"{value[:40]!r} is not a path starting with '/'")
        return value

    @model_validator(mode="after")
    def _http_only(self) -> ExtAuthz:
        if self.protocol == "grpc":
            for field in ("upstream_headers", "path_prefix"):
                if getattr(self, field):
                    raise ValueError(f"{field}: only for protocol http")
        return self


class ClientAuth(PolicyModel):
    """Client certificates on an HTTPS gateway (mutual TLS), verified against ``ca``.

    ``required``: a client without a valid certificate is refused in the handshake;
    ``optional``: it may connect, and routes with ``client_cert`` rules answer it 403. The
    verified certificate (subject, URI and DNS SANs) reaches the backend in
    ``x-forwarded-client-cert``, which clients cannot set: Envoy replaces their copies.
    """

    mode: Literal["required", "optional"] = Field("required", description="required or optional")
    ca: str = Field(description="PEM bundle of the CAs client certificates must chain to")

    @field_validator("ca")
    @classmethod
    def _bundle(cls, value: str) -> str:
        from cryptography import x509

        text = "\n".join(line.rstrip() for line in value.replace("\r\n", "\n").strip().split("\n"))
        try:
            certs = x509.load_pem_x509_certificates(text.encode())
        except ValueError:
            raise ValueError(
                "not a PEM certificate bundle (expected -----BEGIN CERTIFICATE----- blocks)"
            ) from None
        for cert in certs:
            try:
                constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
            except x509.ExtensionNotFound:
                constraints = None
            if constraints is None or not constraints.value.ca:
                raise ValueError(f"{cert.subject.rfc4514_string()!r} is not a CA certificate")
        return text + "\n"


class ClientCertRule(PolicyModel):
    """Which verified client certificates a route admits (403 otherwise): ``names`` are
    matched against the certificate's URI SAN, else its DNS SAN, else its subject (as
    Envoy's RBAC reads a principal); empty: any certificate the gateway verified."""

    names: list[str] = Field(default_factory=list, description="allowed SANs or subjects")

    @field_validator("names")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        return cert_names(value)


def cert_names(value: list[str]) -> list[str]:
    """Certificate names (SANs, subjects): printable, at most 1 KiB, each once."""
    for name in value:
        if not name or any(ord(c) < 32 or ord(c) == 127 for c in name) or len(name) > 1024:
            raise ValueError(f"{name[:40]!r} is not a certificate name")
    if len(set(value)) != len(value):
        raise ValueError("each name may appear once")
    return value

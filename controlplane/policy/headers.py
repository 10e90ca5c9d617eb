"""Header names the gateway owns, and the checks for header names and values users choose.

One list, used both where users pick a header to *write* (a JWT provider's
``claims_to_headers``, a route's ``request_headers``/``response_headers``) and by the
translator where it emits those names. If a token claim or a route could write one of them,
it could pose as a consumer (``x-consumer-id``), break every API key of a gateway (the key
header), forge the client address seen by backends (``x-forwarded-for``), steer Envoy
(``x-envoy-*``) or the gateway's own routing (``x-gateway-*``), or corrupt the framing of
the request (hop-by-hop headers).

Values that end up in a header or a host are refused when they carry control characters:
a CR/LF would split the header, and Envoy refuses (NACKs) what it cannot send.
"""

from __future__ import annotations

import re

__all__ = [
    "API_KEY_HEADER",
    "CONSUMER_HEADER",
    "GATEWAY_HEADER_PREFIX",
    "HOP_BY_HOP_HEADERS",
    "RESERVED_REQUEST_HEADERS",
    "check_no_controls",
    "header_name",
    "host_value",
    "path_value",
    "request_header_target",
    "reserved_reason",
    "response_header_target",
]

#: the authenticated caller, set by the gateway (API key's consumer or the JWT's claim)
CONSUMER_HEADER = "x-consumer-id"
#: where clients send API keys
API_KEY_HEADER = "x-api-key"
#: every header the gateway uses internally starts with this (route scopes, cache keys,
#: aggregate specs and parts)
GATEWAY_HEADER_PREFIX = "x-gateway-"
ENVOY_HEADER_PREFIX = "x-envoy-"

#: RFC 9110 section 7.6.1 plus the ones Envoy treats alike; they describe one connection,
#: so writing them breaks framing or upgrades
HOP_BY_HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)

#: request headers only the client or the gateway itself may set, never a claim or a route
RESERVED_REQUEST_HEADERS: dict[str, str] = {
    CONSUMER_HEADER: "the gateway sets it to the authenticated consumer",
    API_KEY_HEADER: "clients send API keys in it",
    "authorization": "clients send tokens and credentials in it",
    "host": "it selects the virtual host (use host_rewrite)",
    "x-client": "the gateway's identity forwarding header",
    "x-forwarded-for": "the gateway sets the client address in it",
    "x-forwarded-proto": "the gateway sets the client's scheme in it",
    "x-forwarded-host": "it names the host the client asked for",
    "x-forwarded-port": "it names the port the client used",
    "x-forwarded-client-cert": "it carries the client certificate",
    "forwarded": "it carries the client address",
    "x-real-ip": "backends read the client address from it",
    "x-request-id": "it identifies the request in logs and analytics",
}

_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOST_RE = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
_NAME_RE = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]+$")
# C0 controls except tab, and DEL; C1 controls too (they survive UTF-8 into raw bytes)
_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def header_name(value: str) -> str:
    """A header name as Envoy writes it: lower case, an RFC 9110 token (no ``:``)."""
    lowered = value.lower()
    if not _NAME_RE.match(lowered):
        raise ValueError(f"{value!r} is not a valid HTTP header name")
    return lowered


def reserved_reason(name: str, *, request: bool = True) -> str | None:
    """Why the gateway keeps ``name`` for itself, or None when users may write it.

    Underscores count as dashes: CGI/WSGI backends read ``x_consumer_id`` and
    ``x-consumer-id`` as the same header, so either spelling is reserved."""
    name = name.lower().replace("_", "-")
    if name.startswith(":"):
        return "pseudo-headers are set by the HTTP protocol"
    if name in HOP_BY_HOP_HEADERS:
        return "a hop-by-hop header describes the connection, not the request"
    if name == "host":
        return RESERVED_REQUEST_HEADERS["host"]
    if not request:
        return None
    if name in RESERVED_REQUEST_HEADERS:
        return RESERVED_REQUEST_HEADERS[name]
    if name.startswith(ENVOY_HEADER_PREFIX):
        return "x-envoy-* headers steer Envoy itself"
    if name.startswith(GATEWAY_HEADER_PREFIX):
        return "x-gateway-* headers are the gateway's own"
    return None


def _target(value: str, *, request: bool) -> str:
    if value.startswith(":"):
        reason = reserved_reason(value)
        raise ValueError(f"{value!r} is reserved: {reason}")
    name = header_name(value)
    reason = reserved_reason(name, request=request)
    if reason:
        raise ValueError(f"{name!r} is reserved: {reason}")
    return name


def request_header_target(value: str) -> str:
    """A request header users may set, add, remove or fill from a claim."""
    return _target(value, request=True)


def response_header_target(value: str) -> str:
    """A response header users may set, add or remove."""
    return _target(value, request=False)


def check_no_controls(value: str, what: str = "value") -> str:
    """Refuse CR, LF, NUL and other control characters (a tab is allowed)."""
    m = _CONTROL_RE.search(value)
    if m:
        raise ValueError(f"{what} {value!r} contains a control character ({m.group()!r})")
    return value


def host_value(value: str, *, port: bool = True) -> str:
    """A host a header or a redirect carries: a DNS name or an IP address (IPv6 in
    brackets), with ``:port`` when ``port``; lower case. Anything else (spaces, control
    characters, a path, user info) is refused."""
    from .common import is_ip, parse_hostport

    check_no_controls(value, "host")
    text = value.strip().lower()
    if port and text.rpartition(":")[2].isdigit() and not is_ip(text):
        parse_hostport(text)  # host:port or [v6]:port, each half checked
        return text
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    if is_ip(bare):
        return f"[{bare}]" if ":" in bare else bare
    if not _HOST_RE.match(text) or len(text) > 253:
        raise ValueError(f"{value!r} is not a host name or IP address")
    return text


def path_value(value: str | None) -> str | None:
    """A path (or prefix) that ends up in ``:path`` or a ``location``: starts with '/',
    no spaces or control characters."""
    if value is None:
        return None
    check_no_controls(value, "path")
    if " " in value:
        raise ValueError(f"{value!r}: a path cannot contain spaces (write %20)")
    return value

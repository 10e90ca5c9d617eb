"""A small client of the controller's admin API (``/v1``), on the standard library.

``http.client`` and ``ssl`` import in a few milliseconds, where an HTTP library with its
dependencies costs tens (see ADR 0029): the CLI is started once per command, so its import
time is the user's waiting time. Every error the server returns (``{"error": {"code",
"message", "field"}}``) becomes the :mod:`controlplane.errors` class with the same exit code
as the local command; transport failures name the URL, never the token.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from ..errors import (
    Conflict,
    Forbidden,
    GatewayError,
    NotFound,
    PolicyInvalid,
    StoreError,
    Unauthorized,
    WaitFailed,
)

if TYPE_CHECKING:
    from .contexts import Target

__all__ = ["ApiUnavailable", "Client", "Response", "error_for"]

#: seconds to connect and for each read; ``--wait`` adds its own duration on top
DEFAULT_TIMEOUT = 30.0
#: the largest response body read (an export of a large policy is a few MB)
MAX_RESPONSE = 512 * 1024 * 1024

#: contract error code -> error class (and so exit code)
CODES: dict[str, type[GatewayError]] = {
    "invalid": PolicyInvalid,
    "rejected": PolicyInvalid,
    "too_large": PolicyInvalid,
    "not_found": NotFound,
    "conflict": Conflict,
    "unavailable": StoreError,
    "unauthorized": Unauthorized,
    "forbidden": Forbidden,
    "wait_failed": WaitFailed,
}
#: HTTP status -> error class, for answers without a contract error body
STATUSES: dict[int, type[GatewayError]] = {
    400: PolicyInvalid,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PolicyInvalid,
    422: PolicyInvalid,
    503: StoreError,
    504: WaitFailed,
}


class ApiUnavailable(StoreError):
    """The admin API could not be reached, or answered with something that is not the API."""


class Response:
    """Status, ETag revision and decoded JSON body of a successful call."""

    def __init__(self, status: int, headers: dict[str, str], data: Any) -> None:
        self.status = status
        self.headers = headers
        self.data = data

    @property
    def revision(self) -> int | None:
        etag = self.headers.get("etag", "").strip().removeprefix("W/").strip('"')
        return int(etag) if etag.isdigit() else None


def _one_line(text: str, limit: int = 500) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def error_for(status: int, body: bytes, url: str) -> GatewayError:
    """The GatewayError for an error answer: the contract's code decides the class (so the
    exit code); the message is the server's one line, with the field when it names one."""
    try:
        doc = json.loads(body)
        err = doc["error"]
        code, message, field = str(err.get("code", "")), err.get("message"), err.get("field")
    except (ValueError, KeyError, TypeError, AttributeError):
        code, message, field = "", None, None
        detail = _detail(body)
        if detail and detail[1]:  # a validation error naming its field
            message = detail[0]
        elif detail:
            reason = http.client.responses.get(status, "error")
            message = f"the admin API at {url} answered {status} {reason}: {detail[0]}"
    cls = CODES.get(code) or STATUSES.get(status)
    if cls is None:
        cls = StoreError if status >= 500 else GatewayError
    if not message:
        reason = http.client.responses.get(status, "error")
        message = f"the admin API at {url} answered {status} {reason}"
    message = _one_line(message)
    if field and str(field) not in message:
        message = f"{message} (field {field})"
    return cls(message)


def _detail(body: bytes) -> tuple[str, str] | None:
    """The first error of a framework's own answer (``{"detail": [{"loc", "msg"}]}`` or
    ``{"detail": "text"}``), for a server that did not map it to the contract's shape:
    (message, field), the field "" for a plain text detail."""
    try:
        detail = json.loads(body)["detail"]
    except (ValueError, KeyError, TypeError):
        return None
    if isinstance(detail, str):
        return detail, ""
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        first = detail[0]
        loc = [str(x) for x in first.get("loc", []) if x != "body"]
        field = ".".join(loc)
        return f"{field + ': ' if field else ''}{first.get('msg', 'invalid')}", field or "-"
    return None


class Client:
    """Calls to one admin API base URL with one bearer token."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        ca_file: str | None = None,
        insecure: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PolicyInvalid(f"admin API URL {url!r} must be http:// or https:// with a host")
        self.url = url.rstrip("/")
        self._tls = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._tls else 80)
        self._base = parts.path.rstrip("/")
        self._token = token
        self._timeout = timeout
        self._ca_file = ca_file
        self._conn: http.client.HTTPConnection | None = None
        if token and not self._tls and not insecure and not _is_loopback(self._host):
            raise PolicyInvalid(
                f"admin API URL {self.url}: refusing to send a token over plain HTTP to a "
                "non-loopback host (use https://, or GATEWAY_INSECURE=1 / context --insecure)"
            )

    @classmethod
    def for_target(cls, target: Target) -> Client:
        return cls(target.url, target.token(), ca_file=target.ca_file, insecure=target.insecure)

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self._conn is not None:
            self._conn.timeout = timeout
            return self._conn
        if self._tls:
            try:
                context = ssl.create_default_context(cafile=self._ca_file)
            except (OSError, ssl.SSLError) as exc:
                reason = getattr(exc, "strerror", None) or exc
                raise PolicyInvalid(f"CA file {self._ca_file}: cannot load: {reason}") from None
            self._conn = http.client.HTTPSConnection(
                self._host, self._port, timeout=timeout, context=context
            )
        else:
            self._conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        return self._conn

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: dict[str, Any] | None = None,
        revision: int | None = None,
        wait: str | None = None,
        content_type: str = "application/json",
        wait_rounds: int = 1,
        decode: bool = True,
    ) -> Response:
        """One call; raises the mapped GatewayError for any error answer.

        ``revision`` is sent as ``If-Match`` (``--expect-revision``); ``wait`` as the
        ``wait=`` query, and the read timeout grows by it (``wait_rounds`` times: an atomic
        apply may wait again for the revision that restores), since the server holds the
        answer until the proxies ACK. ``decode=False``: the body's bytes as they came
        (output passed through unparsed)."""
        params = {k: _query_value(v) for k, v in (query or {}).items() if v is not None}
        timeout = self._timeout
        if wait is not None:
            params["wait"] = wait
            timeout += _seconds(wait) * wait_rounds
        target = self._base + path + (f"?{urlencode(params)}" if params else "")
        headers = {"Accept": "application/json", "User-Agent": "gatewayctl"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        if revision is not None:
            headers["If-Match"] = f'"{revision}"'
        payload: bytes | None = None
        if body is not None:
            payload = body if isinstance(body, bytes) else _dumps(body)
            headers["Content-Type"] = content_type
        status, resp_headers, data = self._send(method, target, payload, headers, timeout)
        if status >= 400:
            raise error_for(status, data, self.url)
        if not data:
            return Response(status, resp_headers, None)
        if not decode:
            return Response(status, resp_headers, data)
        import orjson  # parses a 10,000-route listing (1.5 MB) ~3x faster than json

        try:
            decoded = orjson.loads(data)
        except ValueError:  # orjson.JSONDecodeError is a ValueError
            raise ApiUnavailable(
                f"the admin API at {self.url} answered {method} {path} with something that is "
                "not JSON (is this the controller's admin address?)"
            ) from None
        return Response(status, resp_headers, decoded)

    def _send(
        self,
        method: str,
        target: str,
        payload: bytes | None,
        headers: dict[str, str],
        timeout: float,
    ) -> tuple[int, dict[str, str], bytes]:
        for attempt in (1, 2):
            conn = self._connection(timeout)
            try:
                conn.request(method, target, body=payload, headers=headers)
                resp = conn.getresponse()
                data = resp.read(MAX_RESPONSE + 1)
                if len(data) > MAX_RESPONSE:
                    raise ApiUnavailable(f"the admin API at {self.url} sent an oversize answer")
                return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # a kept-alive connection the server closed: retry once on a new one
                # (only idempotent methods; a write may have happened)
                self.close()
                if attempt == 2 or method not in ("GET", "HEAD"):
                    raise ApiUnavailable(
                        f"the admin API at {self.url} closed the connection"
                    ) from None
            except ssl.SSLCertVerificationError as exc:
                self.close()
                raise ApiUnavailable(
                    f"cannot verify the admin API's certificate at {self.url}: "
                    f"{exc.verify_message or exc.reason} (give the CA with --ca-file)"
                ) from None
            except ssl.SSLError as exc:
                self.close()
                raise ApiUnavailable(
                    f"TLS with the admin API at {self.url} failed: {exc.reason}"
                ) from None
            except TimeoutError:
                self.close()
                raise ApiUnavailable(
                    f"the admin API at {self.url} did not answer within {timeout:g}s"
                ) from None
            except ConnectionRefusedError:
                self.close()
                raise ApiUnavailable(
                    f"cannot connect to the admin API at {self.url}: connection refused "
                    "(is `gatewayctl serve` running with --admin-address?)"
                ) from None
            except socket.gaierror as exc:
                self.close()
                raise ApiUnavailable(
                    f"cannot resolve the admin API host of {self.url}: {exc.strerror}"
                ) from None
            except OSError as exc:
                self.close()
                raise ApiUnavailable(
                    f"cannot reach the admin API at {self.url}: {exc.strerror or exc}"
                ) from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- the calls the CLI makes ------------------------------------------------------

    def get(self, path: str, **query: Any) -> Any:
        return self.request("GET", path, query=query).data

    def get_bytes(self, path: str, **query: Any) -> bytes:
        """The answer's body undecoded (a listing printed as the server encoded it)."""
        data = self.request("GET", path, query=query, decode=False).data
        return data if isinstance(data, bytes) else b""


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _seconds(duration: str) -> float:
    """Seconds of a ``--wait`` value already checked by the CLI (``30s``, ``500ms``, ``2m``)."""
    text = duration.strip()
    for suffix, factor in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if text.endswith(suffix):
            try:
                return float(text[: -len(suffix)]) * factor
            except ValueError:
                return DEFAULT_TIMEOUT
    try:
        return float(text)
    except ValueError:
        return DEFAULT_TIMEOUT


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _dumps(body: Any) -> bytes:
    """A request body: orjson (C) for large documents (an apply of 10,000 routes), the
    standard library for what orjson refuses (an integer beyond 64 bits)."""
    import orjson

    try:
        return orjson.dumps(body)
    except TypeError:
        return json.dumps(body).encode()

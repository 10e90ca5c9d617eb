"""A small client of the controller's admin API (``/v1``), on the standard library.

``http.client`` and ``ssl`` import in a few milliseconds, where an HTTP library with its
dependencies costs tens (see ADR 0029): the CLI is started once per command, so its import
time is the user's waiting time. Every error the server returns (``{"error": {"code",
"message", "field"}}``) becomes the :mod:`controlplane.errors` class with the same exit code
as the local command; transport failures name the URL, never the token.
"""

from __future__ import annotations

import json
import socket
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
    import ssl

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
        revision = err.get("revision")
    except (ValueError, KeyError, TypeError, AttributeError):
        code, message, field, revision = "", None, None, None
        detail = _detail(body)
        if detail and detail[1]:  # a validation error naming its field
            message = detail[0]
        elif detail:
            message = f"the admin API at {url} answered {status} {_reason(status)}: {detail[0]}"
    cls = CODES.get(code) or STATUSES.get(status)
    if cls is None:
        cls = StoreError if status >= 500 else GatewayError
    if not message:
        message = f"the admin API at {url} answered {status} {_reason(status)}"
    message = _one_line(message)
    if field and str(field) not in message:
        message = f"{message} (field {field})"
    if cls is WaitFailed:
        return WaitFailed(message, revision if isinstance(revision, int) else None)
    return cls(message)


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "error"


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
        self._conn: _Connection | None = None
        if token and not self._tls and not insecure and not _is_loopback(self._host):
            raise PolicyInvalid(
                f"admin API URL {self.url}: refusing to send a token over plain HTTP to a "
                "non-loopback host (use https://, or GATEWAY_INSECURE=1 / context --insecure)"
            )

    @classmethod
    def for_target(cls, target: Target) -> Client:
        return cls(target.url, target.token(), ca_file=target.ca_file, insecure=target.insecure)

    def _connection(self, timeout: float) -> _Connection:
        if self._conn is not None:
            self._conn.sock.settimeout(timeout)
            return self._conn
        context = None
        if self._tls:
            import ssl

            try:
                context = ssl.create_default_context(cafile=self._ca_file)
            except (OSError, ssl.SSLError) as exc:
                reason = getattr(exc, "strerror", None) or exc
                raise PolicyInvalid(f"CA file {self._ca_file}: cannot load: {reason}") from None
        sock = socket.create_connection((self._host, self._port), timeout=timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if context is not None:
                sock = context.wrap_socket(sock, server_hostname=self._host)
        except BaseException:
            sock.close()
            raise
        self._conn = _Connection(sock)
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
        host = (
            self._host if self._port == (443 if self._tls else 80) else f"{self._host}:{self._port}"
        )
        for attempt in (1, 2):
            try:
                conn = self._connection(timeout)
                status, resp_headers, data = conn.exchange(
                    method, target, {"Host": host, **headers}, payload
                )
                if len(data) > MAX_RESPONSE:
                    raise ApiUnavailable(f"the admin API at {self.url} sent an oversize answer")
                if not conn.reusable:
                    self.close()
                return status, resp_headers, data
            except _Disconnected:
                # a kept-alive connection the server closed: retry once on a new one
                # (only idempotent methods; a write may have happened)
                self.close()
                if attempt == 2 or method not in ("GET", "HEAD"):
                    raise ApiUnavailable(
                        f"the admin API at {self.url} closed the connection"
                    ) from None
            except OSError as exc:
                self.close()
                raise self._transport_error(exc, timeout) from None
        raise AssertionError("unreachable")

    def _transport_error(self, exc: OSError, timeout: float) -> ApiUnavailable:
        """One line naming the URL (never the token) for a failure to talk to the API."""
        if self._tls:
            import ssl

            if isinstance(exc, ssl.SSLCertVerificationError):
                return ApiUnavailable(
                    f"cannot verify the admin API's certificate at {self.url}: "
                    f"{exc.verify_message or exc.reason} (give the CA with --ca-file)"
                )
            if isinstance(exc, ssl.SSLError):
                return ApiUnavailable(f"TLS with the admin API at {self.url} failed: {exc.reason}")
        if isinstance(exc, TimeoutError):
            return ApiUnavailable(f"the admin API at {self.url} did not answer within {timeout:g}s")
        if isinstance(exc, ConnectionRefusedError):
            return ApiUnavailable(
                f"cannot connect to the admin API at {self.url}: connection refused "
                "(is `gatewayctl serve` running with --admin-address?)"
            )
        if isinstance(exc, socket.gaierror):
            return ApiUnavailable(
                f"cannot resolve the admin API host of {self.url}: {exc.strerror}"
            )
        return ApiUnavailable(f"cannot reach the admin API at {self.url}: {exc.strerror or exc}")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.sock.close()
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


class _Disconnected(Exception):
    """The server closed the connection before answering (a kept-alive one it timed out)."""


class _Connection:
    """One HTTP/1.1 connection, framed by h11 (the protocol state machine that uvicorn,
    the admin API's server, uses too). ``http.client`` imports ``email`` and ``ssl`` for
    every command, ~25 ms of a remote command's start; h11 shares its imports with the
    CLI's own (ADR 0041)."""

    def __init__(self, sock: socket.socket | ssl.SSLSocket) -> None:
        import h11

        self.sock = sock
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=64 * 1024)
        self.reusable = False

    def exchange(
        self, method: str, target: str, headers: dict[str, str], payload: bytes | None
    ) -> tuple[int, dict[str, str], bytes]:
        """Send one request, read its whole answer: (status, lower-cased headers, body)."""
        import h11

        conn = self._h11
        fields = list(headers.items())
        if payload is not None or method in ("POST", "PUT", "PATCH"):
            fields.append(("Content-Length", str(len(payload or b""))))
        try:
            out = conn.send(h11.Request(method=method, target=target, headers=fields))
            if payload:
                out += conn.send(h11.Data(data=payload))
            out += conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:
            raise PolicyInvalid(f"cannot send the request: {exc}") from None
        try:
            self.sock.sendall(out)
        except (BrokenPipeError, ConnectionResetError):
            raise _Disconnected from None
        status, answer, chunks, size = 0, {}, [], 0
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                if status == 0 and conn.their_state in (h11.SEND_RESPONSE, h11.CLOSED):
                    raise _Disconnected from None  # closed before any answer
                raise OSError(f"malformed answer: {exc}") from None
            if event is h11.NEED_DATA:
                try:
                    data = self.sock.recv(256 * 1024)
                except ConnectionResetError:
                    data = b""
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                answer = {k.decode("latin-1"): v.decode("latin-1") for k, v in event.headers}
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
                size += len(event.data)
                if size > MAX_RESPONSE:
                    break
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                if status == 0:
                    raise _Disconnected
                break
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            self.reusable = True
        else:
            self.reusable = False
        return status, answer, b"".join(chunks)

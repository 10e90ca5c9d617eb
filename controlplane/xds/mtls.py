"""The secured control channel: ADS over TLS, only for Envoys whose certificate the CA signed.

Enforcement is gRPC's own: ``ssl_server_credentials(require_client_auth=True)`` ends a TLS
handshake without a client certificate signed by the client CA before one xDS byte is read,
so no Python code runs for a refused client. gRPC reports such refusals only in its C core
log on file descriptor 2 ("Handshake failed with error ... PEER_DID_NOT_RETURN_A_CERTIFICATE"),
never to Python. :class:`HandshakeLog` therefore reads what the core writes to fd 2, turns
each refusal into a record of the controller's own log (``controlplane.xds.mtls``),
rate-limited per reason (a refused Envoy retries every second), and passes everything else
through unchanged. Accepted clients are logged with the identity their certificate names
(:func:`client_identity`). See docs/decisions/0007.

A certificate from the CA is not enough to receive a gateway: :class:`StreamAuthorizer`
checks that it names the ``node.cluster`` and ``node.id`` each stream claims (SAN URIs, see
:mod:`controlplane.pki`), and :func:`check_bind` refuses plaintext beyond loopback unless
told ``--insecure``. See docs/decisions/0018.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..errors import GatewayError
from ..pki import Identity, identity_of

__all__ = [
    "HandshakeLog",
    "StreamAuthorizer",
    "UnsafeBind",
    "check_bind",
    "client_identity",
    "is_loopback",
    "refusal_reason",
    "server_credentials",
]

log = logging.getLogger(__name__)

#: gRPC core's log line for a failed TLS handshake (ssl_transport_security.cc)
_HANDSHAKE_FAILED = re.compile(r"Handshake failed with (?:fatal )?error (\S+): (.*)$")
#: OpenSSL/BoringSSL reason -> what it means for an xDS client
_REASONS = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "the client sent no certificate",
    "CERTIFICATE_VERIFY_FAILED": "the client certificate is not signed by the client CA",
    "WRONG_VERSION_NUMBER": "the client does not speak TLS (plaintext xDS?)",
    "HTTP_REQUEST": "the client does not speak TLS (plaintext xDS?)",
    "TLSV1_ALERT_UNKNOWN_CA": "the client does not trust the controller's certificate",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the client rejected the controller's certificate",
    "CERTIFICATE_EXPIRED": "the client certificate has expired",
}


def _read(path: str, option: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise GatewayError(f"{option}: cannot read {path}: {exc.strerror}") from None


def server_credentials(
    cert: str,
    key: str,
    client_ca: str,
    options: tuple[str, str, str] = ("--xds-tls-cert", "--xds-tls-key", "--xds-client-ca"),
) -> grpc.ServerCredentials:
    """Credentials that require a client certificate signed by ``client_ca``.

    The files are checked first, so a mistake is one clear line at start-up (naming the
    option of ``options`` at fault) instead of every handshake failing later.
    """
    cert_opt, key_opt, ca_opt = options
    cert_pem = _read(cert, cert_opt)
    key_pem = _read(key, key_opt)
    ca_pem = _read(client_ca, ca_opt)
    try:
        leaf = x509.load_pem_x509_certificates(cert_pem)[0]
    except ValueError:
        raise GatewayError(f"{cert_opt}: {cert} is not a PEM certificate") from None
    try:
        private = serialization.load_pem_private_key(key_pem, password=None)
    except (TypeError, ValueError):
        raise GatewayError(f"{key_opt}: {key} is not an unencrypted PEM private key") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if private.public_key().public_bytes(der, spki) != leaf.public_key().public_bytes(der, spki):
        raise GatewayError(f"{key_opt}: {key} does not match the certificate {cert}")
    try:
        x509.load_pem_x509_certificates(ca_pem)
    except ValueError:
        raise GatewayError(f"{ca_opt}: {client_ca} is not a PEM certificate") from None
    return grpc.ssl_server_credentials(
        [(key_pem, cert_pem)], root_certificates=ca_pem, require_client_auth=True
    )


def client_identity(context: Any) -> str | None:
    """Who the client certificate names (subject and SANs), or None on a plain channel."""
    try:
        auth = context.auth_context()
    except Exception:
        return None
    subject = b"".join(auth.get("x509_subject", [])).decode(errors="replace")
    if not subject:
        return None
    sans = [s.decode(errors="replace") for s in auth.get("x509_subject_alternative_name", [])]
    return subject + (f" (SAN {', '.join(sans)})" if sans else "")


def refusal_reason(line: str) -> str | None:
    """The reason in a gRPC core handshake-failure line, or None for any other line."""
    match = _HANDSHAKE_FAILED.search(line)
    if match is None:
        return None
    detail = match.group(2)
    for code, meaning in _REASONS.items():
        if code in detail:
            return f"{meaning} ({code})"
    return detail.strip()


class HandshakeLog:
    """Relay gRPC core's fd-2 output and log every refused TLS handshake.

    Python's own stderr (and the logging handlers writing to it) is moved to a copy of the
    original descriptor first, so log records never pass through the relay and a blocked
    relay can never block logging.
    """

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self.refused = 0
        self._orig_fd: int | None = None
        self._stream: IO[str] | None = None
        self._old_stream: Any = None
        self._thread: threading.Thread | None = None
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def start(self) -> None:
        sys.stderr.flush()
        self._orig_fd = os.dup(2)
        stream = os.fdopen(os.dup(self._orig_fd), "w", buffering=1, errors="backslashreplace")
        self._old_stream, self._stream = sys.stderr, stream
        _move_handlers(self._old_stream, stream)
        sys.stderr = stream
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self._thread = threading.Thread(
            target=self._relay, args=(read_fd,), name="grpc-core-log", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Give fd 2 back; the relay drains what is left and ends."""
        if self._orig_fd is None:
            return
        os.dup2(self._orig_fd, 2)  # closes the pipe's last write end: the relay sees EOF
        if self._thread is not None:
            self._thread.join(2)
        _move_handlers(self._stream, self._old_stream)
        sys.stderr = self._old_stream
        if self._stream is not None:
            self._stream.close()
        os.close(self._orig_fd)
        self._orig_fd = None

    def _relay(self, read_fd: int) -> None:
        orig = self._orig_fd
        assert orig is not None
        with os.fdopen(read_fd, "rb") as pipe:
            for raw in pipe:
                reason = refusal_reason(raw.decode(errors="replace"))
                if reason is not None:
                    self._refused(reason)  # replaces gRPC's line (one per retry) with a record
                    continue
                with contextlib.suppress(OSError):
                    os.write(orig, raw)

    def _refused(self, reason: str) -> None:
        self.refused += 1
        now = time.monotonic()
        if now - self._last.get(reason, -1e9) < self.every:
            self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
            return
        self._last[reason] = now
        more = self._suppressed.pop(reason, 0)
        log.warning(
            "refused an xDS client: TLS handshake failed: %s%s",
            reason,
            f" ({more} more since the last report)" if more else "",
        )


def _move_handlers(old: Any, new: Any) -> None:
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    for lg in loggers:
        for handler in lg.handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is old:
                handler.setStream(new)


class UnsafeBind(GatewayError):
    """A control-plane port would be reachable from the network without mutual TLS."""

    exit_code = 2


def is_loopback(address: str) -> bool:
    """Whether ``host:port`` binds only the loopback interface (an empty host is every one)."""
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name may resolve to anything: not provably loopback


def check_bind(option: str, address: str, *, tls: bool, insecure: bool, tls_options: str) -> bool:
    """Refuse a plaintext bind beyond loopback unless ``insecure``; True when it is exposed.

    Whoever reaches the xDS port in plaintext gets every gateway's configuration (keys,
    private keys) and can pose as a proxy, so a network-reachable port requires mTLS.
    """
    if tls or is_loopback(address):
        return False
    if not insecure:
        raise UnsafeBind(
            f"{option}: {address} is not a loopback address and mutual TLS is off: anyone "
            f"who reaches it is trusted; give {tls_options} (gatewayctl pki init), bind "
            "127.0.0.1, or pass --insecure"
        )
    return True


class StreamAuthorizer:
    """Whether a stream's peer certificate permits the gateway and node id it claims.

    With mutual TLS every stream must present a client certificate whose SAN URIs
    (:mod:`controlplane.pki`) name ``node.cluster`` and ``node.id``; a refusal is logged at
    most once per client identity every ``every`` seconds. Without mutual TLS
    (``required=False``: loopback, or ``--insecure``) every client is trusted.
    """

    def __init__(self, required: bool, every: float = 10.0) -> None:
        self.required = required
        self.every = every
        self.refused = 0
        self._identities: dict[bytes, Identity] = {}
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def refusal(self, context: Any, gateway: str, node_id: str, what: str = "xDS") -> str | None:
        """None when the stream may proceed, else the reason (already logged)."""
        if not self.required:
            return None
        try:
            pems = context.auth_context().get("x509_pem_cert", [])
        except Exception:
            pems = []
        if not pems:
            reason, who = "the stream has no client certificate", "anonymous"
        else:
            try:
                identity: Identity | None = self._identity(pems[0])
            except ValueError:
                identity = None
            who = identity.subject if identity is not None else "unreadable"
            refused = (
                "the client certificate cannot be read"
                if identity is None
                else identity.refusal(gateway, node_id)
            )
            if refused is None:
                return None
            reason = refused
        self.refused += 1
        self._log(f"{what}|{who}|{reason}", what, reason, context)
        return reason

    def _identity(self, pem: bytes) -> Identity:
        identity = self._identities.get(pem)
        if identity is None:
            identity = identity_of(pem)
            if len(self._identities) > 10_000:
                self._identities.clear()
            self._identities[pem] = identity
        return identity

    def _log(self, key: str, what: str, reason: str, context: Any) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -1e9) < self.every:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        more = self._suppressed.pop(key, 0)
        try:
            peer = context.peer()
        except Exception:
            peer = "?"
        log.warning(
            "refused an %s stream from %s: %s%s",
            what,
            peer,
            reason,
            f" ({more} more since the last report)" if more else "",
        )

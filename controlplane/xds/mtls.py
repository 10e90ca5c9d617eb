"""The secured control channel: ADS over TLS, only for Envoys whose certificate the CA signed.

Enforcement is gRPC's own: ``ssl_server_credentials(require_client_auth=True)`` ends a TLS
handshake without a client certificate signed by the client CA before one xDS byte is read,
so no Python code runs for a refused client and no interceptor or ``auth_context()`` sees
it. The controller neither reads nor rewrites gRPC's own log (its handshake-failure line
reaches stderr as gRPC writes it); :class:`HandshakeCounter` counts the handshakes gRPC
starts through a documented hook, which the controller exports as a metric. Accepted
clients are logged with the identity their certificate names (:func:`client_identity`).
See docs/decisions/0007 and 0036.

A certificate from the CA is not enough to receive a gateway: :class:`StreamAuthorizer`
checks that it names the ``node.cluster`` and ``node.id`` each stream claims (SAN URIs, see
:mod:`controlplane.pki`), and :func:`check_bind` refuses plaintext beyond loopback unless
told ``--insecure``. See docs/decisions/0018.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..errors import GatewayError
from ..pki import Identity, identity_of
from ..policy.common import is_loopback_host

__all__ = [
    "HandshakeCounter",
    "StreamAuthorizer",
    "UnsafeBind",
    "check_bind",
    "client_identity",
    "is_loopback",
    "server_credentials",
]

log = logging.getLogger(__name__)


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
    handshakes: HandshakeCounter | None = None,
) -> grpc.ServerCredentials:
    """Credentials that require a client certificate signed by ``client_ca``.

    The files are checked first, so a mistake is one clear line at start-up (naming the
    option of ``options`` at fault) instead of every handshake failing later. With
    ``handshakes``, every TLS handshake gRPC starts is counted there.
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
    if handshakes is None:
        return grpc.ssl_server_credentials(
            [(key_pem, cert_pem)], root_certificates=ca_pem, require_client_auth=True
        )
    return grpc.dynamic_ssl_server_credentials(
        grpc.ssl_server_certificate_configuration([(key_pem, cert_pem)], root_certificates=ca_pem),
        handshakes,
        require_client_authentication=True,
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


class HandshakeCounter:
    """Count the TLS handshakes gRPC starts on the xDS port.

    gRPC calls the certificate-configuration fetcher of
    ``grpc.dynamic_ssl_server_credentials`` "on every new client connection before starting
    the TLS handshake" (its documented contract), so counting the calls counts connection
    attempts without reading gRPC's log. Returning None keeps the configured certificate.
    The count includes accepted clients: handshakes that keep rising while
    ``gateway_connected_proxies`` stays flat are a client being refused and retrying.
    """

    def __init__(self) -> None:
        self.started = 0
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:  # called from gRPC's core threads
            self.started += 1
        return None


class UnsafeBind(GatewayError):
    """A control-plane port would be reachable from the network without mutual TLS."""

    exit_code = 2


def is_loopback(address: str) -> bool:
    """Whether ``host:port`` binds only the loopback interface (an empty host is every one)."""
    return is_loopback_host(address.rpartition(":")[0].strip("[]"))


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

    def gateway_refusal(self, context: Any, gateway: str, what: str) -> str | None:
        """Like :meth:`refusal` for a stream that names only its gateway (the quota
        service's reports carry no node): None when the certificate permits ``gateway``."""
        if not self.required:
            return None
        try:
            pems = context.auth_context().get("x509_pem_cert", [])
            identity: Identity | None = self._identity(pems[0]) if pems else None
        except (ValueError, IndexError):
            identity = None
        if identity is not None and gateway in identity.gateways:
            return None
        reason = (
            "the stream has no readable client certificate"
            if identity is None
            else f"the client certificate {identity.subject} does not permit gateway {gateway!r}"
        )
        self.refused += 1
        self._log(f"{what}|{reason}", what, reason, context)
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

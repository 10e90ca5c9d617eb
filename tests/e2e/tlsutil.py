"""Test certificates made on the fly (``cryptography``), and an HTTPS client that picks SNI."""

from __future__ import annotations

import datetime as dt
import http.client
import ipaddress
import json
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@dataclass(frozen=True)
class Issued:
    cert: str
    key: str
    serial: int

    def write(self, folder: Path, stem: str) -> tuple[str, str]:
        """(certificate path, key path)."""
        cert, key = folder / f"{stem}.pem", folder / f"{stem}.key"
        cert.write_text(self.cert)
        key.write_text(self.key)
        return str(cert), str(key)


class TestCA:
    """A throwaway certificate authority."""

    __test__ = False  # not a pytest class

    def __init__(self, name: str = "gateway test CA") -> None:
        now = dt.datetime.now(dt.UTC)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def write(self, folder: Path, stem: str = "ca") -> str:
        path = folder / f"{stem}.pem"
        path.write_text(self.pem)
        return str(path)

    def issue(
        self,
        cn: str,
        dns: list[str] = (),  # type: ignore[assignment]
        *,
        ips: list[str] = (),  # type: ignore[assignment]
        client: bool = False,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> Issued:
        now = dt.datetime.now(dt.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        serial = x509.random_serial_number()
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(not_before or now - dt.timedelta(hours=1))
            .not_valid_after(not_after or now + dt.timedelta(days=7))
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]
                ),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return Issued(cert.public_bytes(serialization.Encoding.PEM).decode(), _key_pem(key), serial)


@dataclass
class TlsResponse:
    status: int
    headers: dict[str, str]
    body: Any
    #: the server certificate the client was shown
    peer: x509.Certificate

    @property
    def peer_cn(self) -> str:
        return str(self.peer.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def tls_connect(
    port: int, server_name: str | None, ca_pem: str, *, verify_name: bool = True
) -> ssl.SSLSocket:
    """A TLS connection to 127.0.0.1:port sending ``server_name`` as SNI."""
    ctx = ssl.create_default_context(cadata=ca_pem)
    ctx.check_hostname = verify_name and server_name is not None
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        return ctx.wrap_socket(sock, server_hostname=server_name)
    except BaseException:
        sock.close()
        raise


def https_request(
    port: int,
    server_name: str | None,
    path: str,
    ca_pem: str,
    *,
    verify_name: bool = True,
    tls: ssl.SSLSocket | None = None,
) -> TlsResponse:
    """One HTTPS request (on ``tls`` if given, which is left open)."""
    own = tls is None
    sock = tls or tls_connect(port, server_name, ca_pem, verify_name=verify_name)
    conn = http.client.HTTPConnection(server_name or "127.0.0.1", port, timeout=5)
    conn.sock = sock
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        data = resp.read()
        headers = {k.lower(): v for k, v in resp.getheaders()}
        der = sock.getpeercert(binary_form=True)
        assert der is not None
        peer = x509.load_der_x509_certificate(der)
    finally:
        if own:
            conn.close()
    try:
        body: Any = json.loads(data)
    except ValueError:
        body = data.decode(errors="replace")
    return TlsResponse(resp.status, headers, body, peer)

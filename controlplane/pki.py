"""The control channel's certificates: a CA, the controller's server certificate, and Envoy
client certificates that name what each Envoy may ask for.

An Envoy picks the gateway whose configuration it receives with ``node.cluster`` and names
itself with ``node.id``; both are claims the client makes. Its client certificate is what
the controller can verify, so the certificate carries the permitted values as SAN URIs in a
namespace of ours (docs/decisions/0018)::

    urn:gateway-controlplane:gateway:<gateway name>    (one or more)
    urn:gateway-controlplane:node:<node id>            (exactly one)

Values are percent-encoded (RFC 3986 unreserved characters and ``:`` stay as they are). A
certificate without such URIs (the controller's own, any other certificate of the CA)
permits nothing. ``gatewayctl pki init`` and ``pki issue`` write these files.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import PolicyInvalid

__all__ = [
    "GATEWAY_URI",
    "NODE_URI",
    "Identity",
    "identity_of",
    "init_ca",
    "issue_client",
    "issue_server",
]

#: SAN URI prefixes of the identities an Envoy client certificate grants
GATEWAY_URI = "urn:gateway-controlplane:gateway:"
NODE_URI = "urn:gateway-controlplane:node:"

CA_CERT, CA_KEY = "ca.pem", "ca.key"
SERVER_CERT, SERVER_KEY = "controller.pem", "controller.key"

#: what a node id or gateway name in a certificate may contain (what run-envoy.sh accepts)
_VALUE_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


@dataclass(frozen=True)
class Identity:
    """What a client certificate permits: the gateways it may receive, the node id it may use."""

    gateways: frozenset[str]
    nodes: frozenset[str]
    subject: str

    def refusal(self, gateway: str, node_id: str) -> str | None:
        """Why this certificate may not open a stream as (gateway, node_id), or None."""
        if gateway not in self.gateways:
            allowed = ", ".join(sorted(self.gateways)) or "none"
            return (
                f"the client certificate {self.subject} does not permit gateway "
                f"{gateway!r} (node.cluster); it permits: {allowed}"
            )
        if node_id not in self.nodes:
            allowed = ", ".join(sorted(self.nodes)) or "none"
            return (
                f"the client certificate {self.subject} does not permit node id "
                f"{node_id!r} (node.id); it permits: {allowed}"
            )
        return None


def identity_of(cert_pem: bytes) -> Identity:
    """The identities a PEM certificate grants (empty sets when it has no URIs of ours)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    unquote = urllib.parse.unquote
    gateways = {unquote(u[len(GATEWAY_URI) :]) for u in uris if u.startswith(GATEWAY_URI)}
    nodes = {unquote(u[len(NODE_URI) :]) for u in uris if u.startswith(NODE_URI)}
    return Identity(frozenset(gateways), frozenset(nodes), cert.subject.rfc4514_string())


def _uri(prefix: str, value: str) -> x509.UniformResourceIdentifier:
    return x509.UniformResourceIdentifier(prefix + urllib.parse.quote(value, safe=":"))


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write a new file with ``mode`` from the start (a key is never readable by others)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
    finally:
        os.close(fd)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _refuse_existing(*paths: Path) -> None:
    for path in paths:
        if path.exists():
            raise PolicyInvalid(f"{path}: already exists; remove it first or pick another path")


def _leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    cn: str,
    sans: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    days: int,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _host_sans(hosts: list[str], option: str) -> list[x509.GeneralName]:
    """IP addresses become IP SANs, anything else DNS SANs (run-envoy.sh and the sink
    cluster check the matching type)."""
    if not hosts:
        raise PolicyInvalid(f"{option}: at least one host name or IP is needed")
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?", host):
                raise PolicyInvalid(
                    f"{option}: {host!r} is neither an IP address nor a DNS name"
                ) from None
            sans.append(x509.DNSName(host))
    return sans


def init_ca(folder: Path, controller_hosts: list[str], *, days: int = 3650) -> list[Path]:
    """Create the CA and the controller's server certificate in ``folder``; the files made.

    ``controller_hosts`` are the names Envoys reach the controller by (``XDS_HOST``).
    """
    sans = _host_sans(controller_hosts, "--controller-host")
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / n for n in (CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY)]
    _refuse_existing(*paths)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("gateway-controlplane control channel CA"))
        .issuer_name(_name("gateway-controlplane control channel CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
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
        .sign(ca_key, hashes.SHA256())
    )
    server, server_key = _leaf(
        ca_cert, ca_key, "controller", sans, ExtendedKeyUsageOID.SERVER_AUTH, days
    )
    _write(paths[1], _key_pem(ca_key), 0o600)
    _write(paths[0], _cert_pem(ca_cert), 0o644)
    _write(paths[3], _key_pem(server_key), 0o600)
    _write(paths[2], _cert_pem(server), 0o644)
    return paths


def _load_ca(folder: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate((folder / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((folder / CA_KEY).read_bytes(), password=None)
    except OSError as exc:
        raise PolicyInvalid(
            f"--dir: cannot read the CA in {folder}: {exc.strerror} (run `gatewayctl pki init`)"
        ) from None
    except ValueError as exc:
        raise PolicyInvalid(f"--dir: the CA in {folder} is not readable PEM: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PolicyInvalid(f"--dir: {folder / CA_KEY} is not the EC key `pki init` writes")
    return cert, key


def issue_client(
    folder: Path, gateways: list[str], node_id: str, out: Path, *, days: int = 365
) -> tuple[Path, Path]:
    """An Envoy client certificate for ``node_id`` serving one of ``gateways``:
    ``out``.pem and ``out``.key (0600)."""
    if not gateways:
        raise PolicyInvalid("--gateway: at least one gateway the Envoy may serve is needed")
    for option, value in [("--node", node_id), *(("--gateway", g) for g in gateways)]:
        if not _VALUE_RE.match(value):
            raise PolicyInvalid(f"{option}: {value!r} must match {_VALUE_RE.pattern}")
    ca_cert, ca_key = _load_ca(folder)
    cert_path, key_path = out.with_name(out.name + ".pem"), out.with_name(out.name + ".key")
    _refuse_existing(cert_path, key_path)
    sans: list[x509.GeneralName] = [_uri(NODE_URI, node_id)]
    sans += [_uri(GATEWAY_URI, g) for g in dict.fromkeys(gateways)]
    cert, key = _leaf(ca_cert, ca_key, node_id, sans, ExtendedKeyUsageOID.CLIENT_AUTH, days)
    out.parent.mkdir(parents=True, exist_ok=True)
    _write(key_path, _key_pem(key), 0o600)
    _write(cert_path, _cert_pem(cert), 0o644)
    return cert_path, key_path


def issue_server(
    folder: Path, hosts: list[str], out: Path, *, days: int = 365
) -> tuple[Path, Path]:
    """A server certificate for another service of the control plane (an analytics sink, a
    second controller) that Envoys reach by ``hosts``: ``out``.pem and ``out``.key (0600)."""
    sans = _host_sans(hosts, "--host")
    ca_cert, ca_key = _load_ca(folder)
    cert_path, key_path = out.with_name(out.name + ".pem"), out.with_name(out.name + ".key")
    _refuse_existing(cert_path, key_path)
    cert, key = _leaf(ca_cert, ca_key, hosts[0], sans, ExtendedKeyUsageOID.SERVER_AUTH, days)
    out.parent.mkdir(parents=True, exist_ok=True)
    _write(key_path, _key_pem(key), 0o600)
    _write(cert_path, _cert_pem(cert), 0o644)
    return cert_path, key_path

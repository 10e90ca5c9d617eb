"""TLS certificates the gateways serve, and a gateway's HTTPS settings.

A certificate is checked with the ``cryptography`` package when it is entered, so Envoy is
never sent one it would refuse (ADR 0005): the chain and the key parse, the key belongs to
the first certificate, the key type is one Envoy serves (RSA of 2048 bits or more, ECDSA
P-256/P-384/P-521, Ed25519; measured with ``envoy --mode validate``), and it has not
expired. Expiry is checked only on input (:meth:`Certificate.input_problem`): a stored
certificate that expires later must still load, or the controller could not start.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field, field_validator, model_validator

from .bounds import Port
from .common import Name, PolicyModel
from .edge import ClientAuth

if TYPE_CHECKING:
    from cryptography import x509

# ``cryptography`` is imported where a certificate or key is read, not with the models:
# every command that loads the policy would pay for it (~35-60 ms of a local command's
# start-up, most of it ``cryptography.x509``), and most policies hold no certificate

__all__ = ["CertInfo", "Certificate", "GatewayTls", "cert_info", "cert_summary"]

#: curves Envoy (BoringSSL) serves; secp256k1 and others are refused by Envoy
_CURVES = {"secp256r1", "secp384r1", "secp521r1"}
_MIN_RSA_BITS = 2048


@dataclass(frozen=True)
class CertInfo:
    """What ``cert list`` shows and the translator needs from a certificate chain."""

    subject: str
    issuer: str
    dns_names: tuple[str, ...]
    not_before: dt.datetime
    not_after: dt.datetime
    serial: int


def _normalise(pem: str) -> str:
    lines = [line.rstrip() for line in pem.replace("\r\n", "\n").strip().split("\n")]
    return "\n".join(lines) + "\n"


@lru_cache(maxsize=256)
def _chain(pem: str) -> tuple[x509.Certificate, ...]:
    from cryptography import x509

    try:
        return tuple(x509.load_pem_x509_certificates(pem.encode()))
    except ValueError:
        raise ValueError(
            "not a PEM certificate chain (expected -----BEGIN CERTIFICATE----- blocks)"
        ) from None


@lru_cache(maxsize=256)
def cert_info(pem: str) -> CertInfo:
    """Subject, SANs and validity of the first certificate of a PEM chain."""
    from cryptography import x509

    leaf = _chain(pem)[0]
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(dict.fromkeys(n.lower() for n in san.get_values_for_type(x509.DNSName)))
    except x509.ExtensionNotFound:
        dns = ()
    return CertInfo(
        subject=leaf.subject.rfc4514_string(),
        issuer=leaf.issuer.rfc4514_string(),
        dns_names=dns,
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        serial=leaf.serial_number,
    )


def _load_key(pem: str) -> Any:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    try:
        return serialization.load_pem_private_key(pem.encode(), password=None)
    except TypeError:
        raise ValueError(
            "encrypted private keys are not supported; decrypt it first "
            "(openssl pkey -in KEY -out PLAIN)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError("not a PEM private key (expected -----BEGIN PRIVATE KEY-----)") from None


def _key_problem(key: Any) -> str | None:
    """Why Envoy would refuse this key type, or None."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < _MIN_RSA_BITS:
            return f"RSA keys need {_MIN_RSA_BITS} bits or more (Envoy's rule), got {key.key_size}"
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name not in _CURVES:
            return f"curve {key.curve.name} is not served by Envoy (use P-256, P-384 or P-521)"
        return None
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    return f"{type(key).__name__.removeprefix('_')} keys are not served by Envoy"


def _public_der(public_key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(
        public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


class Certificate(PolicyModel):
    """A server certificate chain and its private key, sent to Envoy over SDS."""

    kind: ClassVar[str] = "certificate"
    #: fields never shown by ``cert get`` (without --show-key) or in change summaries
    secret_fields: ClassVar[tuple[str, ...]] = ("key",)

    name: Name
    cert: str = Field(description="PEM certificate chain, the server certificate first")
    key: str = Field(description="PEM private key of the server certificate", repr=False)

    @field_validator("cert")
    @classmethod
    def _cert(cls, value: str) -> str:
        from cryptography.hazmat.primitives import serialization

        value = _normalise(value)
        chain = _chain(value)
        # the canonical text: just the certificates, whatever came around them
        return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in chain)

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        value = _normalise(value)
        problem = _key_problem(_load_key(value))
        if problem:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _key_matches(self) -> Certificate:
        leaf = _chain(self.cert)[0]
        if _public_der(_load_key(self.key).public_key()) != _public_der(leaf.public_key()):
            raise ValueError("key: does not match the certificate")
        return self

    def info(self) -> CertInfo:
        return cert_info(self.cert)

    def input_problem(self, now: dt.datetime | None = None) -> str | None:
        """What makes this certificate unfit to be entered now (not checked on load)."""
        not_after = self.info().not_after
        if not_after <= (now or dt.datetime.now(dt.UTC)):
            return f"cert: expired on {not_after:%Y-%m-%d %H:%M:%S} UTC"
        return None

    def summary(self) -> dict[str, Any]:
        """The certificate as ``cert list`` and ``cert get`` show it, without the key."""
        return cert_summary(self.name, self.cert)


def cert_summary(name: str, cert: str) -> dict[str, Any]:
    """What ``cert list``/``get`` show of a certificate: read from the chain alone, so the
    CLI shows the same for one the admin API sent without its private key."""
    info = cert_info(cert)
    return {
        "name": name,
        "subject": info.subject,
        "issuer": info.issuer,
        "dns_names": list(info.dns_names),
        "not_before": info.not_before.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "not_after": info.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "serial": f"{info.serial:x}",
        "chain_length": len(_chain(cert)),
    }


class GatewayTls(PolicyModel):
    """HTTPS on the gateway's port, with one certificate per set of host names (by SNI)."""

    certificates: list[Name] = Field(
        min_length=1,
        description="Certificates by name; a client's SNI picks the one whose SANs match, "
        "the first is also served to clients naming no (or another) host",
    )
    http_redirect_port: Port | None = Field(
        None, description="Also listen here for plain HTTP and redirect to HTTPS"
    )
    client_auth: ClientAuth | None = Field(
        None, description="client certificates (mutual TLS); unset: none asked for"
    )

    @field_validator("certificates")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("names must be unique")
        return value

    def references(self) -> list[tuple[str, str]]:
        return [("certificate", name) for name in self.certificates]

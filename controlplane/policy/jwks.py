"""Checking an inline JSON Web Key Set the way Envoy's jwt_authn will read it.

Envoy refuses a whole provider (a NACK of the gateway's filter config) when a key of its
inline JWKS does not parse. Every key is therefore built here with ``cryptography``: an RSA
modulus must be odd and larger than its odd exponent, an EC point must lie on a curve Envoy
supports, an Ed25519 key is 32 bytes, and ``alg`` (when given) must fit the key. Each rule
was compared with ``envoy --mode validate`` (Envoy 1.40) on keys that break it.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

__all__ = ["MAX_JWKS_BYTES", "check_jwks", "loads_strict"]

#: an inline key set is a handful of public keys; Envoy holds it in every filter config
MAX_JWKS_BYTES = 256 * 1024
#: BoringSSL's bounds on an RSA public key, as Envoy applies them (measured: 511 bits and
#: 16,392 bits refused, 512 and 16,384 accepted; of the exponents 3, 5, 7, 17, 257, 65535,
#: 65537, 65539, 2^31+1 only 3 and 65537 accepted)
_MIN_RSA_BITS = 512
_MAX_RSA_BITS = 16384
_RSA_EXPONENTS = (3, 65537)
_B64URL = re.compile(r"^[A-Za-z0-9_-]+={0,2}$")
#: JWK curve -> (``cryptography``'s curve class name, its ``alg``)
_CURVES = {
    "P-256": ("SECP256R1", "ES256"),
    "P-384": ("SECP384R1", "ES384"),
    "P-521": ("SECP521R1", "ES512"),
}
_ALGS = {
    "RSA": {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"},
    "oct": {"HS256", "HS384", "HS512"},
    "OKP": {"EdDSA"},
}


def loads_strict(text: str) -> Any:
    """``json.loads`` that refuses duplicate member names and deep nesting with one line."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                raise ValueError(f"duplicate member {key!r}")
            out[key] = value
        return out

    try:
        return json.loads(text, object_pairs_hook=pairs)
    except RecursionError:
        raise ValueError("is nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"is not JSON: {exc}") from None


def _bytes(key: dict[str, Any], param: str) -> bytes:
    value = key.get(param)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{param} is missing")
    if not _B64URL.match(value):
        raise ValueError(f"{param} is not base64url (A-Z a-z 0-9 - _)")
    data = base64.urlsafe_b64decode(value.rstrip("=") + "=" * (-len(value.rstrip("=")) % 4))
    if not data:
        raise ValueError(f"{param} is empty")
    return data


def _check_key(key: Any) -> None:
    # imported here, not with the policy models: most policies hold no inline key set
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if not isinstance(key, dict):
        raise ValueError("must be a JSON object")
    kty = key.get("kty")
    alg = key.get("alg")
    if alg is not None and not isinstance(alg, str):
        raise ValueError("alg must be a string")
    if kty == "RSA":
        n = int.from_bytes(_bytes(key, "n"), "big")
        e = int.from_bytes(_bytes(key, "e"), "big")
        if not _MIN_RSA_BITS <= n.bit_length() <= _MAX_RSA_BITS or n % 2 == 0:
            raise ValueError(
                f"n is not an RSA modulus (an odd number of {_MIN_RSA_BITS}-{_MAX_RSA_BITS} bits)"
            )
        if e not in _RSA_EXPONENTS:
            raise ValueError("e must be 3 or 65537 (AQAB), the exponents Envoy accepts")
        try:
            rsa.RSAPublicNumbers(e, n).public_key()
        except ValueError as exc:
            raise ValueError(f"not a valid RSA public key ({exc})") from None
        allowed = _ALGS["RSA"]
    elif kty == "EC":
        crv = key.get("crv")
        if crv not in _CURVES:
            raise ValueError(f"crv must be one of {', '.join(_CURVES)}")
        curve_name, ec_alg = _CURVES[crv]
        curve = getattr(ec, curve_name)
        x = int.from_bytes(_bytes(key, "x"), "big")
        y = int.from_bytes(_bytes(key, "y"), "big")
        try:
            ec.EllipticCurvePublicNumbers(x, y, curve()).public_key()
        except ValueError:
            raise ValueError(f"x, y is not a point on {crv}") from None
        allowed = {ec_alg}
    elif kty == "oct":
        _bytes(key, "k")
        allowed = _ALGS["oct"]
    elif kty == "OKP":
        if key.get("crv") != "Ed25519":
            raise ValueError("crv must be Ed25519 (the only OKP curve Envoy verifies)")
        try:
            ed25519.Ed25519PublicKey.from_public_bytes(_bytes(key, "x"))
        except ValueError:
            raise ValueError("x is not an Ed25519 public key (32 bytes)") from None
        allowed = _ALGS["OKP"]
    else:
        raise ValueError("kty must be one of RSA, EC, oct, OKP")
    if alg is not None and alg not in allowed:
        raise ValueError(f"alg {alg!r} does not fit a {kty} key ({', '.join(sorted(allowed))})")


def check_jwks(text: str) -> str:
    """Refuse a key set Envoy would refuse, naming the key and the reason in one line."""
    if len(text.encode()) > MAX_JWKS_BYTES:
        raise ValueError(f"is larger than {MAX_JWKS_BYTES // 1024} KB")
    data = loads_strict(text)
    keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(keys, list) or not keys:
        raise ValueError('must be a JSON Web Key Set: {"keys": [...]} with at least one key')
    for i, key in enumerate(keys):
        try:
            _check_key(key)
        except ValueError as exc:
            raise ValueError(f"keys[{i}]: {exc}") from None
    return text

"""Certificates and HTTPS gateways without Envoy: validation, SNI names, what a rotation
rebuilds, and the control channel's handshake counter."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from controlplane.errors import PolicyInvalid, TranslationError
from controlplane.policy import Bundle, Certificate, Gateway, parse_object
from controlplane.runner import Runner
from controlplane.store import Store
from controlplane.translate import LISTENER, SECRET, Translator, build_views
from controlplane.translate.tls import server_names
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.mtls import HandshakeCounter, client_identity, server_credentials
from controlplane.xds.snapshot import FragmentCache, build_snapshot
from tests.e2e.tlsutil import TestCA

NOW = dt.datetime.now(dt.UTC)


def _self_signed(key: Any, names: list[str], *, days: int = 30, start: int = -1) -> str:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else "x")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW + dt.timedelta(days=start))
        .not_valid_after(NOW + dt.timedelta(days=days))
    )
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM).decode()


def _pem(key: Any, password: bytes | None = None) -> str:
    encryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    ).decode()


def _cert(name: str, names: list[str], **kw: Any) -> dict[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    return {"name": name, "cert": _self_signed(key, names, **kw), "key": _pem(key)}


def _refusal(data: dict[str, str]) -> str:
    with pytest.raises(PolicyInvalid) as info:
        parse_object("certificate", data)
    return str(info.value)


def test_certificate_is_normalised_and_summarised() -> None:
    data = _cert("api", ["API.example.com", "*.example.com"])
    cert = parse_object("certificate", {**data, "cert": "Bag Attributes\n" + data["cert"]})
    assert isinstance(cert, Certificate)
    assert cert.cert == data["cert"]  # just the PEM blocks
    assert cert.info().dns_names == ("api.example.com", "*.example.com")
    summary = cert.summary()
    assert "key" not in summary and summary["dns_names"] == ["api.example.com", "*.example.com"]
    assert "PRIVATE" not in repr(cert)


def test_chain_with_intermediate_and_the_key_of_the_first() -> None:
    ca = TestCA()
    issued = ca.issue("api.example.com", ["api.example.com"])
    cert = parse_object(
        "certificate", {"name": "api", "cert": issued.cert + ca.pem, "key": issued.key}
    )
    assert cert.summary()["chain_length"] == 2  # type: ignore[attr-defined]
    # the key must belong to the first certificate, not to one further down the chain
    assert "key: does not match the certificate" in _refusal(
        {"name": "api", "cert": ca.pem + issued.cert, "key": issued.key}
    )


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (rsa.generate_private_key(65537, 1024), "RSA keys need 2048 bits or more"),
        (ec.generate_private_key(ec.SECP256K1()), "curve secp256k1 is not served by Envoy"),
    ],
    ids=["rsa-1024", "secp256k1"],
)
def test_key_types_envoy_refuses(key: Any, expected: str) -> None:
    data = {"name": "t", "cert": _self_signed(key, ["t.example"]), "key": _pem(key)}
    assert expected in _refusal(data)


@pytest.mark.parametrize(
    "key",
    [
        rsa.generate_private_key(65537, 2048),
        ec.generate_private_key(ec.SECP384R1()),
        ed25519.Ed25519PrivateKey.generate(),
    ],
    ids=["rsa-2048", "p-384", "ed25519"],
)
def test_key_types_envoy_serves(key: Any) -> None:
    parse_object("certificate", {"name": "t", "cert": _self_signed(key, ["t"]), "key": _pem(key)})


def test_refusals_name_the_field() -> None:
    good = _cert("api", ["api.example.com"])
    other = _cert("other", ["other.example.com"])
    key = ec.generate_private_key(ec.SECP256R1())
    assert _refusal({**good, "key": other["key"]}) == (
        "certificate 'api': key: does not match the certificate"
    )
    assert _refusal({**good, "key": _pem(key, b"secret")}).startswith(
        "certificate 'api': key: encrypted private keys are not supported"
    )
    assert _refusal({**good, "key": "nope"}).startswith("certificate 'api': key: not a PEM")
    assert _refusal({**good, "cert": "nope"}).startswith("certificate 'api': cert: not a PEM")
    expired = _cert("old", ["old.example.com"], days=-1, start=-10)
    assert _refusal(expired).startswith("certificate 'old': cert: expired on ")


def test_an_expired_stored_certificate_still_loads(tmp_path: Path) -> None:
    """Expiry is an input check: a controller restarting after expiry must still start."""
    expired = Certificate.model_validate(_cert("old", ["old.example.com"], days=-1, start=-10))
    store = Store(str(tmp_path / "gateway.db"), create=True)
    try:
        store.create(expired)
        _, objects = store.load_all()
        assert [o.name for o in objects] == ["old"]  # type: ignore[attr-defined]
        assert store.get("certificate", "old") == expired
    finally:
        store.close()


def test_gateway_tls_settings() -> None:
    gw = parse_object("gateway", {"name": "g", "port": 443, "tls": {"certificates": ["a", "b"]}})
    assert gw.references() == [("certificate", "a"), ("certificate", "b")]  # type: ignore[attr-defined]
    for tls, expected in (
        ({"certificates": []}, "tls.certificates: List should have at least 1 item"),
        ({"certificates": ["a", "a"]}, "tls.certificates: names must be unique"),
        ({"certificates": ["a"], "http_redirect_port": 443}, "must differ from the gateway's"),
        (
            {"certificates": ["a"], "http_redirect_port": 0},
            "tls.http_redirect_port: 0 is out of range",
        ),
    ):
        with pytest.raises(PolicyInvalid, match=expected):
            parse_object("gateway", {"name": "g", "port": 443, "tls": tls})
    with pytest.raises(PolicyInvalid, match="gateway 'g': certificate 'a' does not exist"):
        Bundle.parse({"gateways": [{"name": "g", "port": 443, "tls": {"certificates": ["a"]}}]})


def test_a_name_in_two_certificates_goes_to_the_first() -> None:
    a = Certificate.model_validate(_cert("a", ["www.example.com", "a.example.com"]))
    b = Certificate.model_validate(_cert("b", ["www.example.com", "b.example.com"]))
    c = Certificate.model_validate(_cert("c", ["a.example.com"]))
    assert [(x.name, n) for x, n in server_names([a, b, c])] == [
        ("a", ["www.example.com", "a.example.com"]),
        ("b", ["b.example.com"]),
        ("c", []),
    ]


def test_a_missing_certificate_keeps_the_snapshot_unpublished() -> None:
    gw = Gateway.model_validate({"name": "g", "port": 443, "tls": {"certificates": ["gone"]}})
    [view] = build_views([gw], [], {}).values()
    resources = Translator().translate(view)
    with pytest.raises(TranslationError, match="needs Secret 'gone', which is missing"):
        build_snapshot("g", 1, resources, None, FragmentCache())


def test_rotation_rebuilds_only_the_gateways_serving_the_certificate(tmp_path: Path) -> None:
    """A new certificate changes the Secret of its gateways; their listeners stay the same."""
    first = _cert("api", ["api.example.com"])
    bundle = Bundle.parse(
        {
            "certificates": [first],
            "gateways": [
                {"name": "secure", "port": 8443, "tls": {"certificates": ["api"]}},
                {"name": "plain", "port": 8080},
            ],
        }
    )
    store = Store(str(tmp_path / "gateway.db"), create=True)

    async def scenario() -> None:
        store.apply(bundle)
        cache = SnapshotCache()
        runner = Runner(store, cache, controller="t", xds_address="127.0.0.1:0")
        await runner.load()
        secure, plain = cache.get("secure"), cache.get("plain")
        revision = store.replace(Certificate.model_validate(_cert("api", ["api.example.com"])))
        await runner.poll()
        after = cache.get("secure")
        assert after.changed_revision == revision
        assert after.type_version(SECRET) != secure.type_version(SECRET)
        assert after.type_version(LISTENER) == secure.type_version(LISTENER)
        assert cache.get("plain").changed_revision == plain.changed_revision

    try:
        asyncio.run(scenario())
    finally:
        store.close()


# -- the control channel's handshake counter -------------------------------------------


def test_handshakes_are_counted_and_refused_by_grpc(tmp_path: Path) -> None:
    """Every connection attempt is counted (accepted or refused), gRPC enforces the client
    certificate, and the accepted peer's identity comes from its auth context."""
    ca, other = TestCA("xds CA"), TestCA("another CA")
    cert, key = ca.issue("localhost", ["localhost"], ips=["127.0.0.1"]).write(tmp_path, "srv")
    ca_path = ca.write(tmp_path)
    good = ca.issue("good", ["good"], client=True)
    stranger = other.issue("stranger", ["stranger"], client=True)
    counter = HandshakeCounter()
    seen: list[str | None] = []

    async def scenario() -> dict[str, str]:
        server = grpc.aio.server()

        async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            seen.append(client_identity(context))
            return request

        handler = grpc.method_handlers_generic_handler(
            "t.T", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
        )
        server.add_generic_rpc_handlers((handler,))
        port = server.add_secure_port(
            "127.0.0.1:0", server_credentials(cert, key, ca_path, handshakes=counter)
        )
        await server.start()
        target = f"localhost:{port}"
        clients: dict[str, grpc.ChannelCredentials | None] = {
            "good": grpc.ssl_channel_credentials(
                ca.pem.encode(), good.key.encode(), good.cert.encode()
            ),
            "no certificate": grpc.ssl_channel_credentials(ca.pem.encode()),
            "another CA": grpc.ssl_channel_credentials(
                ca.pem.encode(), stranger.key.encode(), stranger.cert.encode()
            ),
            "plaintext": None,
        }
        outcome: dict[str, str] = {}
        try:
            for name, creds in clients.items():
                channel = (
                    grpc.aio.secure_channel(target, creds)
                    if creds is not None
                    else grpc.aio.insecure_channel(target)
                )
                async with channel:
                    call = channel.unary_unary("/t.T/Echo")
                    try:
                        outcome[name] = (await call(b"hi", timeout=30)).decode()
                    except grpc.aio.AioRpcError as exc:
                        outcome[name] = exc.code().name
        finally:
            await server.stop(0)
        return outcome

    outcome = asyncio.run(scenario())
    assert outcome == {
        "good": "hi",
        "no certificate": "UNAVAILABLE",
        "another CA": "UNAVAILABLE",
        "plaintext": "UNAVAILABLE",
    }
    assert len(seen) == 1 and (seen[0] or "").startswith("CN=good")
    # one handshake per connection attempt; a refused client may be retried by its channel
    assert counter.started >= 4

"""Control-channel certificates (``gatewayctl pki``) and the checks built on them."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from controlplane.errors import PolicyInvalid
from controlplane.pki import identity_of, init_ca, issue_client, issue_server
from controlplane.xds.mtls import StreamAuthorizer, UnsafeBind, check_bind, is_loopback
from tests.e2e.tlsutil import TestCA


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    init_ca(tmp_path / "ca", ["controller", "127.0.0.1"])
    return tmp_path / "ca"


def test_keys_are_written_0600_and_never_overwritten(ca: Path, tmp_path: Path) -> None:
    for name in ("ca.key", "controller.key"):
        assert stat.S_IMODE((ca / name).stat().st_mode) == 0o600
    _, key = issue_client(ca, ["public"], "envoy-1", tmp_path / "envoy-1")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    with pytest.raises(PolicyInvalid, match="already exists"):
        issue_client(ca, ["public"], "envoy-1", tmp_path / "envoy-1")
    with pytest.raises(PolicyInvalid, match=r"ca\.pem: already exists"):
        init_ca(ca, ["controller"])


def test_a_client_certificate_permits_its_gateways_and_its_node_only(
    ca: Path, tmp_path: Path
) -> None:
    cert, _ = issue_client(ca, ["public", "internal"], "envoy-1", tmp_path / "e")
    identity = identity_of(cert.read_bytes())
    assert identity.gateways == {"public", "internal"} and identity.nodes == {"envoy-1"}
    assert identity.refusal("public", "envoy-1") is None
    assert identity.refusal("internal", "envoy-1") is None
    assert "does not permit gateway 'admin'" in (identity.refusal("admin", "envoy-1") or "")
    assert "does not permit node id 'envoy-2'" in (identity.refusal("public", "envoy-2") or "")
    assert identity.refusal("public", "") is not None


def test_certificates_without_our_uris_permit_nothing(ca: Path, tmp_path: Path) -> None:
    server, _ = issue_server(ca, ["sink"], tmp_path / "sink")
    for pem in (
        (ca / "controller.pem").read_bytes(),
        server.read_bytes(),
        TestCA().issue("public", ["public"], client=True).cert.encode(),
    ):
        identity = identity_of(pem)
        assert not identity.gateways and not identity.nodes
        assert identity.refusal("public", "public") is not None


@pytest.mark.parametrize(
    ("gateways", "node", "field"),
    [(["public"], "a b", "--node"), (["x/y"], "n", "--gateway"), ([], "n", "--gateway")],
)
def test_bad_names_are_refused(
    ca: Path, tmp_path: Path, gateways: list[str], node: str, field: str
) -> None:
    with pytest.raises(PolicyInvalid, match=f"^{field}"):
        issue_client(ca, gateways, node, tmp_path / "x")
    assert not (tmp_path / "x.pem").exists()


def test_loopback_and_bind_checks() -> None:
    for address in ("127.0.0.1:1", "127.1.2.3:1", "[::1]:1", "localhost:1"):
        assert is_loopback(address), address
        assert not check_bind("--x", address, tls=False, insecure=False, tls_options="T")
    for address in ("0.0.0.0:1", "[::]:1", ":1", "10.0.0.1:1", "controller:1"):
        assert not is_loopback(address), address
        with pytest.raises(UnsafeBind, match=r"^--x: .* is not a loopback address"):
            check_bind("--x", address, tls=False, insecure=False, tls_options="T")
        assert not check_bind("--x", address, tls=True, insecure=False, tls_options="T")
        assert check_bind("--x", address, tls=False, insecure=True, tls_options="T")
    assert UnsafeBind.exit_code == 2


class _Context:
    def __init__(self, pem: bytes | None) -> None:
        self.pem = pem

    def auth_context(self) -> dict[str, Any]:
        return {} if self.pem is None else {"x509_pem_cert": [self.pem]}

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"


def test_stream_authorizer(ca: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cert, _ = issue_client(ca, ["public"], "envoy-1", tmp_path / "e")
    ctx = _Context(cert.read_bytes())
    assert StreamAuthorizer(required=False).refusal(_Context(None), "any", "any") is None
    auth = StreamAuthorizer(required=True, every=60)
    assert auth.refusal(ctx, "public", "envoy-1") is None
    assert auth.refusal(_Context(None), "public", "envoy-1") == (
        "the stream has no client certificate"
    )
    for _ in range(5):
        assert "gateway 'other'" in (auth.refusal(ctx, "other", "envoy-1") or "")
    assert auth.refused == 6
    logged = [r for r in caplog.records if "does not permit gateway 'other'" in r.message]
    assert len(logged) == 1  # rate-limited per client and reason


def test_streams_of_one_node_count_as_one_replica() -> None:
    import asyncio

    from controlplane.xds.cache import SnapshotCache

    cache = SnapshotCache()
    queue: asyncio.Queue[object] = asyncio.Queue()
    first = cache.subscribe("public", queue, "envoy-1")
    cache.subscribe("public", queue, "envoy-1")  # its reconnect, or a copy of its certificate
    assert cache.members("public") == 1
    cache.subscribe("public", queue, "envoy-2")
    assert cache.members("public") == 2
    cache.unsubscribe(first)
    assert cache.members("public") == 2


def test_quota_streams_are_authorized_by_gateway(ca: Path, tmp_path: Path) -> None:
    """RLQS reports name no node: a stream may report the buckets of the gateways its
    certificate permits, and only those."""
    cert, _ = issue_client(ca, ["public"], "envoy-1", tmp_path / "e")
    ctx = _Context(cert.read_bytes())
    assert StreamAuthorizer(required=False).gateway_refusal(_Context(None), "x", "quota") is None
    auth = StreamAuthorizer(required=True, every=60)
    assert auth.gateway_refusal(ctx, "public", "quota") is None
    assert "does not permit gateway 'other'" in (auth.gateway_refusal(ctx, "other", "quota") or "")
    assert auth.gateway_refusal(_Context(None), "public", "quota") == (
        "the stream has no readable client certificate"
    )
    assert auth.refused == 2

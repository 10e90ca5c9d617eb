"""Secrets at rest with a real controller and Envoy: an HTTPS gateway whose private key and
API keys are stored encrypted keeps serving through key rotation, controller restarts, a
controller started with the wrong key, and a tampered row."""

from __future__ import annotations

import hashlib
import http.client
import json
import sqlite3
import time
from pathlib import Path

import pytest

from controlplane.store.secrets import ENV_KEY, format_key, new_key

from .harness import wait_connected, wait_until
from .tlsutil import TestCA, tls_connect

pytestmark = pytest.mark.e2e

HOST = "api.example.com"


def _status(port: int, ca: str, key: str | None) -> int:
    """One HTTPS request to the API-key route (SNI api.example.com)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    conn.sock = tls_connect(port, HOST, ca)
    try:
        conn.request("GET", "/keyed", headers={"x-api-key": key} if key else {})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def _id_of(key: str) -> str:
    """A key's public id (``consumer key list``), derived from the key."""
    return "ak_" + hashlib.sha256(key.encode()).hexdigest()[:12]


def _raw(db: str) -> bytes:
    return b"".join(p.read_bytes() for p in Path(db).parent.glob(Path(db).name + "*"))


def test_keys_and_certificates_survive_rotation_restarts_and_a_wrong_key(  # type: ignore[no-untyped-def]
    cli, controller, envoy_factory, backends, gateway_port, tmp_path: Path, monkeypatch
) -> None:
    ca = TestCA()
    issued = ca.issue(HOST, [HOST])
    cert, key = issued.write(tmp_path, "api")
    cli.run("cert", "add", "api", "--cert", cert, "--key", key)
    cli.add_gateway("public", gateway_port, "--tls-cert", "api")
    cli.run("cluster", "add", "alpha", "--endpoint", f"127.0.0.1:{backends['alpha'].port}")
    cli.add_route("keyed", "public", "/keyed", "alpha", "--auth-api-key")
    cli.run("consumer", "add", "acme")
    first = cli.run("consumer", "key", "add", "acme").stdout.strip()
    envoy_factory("public")
    wait_until(lambda: _status(gateway_port, ca.pem, first) == 200, 30, 0.1)
    assert _status(gateway_port, ca.pem, None) == 401

    # nothing secret in the database file
    raw = _raw(cli.db)
    assert first.encode() not in raw
    assert not any(
        line.encode() in raw for line in issued.key.splitlines() if not line.startswith("-")
    )

    # rotate under a running controller: nothing changes for traffic
    cli.run("secrets", "rotate")
    assert [_status(gateway_port, ca.pem, first) for _ in range(10)] == [200] * 10
    # a key written after the rotation is encrypted with the new key: the running
    # controller reads the key file again to decrypt it
    second = cli.run("consumer", "key", "add", "acme", "--wait").stdout.strip()
    assert _status(gateway_port, ca.pem, second) == 200 == _status(gateway_port, ca.pem, first)

    # a restarted controller decrypts everything from the database (the old key is retired)
    cli.run("secrets", "rotate", "--retire-old")
    status = cli.json("secrets", "status")
    assert [k["rows"] for k in status["keys"]] == [3] and status["clear_rows"] == 0
    controller.stop()
    controller.start()
    wait_connected(cli, 1)
    cli.run("consumer", "key", "revoke", _id_of(second), "--wait")  # a push from the new controller
    assert _status(gateway_port, ca.pem, second) == 401
    assert _status(gateway_port, ca.pem, first) == 200  # decrypted key, decrypted TLS key

    # the wrong key: the controller refuses to start, with one line; Envoy keeps serving
    controller.stop()
    monkeypatch.setenv(ENV_KEY, format_key(new_key()))
    with pytest.raises(RuntimeError, match="controller exited 5"):
        controller.start()
    log = controller.log()
    assert "which GATEWAY_SECRET_KEY does not have" in log and "Traceback" not in log
    assert [line for line in log.splitlines() if line.startswith("error:")] == [log.strip()]
    assert _status(gateway_port, ca.pem, first) == 200
    monkeypatch.delenv(ENV_KEY)
    controller.start()
    assert _status(gateway_port, ca.pem, first) == 200
    wait_connected(cli, 1)

    # a ciphertext copied into another row: the controller keeps serving what it has
    third = cli.run("consumer", "key", "add", "acme", "--wait").stdout.strip()
    with sqlite3.connect(cli.db) as conn:
        # a key that still has its secret (a revoked key is kept, its secret erased)
        rows = conn.execute(
            "SELECT spec, secret, secret_key_id FROM resources "
            "WHERE kind = 'api_key' AND secret IS NOT NULL"
        ).fetchall()
        spec, secret, kid = rows[0]
        forged = "ak_0123456789ab"
        revision = conn.execute("UPDATE meta SET revision = revision + 1 RETURNING revision")
        rev = revision.fetchone()[0]
        conn.execute(
            "INSERT INTO resources (kind, name, spec, revision, secret, secret_key_id) "
            "VALUES ('api_key', ?, ?, ?, ?, ?)",
            (forged, json.dumps({**json.loads(spec), "name": forged}), rev, secret, kid),
        )
        conn.execute(
            "INSERT INTO refs VALUES ('api_key', ?, 'consumer', 'acme')",
            (forged,),
        )
        conn.execute(
            "INSERT INTO changes (revision, kind, name, op, at) VALUES (?, 'api_key', ?, "
            "'create', ?)",
            (rev, forged, time.time()),
        )
    wait_until(lambda: "secret does not decrypt" in controller.log(), 20, 0.1)
    assert _status(gateway_port, ca.pem, third) == 200  # the last good policy, not an empty one
    assert _status(gateway_port, ca.pem, first) == 200
    assert controller.proc is not None and controller.proc.poll() is None
    # the forged row can be removed without its key, and the controller catches up
    cli.run("consumer", "key", "revoke", forged, "--wait")
    cli.run("consumer", "key", "revoke", _id_of(third), "--wait")
    assert _status(gateway_port, ca.pem, third) == 401
    assert _status(gateway_port, ca.pem, first) == 200

"""Rollback end to end: the real CLI writes, the real controller serves, a real Envoy
answers. A rollback under 20 keep-alive clients loses no request on routes present in both
revisions, restores the rolled-back routes, never brings back a revoked API key, and the
history (with the rollback) survives a controller restart."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from controlplane.demo.echo import EchoServer

from .harness import Cli, Controller, Envoy, KeepAliveLoad, backend_of, request, wait_until

pytestmark = pytest.mark.e2e

STEADY = [f"/s{i}/x" for i in range(18)]


def test_rollback_under_load_and_across_a_restart(
    cli: Cli,
    controller: Controller,
    envoy_factory: Callable[..., Envoy],
    backends: dict[str, EchoServer],
    gateway_port: int,
) -> None:
    port = gateway_port
    cli.add_gateway("public", port)
    cli.run("cluster", "add", "alpha", "--endpoint", f"127.0.0.1:{backends['alpha'].port}")
    cli.run("cluster", "add", "beta", "--endpoint", f"127.0.0.1:{backends['beta'].port}")
    for i in range(len(STEADY)):
        cli.add_route(f"s{i}", "public", f"/s{i}/", "alpha")
    cli.add_route("moved", "public", "/moved/", "alpha")
    cli.add_route("gone", "public", "/gone/", "alpha")
    cli.run("consumer", "add", "acme")
    cli.add_route("keyed", "public", "/keyed/", "alpha", "--auth-api-key")
    kept = cli.run("consumer", "key", "add", "acme").stdout.strip()
    revoked_id_and_key = cli.json("consumer", "key", "add", "acme")
    revoked, revoked_id = revoked_id_and_key["key"], revoked_id_and_key["id"]
    target = cli.json("status")["revision"]

    envoy_factory("public")
    wait_until(lambda: request(port, "/keyed/x", headers={"x-api-key": revoked})[0] == 200, 30)
    # the changes to roll back: a route moved, one deleted, one added, a key revoked
    cli.run("route", "update", "moved", "--cluster", "beta")
    cli.run("route", "delete", "gone")
    cli.add_route("new", "public", "/new/", "beta")
    cli.run("consumer", "key", "revoke", revoked_id, "--wait")
    assert backend_of(port, "/moved/x") == "beta" and backend_of(port, "/gone/x") == 404
    assert request(port, "/keyed/x", headers={"x-api-key": revoked})[0] == 401
    before_rollback = cli.json("status")["revision"]

    paths = [*STEADY, "/moved/x", "/keyed/x"]
    with KeepAliveLoad(port, paths, {"/keyed/x": {"x-api-key": kept}}) as load:
        load.more(200, timeout=60)
        proc = cli.run("rollback", str(target), "--wait")
        load.more(400, timeout=60)
    failed = {p: dict(c) for p, c in load.by_path.items() if set(c) != {"2xx"}}
    assert set(load.outcomes) == {"2xx"}, failed
    assert f"skipped api_key {revoked_id}" in proc.stderr
    # a revoked key is kept (revoked, its secret erased): the rollback leaves it as it is
    assert "API keys are never changed by a rollback" in proc.stderr

    new = cli.json("status")["revision"]
    assert new == before_rollback + 1  # one NEW revision; history not rewritten
    assert backend_of(port, "/moved/x") == "alpha"
    assert backend_of(port, "/gone/x") == "alpha"
    assert backend_of(port, "/new/x") == 404
    assert request(port, "/keyed/x", headers={"x-api-key": revoked})[0] == 401
    assert request(port, "/keyed/x", headers={"x-api-key": kept})[0] == 200
    # what differs from the target now: only the key that stays revoked (kept, listed as
    # revoked, its secret erased)
    diff = cli.run("-o", "json", "diff", "--from", str(target), "--to", str(new), check=False)
    assert diff.returncode == 1
    [change] = json.loads(diff.stdout)
    assert change["kind"] == "api_key" and change["op"] == "update", change
    assert change["after"]["revoked_at"] and "key" not in change["after"], change
    assert '"route"' not in diff.stdout

    controller.stop()
    controller.start()
    history = cli.json("history", "--limit", "5")
    assert history[0]["revision"] == new
    assert history[0]["note"] == f"rollback to revision {target}"
    assert {(c["kind"], c["name"]) for c in history[0]["changes"]} == {
        ("route", "moved"),
        ("route", "gone"),
        ("route", "new"),
    }
    assert [h["revision"] for h in history[1:4]] == [
        before_rollback,
        before_rollback - 1,
        before_rollback - 2,
    ]
    audit = cli.json("audit", "--kind", "route", "--name", "moved", "--limit", "2")
    assert audit[0]["after"]["cluster"] == "alpha" and audit[0]["before"]["cluster"] == "beta"
    # the restarted controller serves the rolled-back policy
    wait_until(lambda: backend_of(port, "/moved/x") == "alpha", 30)
    assert request(port, "/keyed/x", headers={"x-api-key": revoked})[0] == 401

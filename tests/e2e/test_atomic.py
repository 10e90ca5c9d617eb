"""``--atomic``: a change a proxy rejects is undone by a new revision, and the command fails.

The rejection is one only the proxy's host can know: the listener's new port is already
taken (a socket bound first), so Envoy NACKs the listener. ``envoy --mode validate`` (run
before every commit) does not bind, so the write is committed and the NACK is what undoes it.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

from .harness import backend_of, wait_until


def _setup(cli, backends, gateway_port: int) -> None:  # type: ignore[no-untyped-def]
    cli.add_gateway("public", gateway_port)
    for name, server in backends.items():
        cli.run("cluster", "add", name, "--endpoint", f"127.0.0.1:{server.port}")
    cli.add_route("a", "public", "/a", "alpha", "--wait")


def _in_sync(cli) -> bool:  # type: ignore[no-untyped-def]
    """``status`` exits 0 and every proxy runs the newest revision."""
    proc = cli.run("-o", "json", "status", check=False)
    if proc.returncode != 0:
        return False
    proxies = json.loads(proc.stdout)["proxies"]
    return bool(proxies) and all(p["in_sync"] for p in proxies)


def test_atomic_update_rolls_back_a_nacked_port(
    cli, controller, envoy_factory, backends, gateway_port
):  # type: ignore[no-untyped-def]
    _setup(cli, backends, gateway_port)
    envoy_factory("public", "pub-1")
    wait_until(lambda: backend_of(gateway_port, "/a") == "alpha", 15)
    before = cli.json("gateway", "get", "public")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        revision = cli.json("status")["revision"]
        proc = cli.run(
            "gateway", "update", "public", "--port", str(taken), "--atomic", "--wait=15s",
            check=False,
        )  # fmt: skip
        assert proc.returncode == 7, proc.stderr
        error = proc.stderr.strip().splitlines()[-1]
        assert "rejected Listener" in error and "Address already in use" in error, error
        assert f"rolled back: revision {revision + 2} restores what revision {revision + 1}" in (
            error
        ), error
        # the previous value is back, as a new revision: history is not rewritten
        assert cli.json("gateway", "get", "public") == before
        assert cli.json("status")["revision"] == revision + 2
        wait_until(lambda: _in_sync(cli), 15)
        assert backend_of(gateway_port, "/a") == "alpha"


def test_atomic_apply_rolls_back_every_object_it_changed(
    cli, controller, envoy_factory, backends, gateway_port, tmp_path: Path
):  # type: ignore[no-untyped-def]
    _setup(cli, backends, gateway_port)
    envoy_factory("public", "pub-1")
    wait_until(lambda: backend_of(gateway_port, "/a") == "alpha", 15)
    exported = cli.run("export").stdout
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        # one apply of two files: the gateway moved to a taken port, and a new route
        moved = tmp_path / "policy.yaml"
        moved.write_text(exported.replace(f"port: {gateway_port}", f"port: {taken}"), "utf-8")
        assert moved.read_text("utf-8") != exported
        added = tmp_path / "more.yaml"
        added.write_text(
            "routes:\n  - {name: b, gateway: public, match: {path_prefix: /b}, cluster: beta}\n",
            "utf-8",
        )
        proc = cli.run(
            "apply", "-f", str(moved), "-f", str(added), "--atomic", "--wait=15s", check=False
        )
        assert proc.returncode == 7, proc.stderr
        assert "rejected Listener" in proc.stderr and "rolled back" in proc.stderr, proc.stderr
        # the port is the previous one and the new route is absent again
        assert cli.run("export").stdout == exported
        assert cli.run("route", "get", "b", check=False).returncode == 3
        wait_until(lambda: _in_sync(cli), 15)
        assert backend_of(gateway_port, "/a") == "alpha"
        assert backend_of(gateway_port, "/b") == 404


def test_without_atomic_the_rejected_revision_stays(
    cli, controller, envoy_factory, backends, gateway_port
):  # type: ignore[no-untyped-def]
    """The contrast: --wait alone reports the NACK and leaves the change committed."""
    _setup(cli, backends, gateway_port)
    envoy_factory("public", "pub-1")
    wait_until(lambda: backend_of(gateway_port, "/a") == "alpha", 15)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        proc = cli.run(
            "gateway", "update", "public", "--port", str(taken), "--wait=15s", check=False
        )
        assert proc.returncode == 7 and "rolled back" not in proc.stderr, proc.stderr
        assert cli.json("gateway", "get", "public")["port"] == taken

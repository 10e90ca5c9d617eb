"""CLI options of the edge controls: what they write, and what they refuse."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.harness import Cli


def test_trust_settings_replace_each_other(tmp_path: Path) -> None:
    cli = Cli(db=str(tmp_path / "g.db"), env={"GATEWAY_VALIDATE": "never"})
    cli.run("gateway", "add", "gw", "--port", "8080", "--trusted-hops", "2")
    cli.run("gateway", "update", "gw", "--trusted-cidr", "10.0.0.0/8", "--trusted-cidr", "::1")
    assert cli.json("gateway", "get", "gw")["client_address"] == {
        "trusted_cidrs": ["10.0.0.0/8", "::1/128"]
    }
    cli.run("gateway", "update", "gw", "--trusted-hops", "1")
    assert cli.json("gateway", "get", "gw")["client_address"] == {"trusted_hops": 1}
    cli.run("gateway", "update", "gw", "--client-address-off")
    assert "client_address" not in cli.json("gateway", "get", "gw")


def test_route_options_and_refusals(tmp_path: Path) -> None:
    cli = Cli(db=str(tmp_path / "g.db"), env={"GATEWAY_VALIDATE": "never"})
    cli.run("gateway", "add", "gw", "--port", "8080")
    cli.run("cluster", "add", "app", "--endpoint", "127.0.0.1:9", "--protocol", "http2")
    cli.run(
        "route",
        "add",
        "r",
        "--gateway",
        "gw",
        "--cluster",
        "app",
        "--ip-deny",
        "192.0.2.0/24",
        "--max-request-body",
        "1000",
        "--ext-authz-cluster",
        "app",
        "--ext-authz-failure-mode",
        "open",
    )
    cli.run("route", "update", "r", "--ext-authz-timeout", "300ms")
    spec = cli.json("route", "get", "r")
    assert spec["ext_authz"] == {"cluster": "app", "timeout": "300ms", "failure_mode": "open"}
    assert spec["ip_rules"] == {"deny": ["192.0.2.0/24"]}
    before = cli.run("export").stdout
    for args, field in (
        (("--max-request-body", "0"), "max_request_body"),
        (("--ip-allow", "10.0.0.1/8"), "ip_rules.allow"),
        (("--ext-authz-failure-mode", "maybe"), "ext_authz.failure_mode"),
    ):
        proc = cli.run("route", "update", "r", *args, check=False)
        assert proc.returncode == 2 and field in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    assert cli.run("export").stdout == before
    cli.run("route", "update", "r", "--ext-authz-off", "--ip-rules-off")
    spec = cli.json("route", "get", "r")
    assert "ext_authz" not in spec and "ip_rules" not in spec

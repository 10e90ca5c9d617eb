"""Start-up of ``gatewayctl`` imports nothing heavy: a property, checked on ``sys.modules``.

Every command used to import the store (SQLAlchemy), the policy models (pydantic), the
crypto library and more before parsing its arguments (~1.3 s of CPU for ``--help``). The
heavy modules are now imported inside the commands that need them; this test keeps it so
(ADR 0029). It also runs a remote ``route list -o json`` against a canned admin API.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_cli_client import FakeApi, cli_env

#: packages no start-up (and no remote ``list -o json``) may import
HEAVY = (
    "sqlalchemy",
    "pydantic",
    "cryptography",
    "grpc",
    "aiohttp",
    "yaml",
    "fastapi",
    "prometheus_client",
)
#: our own heavy modules: the store and the policy models
HEAVY_OWN = ("controlplane.store", "controlplane.policy", "controlplane.runner")

#: runs the CLI in-process and writes the names of the modules it imported at exit
PROBE = """
import atexit, json, sys
out = sys.argv[1]
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
sys.argv = ["gatewayctl", *sys.argv[2:]]
from controlplane.cli.main import run
run()
"""


def _heavy(modules: list[str]) -> list[str]:
    return sorted(
        m
        for m in modules
        if m.split(".")[0] in HEAVY or any(m == o or m.startswith(o + ".") for o in HEAVY_OWN)
    )


def _modules_after(args: list[str], tmp_path: Path, env: dict[str, str]) -> list[str]:
    out = tmp_path / "modules.json"
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(out), *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return list(json.loads(out.read_text()))


def test_importing_the_cli_imports_nothing_heavy(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "import controlplane.cli.main, sys; print(sorted(sys.modules))"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    assert proc.returncode == 0, proc.stderr
    modules = eval(proc.stdout)  # a printed list of str
    assert _heavy(modules) == []


@pytest.mark.parametrize(
    "args",
    [["--help"], ["route", "--help"], ["route", "add", "--help"], ["context", "list"]],
)
def test_help_and_context_commands_import_nothing_heavy(tmp_path: Path, args: list[str]) -> None:
    assert _heavy(_modules_after(args, tmp_path, cli_env(tmp_path))) == []


def test_remote_route_list_json_imports_nothing_heavy(tmp_path: Path) -> None:
    route = {"name": "r1", "gateways": ["public"], "cluster": "c1"}
    with FakeApi(
        {
            ("GET", "/v1/routes"): (
                200,
                {"revision": 3, "items": [{"kind": "route", "name": "r1", "spec": route}]},
            )
        }
    ) as api:
        env = cli_env(tmp_path, url=api.url, token="gw_secret")
        modules = _modules_after(["route", "list", "-o", "json"], tmp_path, env)
    assert _heavy(modules) == []
    assert "h11" in modules  # it did go through the client
    # http.client imports email and ssl (~25 ms); plain HTTP needs neither (ADR 0041)
    assert not {"http.client", "email.parser", "ssl"} & set(modules)


def test_the_command_map_names_what_each_module_registers() -> None:
    """run() imports only the module of the command named; the map it uses must name
    exactly the commands each module adds, or a command would be missing or unreachable."""
    import typer

    from controlplane.cli.main import COMMAND_MODULES, register

    seen: list[str] = []
    for module, names in COMMAND_MODULES.items():
        target = typer.Typer()
        register(module, target)
        added = [g.name for g in target.registered_groups] + [
            (c.name or (c.callback.__name__ if c.callback else "")).replace("_", "-")
            for c in target.registered_commands
        ]
        assert sorted(added) == sorted(names), module
        seen += added
    assert len(seen) == len(set(seen))  # no name in two modules


def test_a_remote_update_imports_only_its_own_command_module(tmp_path: Path) -> None:
    """``route update`` through the admin API: no other command's module, and no rich for
    its plain messages (each is start-up time the user waits for)."""
    route = {"name": "r1", "gateways": ["public"], "cluster": "c1"}
    with FakeApi(
        {
            ("GET", "/v1/routes/r1"): (200, {"kind": "route", "name": "r1", "spec": route}),
            **{
                (method, "/v1/routes/r1"): (
                    200,
                    {"revision": 8, "changes": [{"op": "update", "kind": "route", "name": "r1"}]},
                )
                for method in ("PUT", "PATCH")
            },
        }
    ) as api:
        env = cli_env(tmp_path, url=api.url, token="gw_secret")
        modules = _modules_after(["route", "update", "r1", "--cluster", "c2"], tmp_path, env)
        assert api.requests[-1]["method"] in ("PUT", "PATCH")
        assert api.requests[-1]["body"]["cluster"] == "c2"
    from controlplane.cli.main import COMMAND_MODULES

    # resources.py builds its options with helpers of analytics.py and traffic.py
    mine = {"resources", "analytics", "traffic"}
    others = {f"controlplane.cli.{m}" for m in COMMAND_MODULES.keys() - mine}
    assert sorted(others & set(modules)) == []
    assert "controlplane.cli.resources" in modules
    assert not any(m == "rich" or m.startswith("rich.") for m in modules)
    assert _heavy(modules) == []


def test_the_help_listing_is_that_of_the_whole_app() -> None:
    """``gatewayctl --help`` is built from the generated command table (no command module
    imported), or without the groups' subcommands and options: both must print exactly
    what the whole app prints."""
    from typer.testing import CliRunner

    from controlplane.cli.main import _listing, _listing_from_table, register_all

    full = register_all()
    whole = CliRunner().invoke(full, ["--help"], prog_name="gatewayctl")
    for view in (_listing(full), _listing_from_table()):
        listed = CliRunner().invoke(view, ["--help"], prog_name="gatewayctl")
        assert whole.exit_code == listed.exit_code == 0
        assert listed.output == whole.output
    assert "route" in whole.output and "analytics-sink" in whole.output


@pytest.mark.parametrize("group", ["route", "consumer", "consumer key", "analytics", "context"])
def test_a_group_help_listing_is_that_of_the_whole_app(group: str) -> None:
    """``gatewayctl route --help`` lists the subcommands without building their options."""
    from typer.testing import CliRunner

    from controlplane.cli.main import _app_for, register_all

    args = [*group.split(), "--help"]
    view = _app_for(args)
    whole = CliRunner().invoke(register_all(), args, prog_name="gatewayctl")
    listed = CliRunner().invoke(view, args, prog_name="gatewayctl")
    assert whole.exit_code == listed.exit_code == 0
    assert listed.output == whole.output and "Commands:" in whole.output


def test_the_generated_command_table_is_current() -> None:
    from controlplane.cli import listing

    assert listing.generate() == Path(listing.__file__).read_text(encoding="utf-8"), (
        "controlplane/cli/listing.py is stale: run `python -m controlplane.cli.listing`"
    )


def test_a_local_read_leaves_envoys_check_unloaded_and_a_write_loads_it(tmp_path: Path) -> None:
    """Envoy's check of a write (controlplane/validate.py and the Envoy protobufs of a
    bootstrap) is a quarter of a local command's imports; only a write needs it."""
    from controlplane.store import Store

    db = tmp_path / "policy.db"
    Store(str(db), create=True).close()
    env = {**cli_env(tmp_path), "GATEWAY_DB": str(db), "GATEWAY_VALIDATE": "never"}
    read = _modules_after(["route", "list", "-o", "json"], tmp_path, env)
    assert "controlplane.store" in read  # it did open the database
    assert "controlplane.validate" not in read
    assert "envoy.config.bootstrap.v3.bootstrap_pb2" not in read
    write = _modules_after(["cluster", "add", "c1", "--endpoint", "127.0.0.1:9000"], tmp_path, env)
    assert "controlplane.validate" in write  # the mode is the validator's to apply
    store = Store(str(db))
    try:
        assert store.get("cluster", "c1").name == "c1"
    finally:
        store.close()

"""A PostgreSQL URL whose driver is not installed: one line, no password, how to install it."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

URL = "postgresql://bob:s3cret-pw@127.0.0.1:1/gateway"
INSTALL = "pip install 'gateway-controlplane[postgres]'"

# The CLI as installed, except that importing psycopg fails as it does without the extra.
WITHOUT_PSYCOPG = textwrap.dedent(
    """
    import sys
    sys.modules["psycopg"] = None
    sys.modules["psycopg2"] = None
    from controlplane.cli.main import run
    sys.argv = ["gatewayctl", *sys.argv[1:]]
    run()
    """
)


def _gatewayctl(
    tmp_path: Path, *args: str, block_psycopg: bool = False
) -> subprocess.CompletedProcess[str]:
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": root, "XDG_DATA_HOME": str(tmp_path)}
    env.pop("GATEWAY_DB", None)
    command = [sys.executable, "-c", WITHOUT_PSYCOPG] if block_psycopg else [
        sys.executable, "-m", "controlplane.cli"
    ]  # fmt: skip
    return subprocess.run(
        [*command, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("command", [("status",), ("consumer", "list"), ("init",)])
def test_psycopg_missing(tmp_path: Path, command: tuple[str, ...]) -> None:
    proc = _gatewayctl(tmp_path, "--db", URL, *command, block_psycopg=True)
    assert proc.returncode == 5, proc.stderr
    assert "s3cret-pw" not in proc.stderr + proc.stdout
    [line] = proc.stderr.strip().splitlines()
    assert "bob:***@" in line and "psycopg is not installed" in line and INSTALL in line


@pytest.mark.skipif(importlib.util.find_spec("pg8000") is not None, reason="pg8000 installed")
def test_other_postgresql_driver_missing(tmp_path: Path) -> None:
    url = URL.replace("postgresql://", "postgresql+pg8000://")
    proc = _gatewayctl(tmp_path, "--db", url, "status")
    assert proc.returncode == 5, proc.stderr
    assert "s3cret-pw" not in proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert "'pg8000'" in line and INSTALL in line

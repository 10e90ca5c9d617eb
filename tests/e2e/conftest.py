"""Fixtures for end-to-end tests: a temp database, the CLI, a controller, Envoys, backends."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from controlplane.demo.echo import EchoServer
from controlplane.envoy_launcher import free_port

from .harness import Cli, Controller, Envoy

# every controller a test starts without naming an admin address gets an ephemeral port:
# tests run in parallel, and the default 127.0.0.1:18004 may be taken
os.environ.setdefault("GATEWAY_ADMIN_ADDRESS", "127.0.0.1:0")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failed end-to-end test shows the tail of every controller and Envoy log it left:
    the temp folder is gone by the time anyone reads a CI log, and a wait that timed out
    says nothing about why (a listener that failed to bind, a NACK, a controller error)."""
    report = yield
    folder = getattr(item, "funcargs", {}).get("tmp_path")
    if report.failed and call.when == "call" and isinstance(folder, Path):
        for log in sorted(folder.rglob("*.log"))[:8]:
            try:
                lines = log.read_text(errors="replace").splitlines()[-40:]
            except OSError:
                continue
            report.sections.append((f"tail of {log.relative_to(folder)}", "\n".join(lines)))
    return report


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(db=str(tmp_path / "gateway.db"))


@pytest.fixture
def controller(cli: Cli, tmp_path: Path) -> Iterator[Controller]:
    c = Controller(cli, tmp_path)
    c.start()
    yield c
    c.stop()


@pytest.fixture
def envoy_factory(controller: Controller, tmp_path: Path) -> Iterator[Callable[..., Envoy]]:
    started: list[Envoy] = []

    def make(gateway: str = "public", node_id: str | None = None) -> Envoy:
        envoy = Envoy(
            gateway, node_id or f"{gateway}-{len(started) + 1}", controller.xds_port, tmp_path
        )
        started.append(envoy)
        return envoy

    yield make
    for envoy in started:
        envoy.stop()


@pytest.fixture
def backends() -> Iterator[dict[str, EchoServer]]:
    servers = {name: EchoServer(name).start() for name in ("alpha", "beta")}
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture
def gateway_port() -> int:
    return free_port()

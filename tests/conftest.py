"""Shared pytest options and fixtures."""

from __future__ import annotations

import os

import pytest

# Envoy validation before each commit (controlplane/validate.py, default ``auto``) starts an
# Envoy per write: ~0.1 s of CPU, 0.3-0.4 s wall on a busy machine, times the suite's
# thousands of CLI writes. The suite checks it where it is the subject (tests/unit/
# test_validate.py, test_plan_equals_apply.py pass --validate or a validator explicitly);
# everywhere else it is off. Child processes (the CLI, the controller) inherit this.
os.environ.setdefault("GATEWAY_VALIDATE", "never")


def pytest_configure(config: pytest.Config) -> None:
    """A parallel worker (pytest-xdist) and the processes it starts pick free ports from a
    slot of their own (``free_port``): two workers never race for the same port."""
    worker = getattr(config, "workerinput", None)
    if worker is not None:
        index = int(str(worker["workerid"]).removeprefix("gw"))
        os.environ["GATEWAY_PORT_SLOT"] = f"{index}/{worker['workercount']}"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite golden files (tests/translate/testdata/out) and delete stale ones",
    )


@pytest.fixture(scope="session")
def update_golden(request: pytest.FixtureRequest) -> bool:
    """True when the run should rewrite golden files instead of comparing with them."""
    return bool(request.config.getoption("--update-golden"))

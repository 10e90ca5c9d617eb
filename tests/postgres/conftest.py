"""PostgreSQL fixtures: one throwaway cluster per session, a fresh database per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ..pg import PgCluster, start_cluster


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    cluster = start_cluster()
    yield cluster
    cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> str:
    """SQLAlchemy URL of an empty database of its own (CREATE DATABASE takes ~10 ms)."""
    return pg_cluster.create_database()


@pytest.fixture(autouse=True)
def _private_config_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Controllers on PostgreSQL write their bootstrap admin token under
    ``$XDG_CONFIG_HOME/gatewayctl``: a folder of each test's own, never the user's."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("config")))

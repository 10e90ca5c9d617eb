"""PostgreSQL: no implicit schema; a SQLite backup restores into PostgreSQL as a new
revision, and records the backup's database in the lineage (ADR 0019)."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.errors import StoreError
from controlplane.policy import Cluster, Gateway, Route
from controlplane.store import Store
from controlplane.store.backup import backup, restore


def test_a_database_without_the_schema_is_refused_and_left_empty(pg_url: str) -> None:
    with pytest.raises(StoreError, match="has no gateway schema; create it with: gatewayctl init"):
        Store(pg_url)
    probe = Store(pg_url, migrate=False)
    assert probe.schema_version() is None  # nothing was created
    probe.close()
    created = Store(pg_url, create=True)
    assert created.created and created.identity().database_id
    created.close()
    again = Store(pg_url)
    assert not again.created and again.identity().revision == 0
    again.close()


def test_restore_a_sqlite_backup_into_postgresql(pg_url: str, tmp_path: Path) -> None:
    source = Store(str(tmp_path / "gateway.db"), create=True)
    source.apply_objects(
        [
            Gateway(name="web", port=8080),
            Cluster(name="users", endpoints=["127.0.0.1:9000"]),
            *(
                Route.model_validate(
                    {
                        "name": f"r{i}",
                        "gateways": ["web"],
                        "cluster": "users",
                        "match": {"path_prefix": f"/r{i}"},
                    }
                )
                for i in range(50)
            ),
        ]
    )
    backup(source, str(tmp_path / "gateway.backup"))
    live = Store(pg_url, create=True)
    live.create(Cluster(name="other", endpoints=["127.0.0.1:9001"]))
    result, contents = restore(live, str(tmp_path / "gateway.backup"))
    ident = live.identity()
    assert result.revision == ident.revision == 2
    assert {r.name for r in live.list_objects("route")} == {f"r{i}" for i in range(50)}
    assert [c.name for c in live.list_objects("cluster")] == ["users"]  # exactly the backup
    assert ident.lineage == {source.identity().database_id: contents.identity.revision}
    # restoring again: nothing changes but it is still a new revision (lineage kept)
    assert restore(live, str(tmp_path / "gateway.backup"))[0].revision == 3
    live.close()
    source.close()

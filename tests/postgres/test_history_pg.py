"""History, audit, policy as of a revision, rollback and retention on PostgreSQL: the
SQLite unit tests' cases run against a PostgreSQL store."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from controlplane.store import Store
from controlplane.store.secrets import ENV_KEY, ENV_KEY_FILE, format_key, new_key
from tests.unit import test_history as cases

CASES: list[Callable[[Store], None]] = [
    cases.test_every_write_records_actor_before_and_after,
    cases.test_secret_fields_are_recorded_as_digests,
    cases.test_history_lists_revisions_newest_first_and_pages,
    cases.test_policy_at_reconstructs_every_revision,
    cases.test_diff_revisions,
    cases.test_rollback_writes_the_old_policy_as_a_new_revision,
    cases.test_rollback_expect_revision,
    cases.test_rollback_never_resurrects_a_revoked_api_key,
    cases.test_rollback_restores_a_certificate_only_with_the_key_it_holds,
    cases.test_retention_prunes_whole_old_revisions,
]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__.removeprefix("test_") for c in CASES])
def test_history_postgres(
    pg_url: str, case: Callable[[Store], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    # a PostgreSQL database has no default key file: secrets need a configured key
    monkeypatch.delenv(ENV_KEY_FILE, raising=False)
    monkeypatch.setenv(ENV_KEY, format_key(new_key()))
    store = Store(pg_url, create=True)
    try:
        case(store)
    finally:
        store.close()

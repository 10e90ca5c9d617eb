"""``Store.expire_proxies`` on PostgreSQL (the same cases as on SQLite)."""

from __future__ import annotations

from controlplane.store import Store
from tests.unit.test_proxy_expiry import check_expiry


def test_expire_proxies_postgres(pg_url: str) -> None:
    store = Store(pg_url, create=True)
    try:
        check_expiry(store)
    finally:
        store.close()

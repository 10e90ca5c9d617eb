"""Admin API tokens on PostgreSQL: controllers starting together make one bootstrap token."""

from __future__ import annotations

import threading
from pathlib import Path

from controlplane.api.auth import authenticate
from controlplane.store import Store
from controlplane.store.tokens import (
    BOOTSTRAP_NAME,
    add_token,
    ensure_bootstrap_token,
    list_tokens,
    revoke_token,
)


def _race(pg_url: str, folder: Path, n: int) -> list[str | None]:
    stores = [Store(pg_url) for _ in range(n)]
    barrier = threading.Barrier(n)
    results: list[str | None] = [None] * n
    errors: list[BaseException] = []

    def boot(i: int) -> None:
        try:
            barrier.wait()
            results[i] = ensure_bootstrap_token(stores[i], folder / f"token-{i}")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=boot, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for s in stores:
        s.close()
    assert not errors, errors
    return results


def test_concurrent_bootstraps_on_postgresql_make_one_token(pg_url: str, tmp_path: Path) -> None:
    Store(pg_url, create=True).close()
    made = [r for r in _race(pg_url, tmp_path / "first", 6) if r is not None]
    assert len(made) == 1
    assert len(list((tmp_path / "first").glob("token-*"))) == 1
    store = Store(pg_url)
    assert [t.name for t in list_tokens(store)] == [BOOTSTRAP_NAME]
    assert authenticate(store, f"Bearer {made[0]}").role == "admin"

    # every admin token revoked: the next start makes exactly one new one
    add_token(store, "ed", "editor")
    revoke_token(store, BOOTSTRAP_NAME)
    again = [r for r in _race(pg_url, tmp_path / "second", 6) if r is not None]
    assert len(again) == 1
    names = sorted(t.name for t in list_tokens(store) if t.role == "admin" and t.active())
    assert names == [f"{BOOTSTRAP_NAME}-2"]
    store.close()


def test_serve_on_postgresql_writes_the_token_under_the_config_folder(
    pg_url: str, tmp_path: Path
) -> None:
    import os

    from ..e2e.harness import Cli, Controller

    cli = Cli(db=pg_url)
    controller = Controller(cli, tmp_path)
    controller.start()
    try:
        path = Path(os.environ["XDG_CONFIG_HOME"]) / "gatewayctl" / "admin-token"
        assert f"admin token written to {path} (mode 0600)" in controller.log()
        assert path.stat().st_mode & 0o777 == 0o600
        store = Store(pg_url)
        try:
            assert authenticate(store, f"Bearer {path.read_text().strip()}").role == "admin"
        finally:
            store.close()
    finally:
        controller.stop()

"""Admin API tokens: hashing, expiry, revocation, the role and scope checks, bootstrap."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from controlplane.api.auth import (
    ROLES,
    Principal,
    authenticate,
    check_write,
    require_admin,
    require_role,
    visible,
)
from controlplane.errors import (
    Conflict,
    Forbidden,
    NotFound,
    PolicyInvalid,
    StoreError,
    Unauthorized,
)
from controlplane.store import Store
from controlplane.store.actor import acting_as
from controlplane.store.tables import ApiToken, EventRow
from controlplane.store.tokens import (
    BOOTSTRAP_NAME,
    LAST_USED_EVERY,
    TOKEN_PATTERN,
    add_token,
    bootstrap_admin,
    bootstrap_path,
    digest_of,
    ensure_bootstrap_token,
    list_tokens,
    lookup_token,
    revoke_token,
)
from tests.e2e.harness import Cli

SHARED = ("cluster", "jwt_provider", "consumer", "plan", "certificate", "proto", "api_key")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(str(tmp_path / "gateway.db"), create=True)
    yield s
    s.close()


def _set(store: Store, name: str, **values: Any) -> None:
    """Change a token row directly (time travel for expiry and last use)."""
    with store._writer.begin() as conn:
        conn.execute(update(ApiToken).where(ApiToken.name == name).values(**values))


# -- format and hashing ---------------------------------------------------------------------


def test_token_is_256_random_bits_and_only_its_digest_is_stored(
    store: Store, tmp_path: Path
) -> None:
    tokens = {add_token(store, f"t{i}", "viewer") for i in range(20)}
    assert len(tokens) == 20
    for token in tokens:
        assert TOKEN_PATTERN.match(token), token
        assert len(token) == 3 + 43
    with store._reader.connect() as conn:
        digests = set(conn.execute(select(ApiToken.digest)).scalars())
    assert digests == {hashlib.sha256(t.encode()).hexdigest() for t in tokens}
    store.checkpoint()
    store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("gateway.db"))
    for token in tokens:
        assert token.encode() not in raw
        assert token[3:].encode() not in raw
    assert digest_of(next(iter(tokens))).encode() in raw  # the digest is what is there


def test_lookup_finds_by_digest_and_compares_in_constant_time(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = add_token(store, "ci", "editor", ["public"])
    calls: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    info = lookup_token(store, token)
    assert info is not None and (info.name, info.role, info.gateways) == (
        "ci",
        "editor",
        ("public",),
    )
    assert calls == [(digest_of(token), digest_of(token))]
    assert lookup_token(store, "gw_" + "A" * 43) is None


def test_expired_and_revoked_tokens_are_refused(store: Store) -> None:
    token = add_token(store, "short", "admin", expires_at=time.time() + 3600)
    assert lookup_token(store, token) is not None
    _set(store, "short", expires_at=time.time() - 1)
    assert lookup_token(store, token) is None
    with pytest.raises(Unauthorized, match="unknown, expired or revoked"):
        authenticate(store, f"Bearer {token}")

    other = add_token(store, "gone", "viewer")
    assert authenticate(store, f"Bearer {other}").name == "gone"
    first = revoke_token(store, "gone")
    assert first.revoked_at is not None and not first.active()
    with pytest.raises(Unauthorized) as exc:
        authenticate(store, f"Bearer {other}")
    assert other not in str(exc.value)
    again = revoke_token(store, "gone")  # revoking twice keeps the first time
    assert again.revoked_at == first.revoked_at
    with pytest.raises(NotFound, match="token 'nope' does not exist"):
        revoke_token(store, "nope")


def test_last_use_is_written_at_most_once_a_minute(store: Store) -> None:
    token = add_token(store, "reader", "viewer")
    assert list_tokens(store)[0].last_used_at is None
    lookup_token(store, token)
    first = list_tokens(store)[0].last_used_at
    assert first is not None
    lookup_token(store, token)
    assert list_tokens(store)[0].last_used_at == first
    _set(store, "reader", last_used_at=first - LAST_USED_EVERY - 1)
    lookup_token(store, token)
    assert list_tokens(store)[0].last_used_at > first - 1  # type: ignore[operator]


@pytest.mark.parametrize(
    "header, reason",
    [
        (None, "missing credentials"),
        ("", "missing credentials"),
        ("Basic dXNlcjpwYXNz", "malformed Authorization header"),
        ("Bearer", "malformed Authorization header"),
        ("Bearer gw_short", "malformed token"),
        ("Bearer gw_" + "A" * 42 + "!", "malformed token"),
        ("Bearer xx_" + "A" * 43, "malformed token"),
        ("Bearer gw_" + "A" * 43, "invalid token"),
    ],
)
def test_authenticate_refuses_without_echoing(
    store: Store, header: str | None, reason: str
) -> None:
    with pytest.raises(Unauthorized) as exc:
        authenticate(store, header)
    message = str(exc.value)
    assert reason in message and "\n" not in message
    if header and " " in header:
        assert header.split(" ", 1)[1] not in message


def test_authenticate_accepts_any_case_of_the_scheme(store: Store) -> None:
    token = add_token(store, "ops", "admin")
    assert authenticate(store, f"bearer  {token} ") == Principal("ops", "admin", frozenset())


# -- add: bad input -------------------------------------------------------------------------


def test_add_refuses_bad_input_naming_the_field(store: Store) -> None:
    add_token(store, "ci", "editor")
    with pytest.raises(Conflict, match="token 'ci' already exists"):
        add_token(store, "ci", "viewer")
    cases = [
        (("Bad", "viewer", ()), "name:"),
        (("a:b", "viewer", ()), "name:"),
        (("x" * 64, "viewer", ()), "name:"),
        (("ok", "root", ()), "role: 'root'"),
        (("ok", "editor", ("public", "../etc")), r"gateways\[1\]"),
        (("ok", "admin", ("public",)), "gateways: an admin token cannot"),
    ]
    for args, field in cases:
        with pytest.raises(PolicyInvalid, match=field):
            add_token(store, *args)
    with pytest.raises(PolicyInvalid, match="expires_at: is in the past"):
        add_token(store, "ok", "viewer", expires_at=time.time() - 5)
    assert [t.name for t in list_tokens(store)] == ["ci"]  # nothing else written


def test_a_gateway_that_does_not_exist_yet_may_be_in_scope(store: Store) -> None:
    add_token(store, "later", "editor", ["future", "future"])
    assert list_tokens(store)[0].gateways == ("future",)


def test_add_and_revoke_are_recorded_with_their_actor(store: Store) -> None:
    with acting_as("root-admin"):
        add_token(store, "ci", "editor", ["a"])
        revoke_token(store, "ci")
    assert list_tokens(store)[0].created_by == "root-admin"
    with store._reader.connect() as conn:
        rows = conn.execute(
            select(EventRow.kind, EventRow.node, EventRow.detail).order_by(EventRow.id)
        ).all()
    assert [tuple(r) for r in rows] == [
        ("token", "root-admin", "token 'ci' (editor for gateways a) created"),
        ("token", "root-admin", "token 'ci' revoked"),
    ]


# -- roles and scope ------------------------------------------------------------------------

VIEWER = Principal("look", "viewer", frozenset())
EDITOR = Principal("ed", "editor", frozenset())
ADMIN = Principal("boss", "admin", frozenset())
SCOPED = Principal("team-a", "editor", frozenset({"a", "a2"}))


def test_roles_are_ordered() -> None:
    assert ROLES == ("viewer", "editor", "admin")
    require_role(VIEWER, "viewer")
    require_role(EDITOR, "viewer")
    require_role(ADMIN, "editor")
    with pytest.raises(Forbidden, match=r"token 'look' \(viewer\) may not write route 'r'"):
        require_role(VIEWER, "editor", "write route 'r'")
    with pytest.raises(Forbidden, match=r"token 'ed' \(editor\) may not .*needs role admin"):
        require_role(EDITOR, "admin")
    require_admin(ADMIN, "manage tokens")
    with pytest.raises(Forbidden, match="limited to gateways"):
        require_admin(Principal("x", "admin", frozenset({"a"})), "manage tokens")


def _route(*gateways: str) -> dict[str, Any]:
    return {"name": "r", "gateways": list(gateways), "cluster": "c"}


def test_viewer_writes_nothing() -> None:
    for kind in ("gateway", "route", *SHARED):
        with pytest.raises(Forbidden, match=r"\(viewer\) may not write"):
            check_write(VIEWER, kind, "x", None, {"name": "x"})
    with pytest.raises(Forbidden):
        check_write(Principal("v", "viewer", frozenset({"a"})), "route", "r", None, _route("a"))


def test_unscoped_editor_writes_everything() -> None:
    for kind in ("gateway", "route", *SHARED):
        check_write(EDITOR, kind, "x", {"gateways": ["z"]}, None)
        check_write(ADMIN, kind, "x", None, {"gateways": ["z"]})


def test_scoped_token_writes_its_gateways_and_routes_only() -> None:
    check_write(SCOPED, "gateway", "a", None, {"name": "a", "port": 8080})
    check_write(SCOPED, "gateway", "a2", {"name": "a2"}, None)
    with pytest.raises(Forbidden, match="may not write gateway 'b'"):
        check_write(SCOPED, "gateway", "b", None, {"name": "b"})
    # routes wholly inside the scope: create, update, delete
    check_write(SCOPED, "route", "r", None, _route("a"))
    check_write(SCOPED, "route", "r", _route("a"), _route("a", "a2"))
    check_write(SCOPED, "route", "r", _route("a2"), None)


@pytest.mark.parametrize(
    "before, after, why",
    [
        (None, _route("b"), "would serve gateway 'b'"),  # create on another gateway
        (_route("b"), _route("b"), "currently serves gateway 'b'"),  # update another's route
        (_route("b"), None, "currently serves gateway 'b'"),  # delete another's route
        (_route("a"), _route("b"), "would serve gateway 'b'"),  # move it out of scope
        (_route("b"), _route("a"), "currently serves gateway 'b'"),  # take it over
        (_route("a", "b"), _route("a"), "currently serves gateway 'b'"),  # drop a gateway
        (None, _route("a", "b"), "would serve gateway 'b'"),  # partly outside
        ({"name": "r"}, _route("a"), "currently serves no gateway listed"),  # malformed row
    ],
)
def test_scoped_token_cannot_touch_routes_outside(
    before: dict[str, Any] | None, after: dict[str, Any] | None, why: str
) -> None:
    with pytest.raises(Forbidden, match=f"may not write route 'r': it {why}") as exc:
        check_write(SCOPED, "route", "r", before, after)
    assert "scope (a, a2)" in str(exc.value)


@pytest.mark.parametrize("kind", SHARED)
def test_scoped_token_cannot_write_shared_kinds(kind: str) -> None:
    with pytest.raises(Forbidden, match=f"may not write {kind} 'x': a {kind} is shared"):
        check_write(SCOPED, kind, "x", None, {"name": "x"})


def test_scoped_token_sees_its_gateways_its_routes_and_shared_kinds() -> None:
    assert visible(SCOPED, "gateway", {"name": "a"})
    assert not visible(SCOPED, "gateway", {"name": "b"})
    assert visible(SCOPED, "gateway", {}, name="a2")
    assert visible(SCOPED, "route", _route("a"))
    assert visible(SCOPED, "route", _route("b", "a2"))
    assert not visible(SCOPED, "route", _route("b"))
    for kind in SHARED:
        assert visible(SCOPED, kind, {"name": "x"})
    assert visible(EDITOR, "route", _route("b")) and visible(VIEWER, "gateway", {"name": "b"})


def test_auth_module_imports_neither_fastapi_nor_the_store() -> None:
    code = (
        "import sys, controlplane.api.auth; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'fastapi', 'sqlalchemy', "
        "'pydantic'}), 'controlplane.store' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[]", "False"]


# -- bootstrap ------------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_bootstrap_writes_a_0600_file_once(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "conf" / "admin-token"
    old = os.umask(0)  # the mode does not depend on the umask
    try:
        token = ensure_bootstrap_token(store, path)
    finally:
        os.umask(old)
    assert token is not None and path.read_text() == token + "\n"
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700
    assert authenticate(store, f"Bearer {token}") == Principal(BOOTSTRAP_NAME, "admin", frozenset())
    [info] = list_tokens(store)
    assert (info.name, info.created_by) == (BOOTSTRAP_NAME, "bootstrap")

    # an admin token exists: nothing happens, the file is untouched
    before = path.stat()
    assert ensure_bootstrap_token(store, path) is None
    assert ensure_bootstrap_token(store, tmp_path / "elsewhere") is None
    assert path.stat().st_mtime_ns == before.st_mtime_ns
    assert not (tmp_path / "elsewhere").exists()
    assert len(list_tokens(store)) == 1


def test_bootstrap_never_overwrites_a_file(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "admin-token"
    path.write_text("mine\n")
    with pytest.raises(Conflict, match="already exists and the database has no active admin"):
        ensure_bootstrap_token(store, path)
    assert path.read_text() == "mine\n"
    assert list_tokens(store) == []
    # nor follows a symlink planted in its place
    target = tmp_path / "target"
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(Conflict):
        ensure_bootstrap_token(store, link)
    assert not target.exists() and list_tokens(store) == []


def test_bootstrap_refuses_a_world_writable_folder(store: Store, tmp_path: Path) -> None:
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    with pytest.raises(StoreError, match="writable by every user"):
        ensure_bootstrap_token(store, open_dir / "admin-token")
    assert list_tokens(store) == [] and not (open_dir / "admin-token").exists()
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    assert ensure_bootstrap_token(store, sticky / "admin-token") is not None


def test_bootstrap_again_after_every_admin_token_is_gone(store: Store, tmp_path: Path) -> None:
    first = ensure_bootstrap_token(store, tmp_path / "one")
    add_token(store, "ed", "editor")
    revoke_token(store, BOOTSTRAP_NAME)
    second = ensure_bootstrap_token(store, tmp_path / "two")
    assert second is not None and second != first
    assert authenticate(store, f"Bearer {second}").name == f"{BOOTSTRAP_NAME}-2"
    # an expired admin token does not count either
    _set(store, f"{BOOTSTRAP_NAME}-2", expires_at=time.time() - 1)
    third = ensure_bootstrap_token(store, tmp_path / "three")
    assert third is not None and authenticate(store, f"Bearer {third}").name.endswith("-3")


def test_concurrent_bootstraps_make_one_token(tmp_path: Path) -> None:
    db = str(tmp_path / "gateway.db")
    Store(db, create=True).close()
    stores = [Store(db) for _ in range(4)]
    barrier = threading.Barrier(len(stores))
    results: list[str | None] = [None] * len(stores)
    errors: list[BaseException] = []

    def boot(i: int) -> None:
        try:
            barrier.wait()
            results[i] = ensure_bootstrap_token(stores[i], tmp_path / f"token-{i}")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=boot, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    made = [r for r in results if r is not None]
    assert len(made) == 1
    assert [t.name for t in list_tokens(stores[0])] == [BOOTSTRAP_NAME]
    assert len(list(tmp_path.glob("token-*"))) == 1
    for s in stores:
        s.close()


def test_a_controller_starts_when_the_token_file_cannot_be_written(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    taken = tmp_path / "taken"
    taken.write_text("someone else's\n")
    unsafe = tmp_path / "unsafe"
    unsafe.mkdir()
    unsafe.chmod(0o777)
    for path in (taken, unsafe / "admin-token"):
        caplog.clear()
        assert bootstrap_admin(store, path) is None
        assert "no admin token made" in caplog.text
    assert not (unsafe / "admin-token").exists()
    assert list_tokens(store) == [] and taken.read_text() == "someone else's\n"
    made = bootstrap_admin(store, tmp_path / "ok")
    assert made == tmp_path / "ok" and list_tokens(store)[0].name == BOOTSTRAP_NAME


def test_default_bootstrap_path() -> None:
    assert bootstrap_path("sqlite:////var/lib/gw/gateway.db") == Path("/var/lib/gw/admin-token")
    assert bootstrap_path("sqlite:////x/g.db", "~/t") == Path("~/t").expanduser()
    pg = bootstrap_path("postgresql+psycopg://u:p@h/db")
    assert pg.parts[-2:] == ("gatewayctl", "admin-token")


# -- CLI ------------------------------------------------------------------------------------


def test_cli_prints_the_token_once_on_stdout(tmp_path: Path) -> None:
    cli = Cli(db=str(tmp_path / "gateway.db"))
    add = cli.run("token", "add", "ci", "--role", "editor", "--gateway", "a", "--expires", "90d")
    token = add.stdout.strip()
    assert TOKEN_PATTERN.match(token) and add.stdout == token + "\n"
    assert "shown only this once" in add.stderr and "gateway 'a' does not exist" in add.stderr
    listed = cli.run("-o", "json", "token", "list").stdout
    assert token not in listed and token[3:] not in listed
    [row] = json.loads(listed)
    assert (row["name"], row["role"], row["gateways"], row["revoked_at"]) == (
        "ci",
        "editor",
        ["a"],
        None,
    )
    assert row["expires_at"] is not None
    cli.run("token", "revoke", "ci")
    assert cli.json("token", "list")[0]["revoked_at"] is not None
    bad = cli.run("token", "add", "x", "--role", "root", check=False)
    assert bad.returncode == 2 and "role: 'root'" in bad.stderr and bad.stdout == ""
    bad = cli.run("token", "add", "x", "--role", "viewer", "--expires", "soon", check=False)
    assert bad.returncode == 2 and "--expires" in bad.stderr
    gone = cli.run("token", "revoke", "nope", check=False)
    assert gone.returncode == 3
    as_json = cli.run("-o", "json", "token", "add", "bot", "--role", "viewer")
    shown = json.loads(as_json.stdout)
    assert TOKEN_PATTERN.match(shown.pop("token"))
    assert (shown["name"], shown["role"], shown["gateways"]) == ("bot", "viewer", [])


def test_cli_token_module_imports_no_store() -> None:
    code = (
        "import sys, controlplane.cli.tokens; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'sqlalchemy', 'pydantic'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

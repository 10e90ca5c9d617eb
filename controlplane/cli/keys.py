"""``consumer key add|list|revoke``: API keys are shown once and listed by prefix only."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..errors import PolicyInvalid
from .context import ctx_of, finish_change, finish_remote
from .contexts import path_of
from .output import Format, emit, emit_table
from .resources import WaitOption

if TYPE_CHECKING:
    from ..policy import ApiKey

__all__ = ["register_keys"]


def _expiry(value: str | None) -> datetime | None:
    """``--expires``: a duration from now or an ISO 8601 time (controlplane/durations.py)."""
    from ..durations import expiry

    if value is None:
        return None
    try:
        return datetime.fromtimestamp(expiry(value, "--expires"), UTC)
    except ValueError as exc:
        raise PolicyInvalid(str(exc)) from None


def _row(key: ApiKey) -> dict[str, Any]:
    return key.listing()


def _remote_row(item: dict[str, Any], consumer: str) -> dict[str, Any]:
    """A key as the admin API lists it, in the columns of the local ``key list``."""
    prefix = str(item.get("prefix") or "")
    return {
        "id": item.get("id") or item.get("name"),
        "consumer": item.get("consumer") or consumer,
        "prefix": prefix if prefix.endswith("...") or not prefix else prefix + "...",
        "expires_at": item.get("expires_at"),
        "expired": bool(item.get("expired", False)),
    }


def register_keys(consumer_app: typer.Typer) -> None:
    keys = typer.Typer(help="Manage a consumer's API keys.", no_args_is_help=True)
    consumer_app.add_typer(keys, name="key")

    @keys.command("add")
    def add(
        ctx: typer.Context,
        consumer: Annotated[str, typer.Argument(help="The consumer the key identifies.")],
        expires: Annotated[
            str | None, typer.Option(help="30d, 12h, 90m, or an ISO 8601 time.")
        ] = None,
        wait: WaitOption = None,
    ) -> None:
        """Create a key; it is printed once, on standard output, and never shown again."""
        c = ctx_of(ctx)
        api = c.remote
        if api is not None:
            _expiry(expires)  # refused here, in the same words, before anything is sent
            resp = api.request(
                "POST", path_of("consumers", consumer, "keys"), body={"expires": expires}, wait=wait
            ).data
            key_text = resp.get("key", "")
            if c.output == Format.table:
                print(key_text)
            else:
                emit({**_remote_row(resp, consumer), "key": key_text}, c.output)
            name = resp.get("id") or next(
                (ch["name"] for ch in resp.get("changes", []) if ch.get("kind") == "api_key"), "?"
            )
            finish_remote(resp, f"api key {name} created for {consumer!r}", wait)
            return
        from ..policy import new_api_key

        key = new_api_key(consumer, _expiry(expires))
        revision = c.store.create(key)
        if c.output == Format.table:
            print(key.key)
        else:
            emit({**_row(key), "key": key.key}, c.output)
        finish_change(c, revision, f"api key {key.name} created for {consumer!r}", wait)

    @keys.command("list")
    def list_(
        ctx: typer.Context,
        consumer: Annotated[str | None, typer.Argument(help="Only this consumer's keys.")] = None,
    ) -> None:
        """List keys by id and prefix (the key itself is never shown again), revoked ones
        with the time of revocation."""
        c = ctx_of(ctx)
        api = c.remote
        if api is not None:
            where = (
                path_of("api-keys") if consumer is None else path_of("consumers", consumer, "keys")
            )
            rows = [_remote_row(item, consumer or "") for item in api.get(where)["items"]]
        else:
            rows = [
                _row(k)  # type: ignore[arg-type]
                for k in c.store.list_objects("api_key")
                if consumer is None or k.consumer == consumer  # type: ignore[attr-defined]
            ]
        if c.output == Format.table:
            emit_table(
                ["ID", "CONSUMER", "PREFIX", "EXPIRES", "REVOKED"],
                [
                    [
                        r["id"],
                        r["consumer"],
                        r["prefix"],
                        (r["expires_at"] or "never") + (" (expired)" if r["expired"] else ""),
                        (r["revoked_at"] or "-").replace("+00:00", "Z"),
                    ]
                    for r in rows
                ],
            )
        else:
            emit(rows, c.output)

    @keys.command("revoke")
    def revoke(
        ctx: typer.Context,
        key_id: Annotated[str, typer.Argument(help="The key's id (ak_...).")],
        wait: WaitOption = None,
        consumer: Annotated[
            str | None,
            typer.Option(help="The key's consumer (remote: saves looking the key up)."),
        ] = None,
    ) -> None:
        """Revoke a key: its secret is erased and it stays listed as revoked, with when;
        with --wait, return once no proxy accepts it any more."""
        from ..keyrevoke import revoke_key

        c = ctx_of(ctx)
        api = c.remote
        if api is not None:
            owner = consumer or str(api.get(path_of("api-keys", key_id))["consumer"])
            resp = api.request(
                "DELETE", path_of("consumers", owner, "keys", key_id), wait=wait
            ).data
            finish_remote(resp, f"api key {key_id} revoked", wait)
            return
        result, done = revoke_key(c.store, key_id)
        revision = result.revision
        finish_change(c, revision, done, wait)

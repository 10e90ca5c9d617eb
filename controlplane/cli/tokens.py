"""``token add|list|revoke``: admin API tokens, worked on the database itself.

Each command parses its options, calls one ``controlplane.store.tokens`` function and
prints; the token of ``token add`` goes to standard output once, everything else to
standard error. Store modules are imported inside the commands (CLI start-up stays fast).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from ..errors import PolicyInvalid
from .output import Format, emit, emit_table, stderr

__all__ = ["parse_expiry", "register_tokens"]

#: the longest relative expiry: a hundred years


def parse_expiry(value: str | None, now: float | None = None) -> float | None:
    """``--expires``: a duration from now (``90d``, ``12h``) or an ISO 8601 date/time (UTC
    if no zone), as epoch seconds (controlplane/durations.py)."""
    from ..durations import expiry

    if value is None:
        return None
    try:
        return expiry(value, "--expires", now)
    except ValueError as exc:
        raise PolicyInvalid(str(exc)) from None


def _iso_times(row: dict[str, Any]) -> dict[str, Any]:
    """An admin API token row (epoch seconds) with ISO 8601 times, as ``token list`` prints
    them locally."""
    out = dict(row)
    for key in ("created_at", "expires_at", "revoked_at", "last_used_at"):
        if isinstance(out.get(key), int | float):
            out[key] = datetime.fromtimestamp(out[key], UTC).isoformat()
    return out


def _epoch(iso: str | None) -> float:
    """An ISO time as epoch seconds; no time: never (infinity)."""
    return datetime.fromisoformat(iso).timestamp() if iso else float("inf")


def _local_actor() -> str:
    from ..store.actor import current_actor

    return current_actor()


def _when(iso: str | None, empty: str = "") -> str:
    """An ISO time for a table column: ``2026-12-03 16:34Z``."""
    return iso[:16].replace("T", " ") + "Z" if iso else empty


def register_tokens(app: typer.Typer) -> None:
    tokens = typer.Typer(
        help="Manage admin API tokens (shown once, stored hashed).", no_args_is_help=True
    )
    app.add_typer(tokens, name="token")

    @tokens.command("add")
    def add(
        ctx: typer.Context,
        name: Annotated[str, typer.Argument(help="The token's name, recorded as the actor.")],
        role: Annotated[
            str, typer.Option("--role", help="viewer (reads), editor (writes policy) or admin.")
        ],
        gateway: Annotated[
            list[str] | None,
            typer.Option(
                "--gateway",
                help="Limit the token to this gateway (repeatable; editor and viewer only).",
            ),
        ] = None,
        expires: Annotated[
            str | None, typer.Option(help="90d, 12h, 30m from now, or an ISO 8601 time.")
        ] = None,
    ) -> None:
        """Create a token; it is printed once, on standard output, and never shown again."""
        from ..store.tokens import add_token, get_token, unknown_gateways
        from .context import ctx_of

        c = ctx_of(ctx)
        api = c.remote
        if api is not None:
            body = {"name": name, "role": role, "gateways": gateway or [], "expires": expires}
            made = api.request("POST", "/v1/tokens", body=body).data
            token = made["token"]
            if c.output == Format.table:
                print(token)
            else:
                emit(_iso_times(made), c.output)
            scope = f" for gateways {', '.join(sorted(set(gateway)))}" if gateway else ""
            stderr.print(f"token {name!r} ({role}{scope}) created; it is shown only this once")
            return
        expires_at = parse_expiry(expires)
        token = add_token(c.store, name, role, gateway or (), expires_at, created_by=_local_actor())
        if c.output == Format.table:
            print(token)
        else:
            emit({**get_token(c.store, name).as_dict(), "token": token}, c.output)
        scope = f" for gateways {', '.join(sorted(set(gateway)))}" if gateway else ""
        stderr.print(f"token {name!r} ({role}{scope}) created; it is shown only this once")
        for missing in unknown_gateways(c.store, gateway or ()):
            stderr.print(f"note: gateway {missing!r} does not exist (yet)")

    @tokens.command("list")
    def list_(ctx: typer.Context) -> None:
        """List tokens: name, role, gateways, times; never the token itself."""
        from ..store.tokens import list_tokens
        from .context import ctx_of

        c = ctx_of(ctx)
        api = c.remote
        if api is not None:
            rows: list[dict[str, Any]] = [_iso_times(i) for i in api.get("/v1/tokens")["items"]]
        else:
            rows = [i.as_dict() for i in list_tokens(c.store)]
        if c.output != Format.table:
            emit(rows, c.output)
            return
        now = time.time()
        emit_table(
            ["NAME", "ROLE", "GATEWAYS", "CREATED", "EXPIRES", "REVOKED", "LAST USED"],
            [
                [
                    r["name"],
                    r["role"],
                    ",".join(r["gateways"]) or "*",
                    _when(r["created_at"]),
                    _when(r["expires_at"], "never")
                    + (" (expired)" if _epoch(r["expires_at"]) <= now else ""),
                    _when(r["revoked_at"]),
                    _when(r["last_used_at"], "never"),
                ]
                for r in rows
            ],
        )

    @tokens.command("revoke")
    def revoke(
        ctx: typer.Context,
        name: Annotated[str, typer.Argument(help="The token's name.")],
    ) -> None:
        """Revoke a token: its next request is refused (401). The name stays recorded."""
        from .context import ctx_of
        from .contexts import path_of

        c = ctx_of(ctx)
        api = c.remote
        if api is not None:
            api.request("DELETE", path_of("tokens", name))
            stderr.print(f"token {name!r} revoked")
            return
        from ..store.tokens import revoke_token

        info = revoke_token(c.store, name)
        stderr.print(f"token {name!r} revoked at {_when(info.as_dict()['revoked_at'])}")

"""``init``, ``backup`` and ``restore``: the only commands that create or replace policy
databases wholesale (every other command opens an existing database or fails)."""

from __future__ import annotations

from typing import Annotated

import typer

from .context import ctx_of, finish_change
from .output import emit, stderr

__all__ = ["register_database"]

DbOption = Annotated[
    str | None,
    typer.Option("--db", help="SQLite file or SQLAlchemy URL (same as the global --db)."),
]


def register_database(app: typer.Typer) -> None:
    @app.command()
    def init(ctx: typer.Context, db: DbOption = None) -> None:
        """Create the policy database (SQLite file mode 0600, or the schema in an existing
        PostgreSQL database) and give it its random id; on an existing one, migrate it."""
        from ..store import Store
        from ..store.repository import display_url

        c = ctx_of(ctx)
        if db:
            c.db = db
        c.require_local()  # never creates a local database while a controller is the target
        store = Store(c.db, create=True)
        ident = store.identity()
        if store.created:
            stderr.print(f"created database {display_url(store.url)} (id {ident.database_id})")
        else:
            stderr.print(
                f"database {display_url(store.url)} exists: {ident.label()}; schema is current"
            )
        store.close()

    @app.command()
    def backup(
        ctx: typer.Context,
        file: Annotated[str, typer.Argument(help="Backup file to write (mode 0600).")],
        force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
    ) -> None:
        """Copy the live SQLite database consistently (online backup API), also while
        controllers run. PostgreSQL: use pg_dump."""
        from ..store.backup import backup as run_backup

        ident = run_backup(ctx_of(ctx).store, file, force=force)
        stderr.print(f"backed up {ident.label()} to {file}")

    @app.command()
    def restore(
        ctx: typer.Context,
        file: Annotated[str, typer.Argument(help="Backup file written by `gatewayctl backup`.")],
        wait: Annotated[
            str | None,
            typer.Option(
                "--wait",
                metavar="[TIMEOUT]",
                help="Return once every connected proxy runs it (default 30s).",
            ),
        ] = None,
    ) -> None:
        """Bring a backup's policy back into the live database as one NEW revision above the
        current one (proxies take it, nothing rolls back), while controllers run."""
        from ..store.backup import restore as run_restore

        c = ctx_of(ctx)
        result, contents = run_restore(c.store, file)
        creates = sum(ch.op == "create" for ch in result.changes)
        updates = sum(ch.op == "update" for ch in result.changes)
        deletes = sum(ch.op == "delete" for ch in result.changes)
        if c.output.value != "table":
            emit(
                {
                    "revision": result.revision,
                    "backup": {
                        "database_id": contents.identity.database_id,
                        "revision": contents.identity.revision,
                        "objects": len(contents.objects),
                    },
                    "created": creates,
                    "updated": updates,
                    "deleted": deletes,
                },
                c.output,
            )
        finish_change(
            c,
            result.revision,
            f"restored {len(contents.objects)} object(s) from {file} "
            f"({contents.identity.label()}): {creates} created, {updates} updated, "
            f"{deletes} deleted",
            wait,
        )

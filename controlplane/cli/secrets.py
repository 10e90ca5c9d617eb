"""``secrets status|rotate|generate-key``: the keys that encrypt secrets at rest.

API keys and certificates' private keys are stored AES-256-GCM encrypted (see
``store/secrets.py``). Rotation adds a key, re-encrypts every secret under it in one
transaction, and optionally drops the old keys from the key file.
"""

from __future__ import annotations

from typing import Annotated

import typer

from ..errors import PolicyInvalid
from .context import ctx_of
from .output import Format, emit, stderr

__all__ = ["register_secrets"]


def register_secrets(app: typer.Typer) -> None:
    cmds = typer.Typer(
        help="Keys that encrypt API keys and private keys in the database.", no_args_is_help=True
    )
    app.add_typer(cmds, name="secrets")

    @cmds.command("status")
    def status(ctx: typer.Context) -> None:
        """Where the keys come from, which one encrypts, and how many secrets each holds."""
        c = ctx_of(ctx)
        report = c.store.secrets_report()
        data = {
            "source": report.source,
            "keys": [
                {
                    "id": kid,
                    "current": kid == report.current,
                    "rows": report.rows_by_key.get(kid, 0),
                }
                for kid in report.configured
            ],
            "unknown_keys": {
                kid: n for kid, n in report.rows_by_key.items() if kid not in report.configured
            },
            "clear_rows": report.clear_rows,
        }
        if c.output != Format.table:
            emit(data, c.output)
            return
        print(f"keys from {report.source}")
        for k in data["keys"]:  # type: ignore[attr-defined]
            mark = " (encrypts)" if k["current"] else ""
            print(f"  {k['id']}{mark}: {k['rows']} secret(s)")
        if not report.configured:
            print("  none yet (a key is made when the first secret is written)")
        for kid, n in data["unknown_keys"].items():  # type: ignore[attr-defined]
            print(f"  {kid}: {n} secret(s), NOT among the configured keys")
        if report.clear_rows:
            print(f"{report.clear_rows} secret(s) in clear: run gatewayctl secrets rotate")

    @cmds.command("rotate")
    def rotate(
        ctx: typer.Context,
        new: Annotated[
            bool,
            typer.Option(
                "--new-key/--no-new-key",
                help="Add a new key to the key file first (--no-new-key: re-encrypt under "
                "the newest key already configured, e.g. one added to GATEWAY_SECRET_KEY).",
            ),
        ] = True,
        retire_old: Annotated[
            bool,
            typer.Option(
                help="Then remove every other key from the key file (backups taken before "
                "need the old key to be read)."
            ),
        ] = False,
    ) -> None:
        """Re-encrypt every secret under the newest key, in one transaction."""
        from ..store import SecretKeyError
        from ..store.secrets import new_key

        c = ctx_of(ctx)
        store = c.store
        report = store.secrets_report()  # refuses when the database needs keys we lack
        unknown = set(report.rows_by_key) - set(report.configured)
        if unknown:
            raise SecretKeyError(
                f"the database holds secrets encrypted with key {', '.join(sorted(unknown))}, "
                f"which {report.source} does not have: nothing rotated"
            )
        if new:
            ring = store.secrets.add_key(new_key())
            stderr.print(f"added key {ring.current_id} to {store.secrets.writable_file}")
        current = store.secrets.ring(create=True).current_id
        written = store.rotate_secrets()
        stderr.print(f"re-encrypted {written} secret(s) under key {current}")
        if retire_old:
            retired = store.secrets.retire_keys(current)
            if retired:
                stderr.print(f"removed key(s) {', '.join(retired)} from {store.secrets.source}")

    @cmds.command("generate-key")
    def generate_key(
        file: Annotated[
            str | None,
            typer.Option(
                "--file", "-f", help="Append the key to this key file (created mode 0600)."
            ),
        ] = None,
    ) -> None:
        """Print a new random 256-bit key (base64), or append it to a key file."""
        from ..store import write_private_file
        from ..store.secrets import format_key, key_id, new_key

        key = new_key()
        if file is None:
            print(format_key(key))
            return
        from pathlib import Path

        path = Path(file)
        try:
            old = path.read_text(encoding="utf-8") if path.exists() else ""
            if old and not old.endswith("\n"):
                old += "\n"
            write_private_file(path, old + format_key(key) + "\n")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not a text file"
            raise PolicyInvalid(f"--file: cannot write {file}: {reason}") from None
        stderr.print(f"added key {key_id(key)} to {file} (the last key encrypts)")

"""``gatewayctl context add|use|list|show|remove``: named admin API targets."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from ..errors import NotFound, PolicyInvalid
from .context import ctx_of
from .contexts import config_path, load_config, resolve, save_config, target_of, validate_url
from .output import Format, emit, emit_table, stderr

__all__ = ["register_contexts"]


def register_contexts(app: typer.Typer) -> None:
    group = typer.Typer(
        help="Admin API targets (URL, token source, CA) that remote commands use.",
        no_args_is_help=True,
    )
    app.add_typer(group, name="context")

    @group.command("add")
    def add(
        name: Annotated[str, typer.Argument(help="Context name.")],
        url: Annotated[str, typer.Option(help="Admin API base URL, e.g. https://gw:18004.")],
        token_file: Annotated[
            str | None, typer.Option(help="File holding the token (read on each command).")
        ] = None,
        token_env: Annotated[
            str | None, typer.Option(help="Environment variable holding the token.")
        ] = None,
        token: Annotated[
            str | None,
            typer.Option(help="The token itself, stored in clear in the config file (0600)."),
        ] = None,
        ca_file: Annotated[
            str | None, typer.Option(help="CA certificate(s) that sign the API's certificate.")
        ] = None,
        insecure: Annotated[
            bool,
            typer.Option(
                "--insecure", help="Allow a token over plain http:// to a non-loopback host."
            ),
        ] = False,
        use: Annotated[bool, typer.Option("--use", help="Also make it the current one.")] = False,
        force: Annotated[bool, typer.Option(help="Replace an existing context.")] = False,
    ) -> None:
        """Add a context. The config file records where the token is, not the token (unless
        --token is given), and is written mode 0600."""
        if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise PolicyInvalid(f"context name {name!r}: use letters, digits, '-', '_', '.'")
        url = validate_url(url)
        given = [x for x in (token_file, token_env, token) if x]
        if len(given) > 1:
            raise PolicyInvalid(f"context {name!r}: give one of --token-file, --token-env, --token")
        if ca_file is not None and not os.path.isfile(os.path.expanduser(ca_file)):
            raise PolicyInvalid(f"context {name!r}: --ca-file {ca_file} is not a file")
        if token_file is not None:
            token_file = os.path.abspath(os.path.expanduser(token_file))
        config = load_config()
        if name in config["contexts"] and not force:
            raise PolicyInvalid(f"context {name!r} exists (use --force to replace it)")
        entry = {"url": url}
        for key, value in (
            ("token_file", token_file),
            ("token_env", token_env),
            ("token", token),
            ("ca_file", os.path.abspath(os.path.expanduser(ca_file)) if ca_file else None),
        ):
            if value:
                entry[key] = value
        if insecure:
            entry["insecure"] = True  # type: ignore[assignment]
        config["contexts"][name] = entry
        if use or not config.get("current"):
            config["current"] = name
        path = save_config(config)
        if token:
            stderr.print(
                f"warning: the token of context {name!r} is stored in clear in {path}; "
                "prefer --token-file or --token-env",
                markup=False,
            )
        current = " (current)" if config["current"] == name else ""
        stderr.print(f"context {name!r} added{current}: {url}", markup=False)

    @group.command("use")
    def use_(name: Annotated[str, typer.Argument(help="Context name.")]) -> None:
        """Make NAME the current context (remote commands go to its URL)."""
        config = load_config()
        if name not in config["contexts"]:
            raise NotFound(f"context {name!r} does not exist (see `gatewayctl context list`)")
        config["current"] = name
        save_config(config)
        stderr.print(f"current context: {name}", markup=False)

    @group.command("list")
    def list_(ctx: typer.Context) -> None:
        """Every context (never a token)."""
        config = load_config()
        rows = [
            {
                "name": name,
                "current": name == config.get("current"),
                "url": entry.get("url"),
                "auth": target_of(name, entry).auth_text(),
                "ca_file": entry.get("ca_file"),
            }
            for name, entry in sorted(config["contexts"].items())
        ]
        fmt = ctx_of(ctx).output
        if fmt != Format.table:
            emit(rows, fmt)
            return
        emit_table(
            ["CURRENT", "NAME", "URL", "AUTH", "CA FILE"],
            [
                ["*" if r["current"] else "", r["name"], r["url"], r["auth"], r["ca_file"]]
                for r in rows
            ],
        )

    @group.command("show")
    def show(ctx: typer.Context) -> None:
        """Where this shell's commands go now (resolution: --db, --context/GATEWAY_CONTEXT,
        GATEWAY_URL, the current context, else the local database)."""
        c = ctx_of(ctx)
        target = resolve(c.db, c.context)
        if target is None:
            data = {"mode": "local", "db": c.db, "config": str(config_path())}
        else:
            data = {
                "mode": "remote",
                "source": target.source,
                "url": target.url,
                "auth": target.auth_text(),
                "ca_file": target.ca_file,
                "config": str(config_path()),
            }
        emit(data, Format.json if c.output == Format.json else Format.yaml)

    @group.command("remove")
    def remove(name: Annotated[str, typer.Argument(help="Context name.")]) -> None:
        """Forget a context (the current one too: commands then work locally)."""
        config = load_config()
        if name not in config["contexts"]:
            raise NotFound(f"context {name!r} does not exist (see `gatewayctl context list`)")
        del config["contexts"][name]
        if config.get("current") == name:
            config["current"] = None
        save_config(config)
        stderr.print(f"context {name!r} removed", markup=False)

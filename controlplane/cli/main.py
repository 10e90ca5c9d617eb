"""``gatewayctl``: manage gateway policy, run the controller, run a local gateway."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ..errors import GatewayError, PolicyInvalid
from .analytics import register_analytics
from .certs import register_certs
from .context import Ctx, ValidateMode
from .contexts_cli import register_contexts
from .database import register_database
from .declarative import register_declarative
from .fastparams import install as _install_plain_params
from .history import register_history
from .keys import register_keys
from .output import Format, stderr
from .pki import register_pki
from .protos import register_protos
from .ratelimit import register_ratelimit
from .resources import register_resources
from .run import register_run
from .secrets import register_secrets
from .status import register_status
from .tokens import register_tokens
from .traffic import register_cache

__all__ = ["app", "run"]

DEFAULT_WAIT = "30s"

_install_plain_params()  # option values without pydantic (see fastparams)

app = typer.Typer(
    name="gatewayctl",
    help="Manage an Envoy-based API gateway: policy, controller, status.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    # click's plain help: rich's help renderer (typer.rich_utils, markdown-it) costs ~0.2 s
    # of start-up for every --help and usage error (ADR 0029)
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    """``--version``: the installed package's version, read from its metadata (no store)."""
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version

    try:
        print(f"gatewayctl {version('gateway-controlplane')}")
    except PackageNotFoundError:
        print("gatewayctl (version unknown: the package is not installed)")
    raise typer.Exit(0)


@app.callback()
def main(
    ctx: typer.Context,
    db: Annotated[
        str | None,
        typer.Option(
            envvar="GATEWAY_DB",
            help="SQLite file or SQLAlchemy URL [~/.local/share/gatewayctl/gateway.db].",
        ),
    ] = None,
    output: Annotated[Format, typer.Option("--output", "-o", help="Output format.")] = Format.table,
    validate: Annotated[
        ValidateMode,
        typer.Option(
            "--validate",
            envvar="GATEWAY_VALIDATE",
            help="Check each write with the real Envoy (envoy --mode validate) before it is "
            "committed: auto = when Envoy is installed (else write and say so), always = "
            "refuse to write without Envoy, never = skip.",
        ),
    ] = ValidateMode.auto,
    context: Annotated[
        str | None,
        typer.Option(
            "--context",
            envvar="GATEWAY_CONTEXT",
            help="Work through this context's admin API (see `gatewayctl context`).",
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            is_eager=True,
            callback=_print_version,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    ctx.obj = Ctx(db=db, output=output, validate=validate.value, context=context)


register_keys(register_resources(app))
register_certs(app)
register_ratelimit(app)
register_protos(app)
register_declarative(app)
register_history(app)
register_status(app)
register_run(app)
register_database(app)
register_cache(app)
register_analytics(app)
register_secrets(app)
register_pki(app)
register_tokens(app)
register_contexts(app)


def _expand_wait(argv: list[str]) -> list[str]:
    """``--wait`` alone means ``--wait=30s`` (click has no optional option values)."""
    return [f"--wait={DEFAULT_WAIT}" if a == "--wait" else a for a in argv]


def _hoist_output(argv: list[str]) -> list[str]:
    """``-o``/``--output`` after the subcommand (``gatewayctl route list -o json``) moves in
    front of it, where the root option takes it: every command, read or write, accepts the
    format in either place. ``-o X``, ``--output X``, ``--output=X`` and ``-oX`` move, and
    nothing after ``--``; a bad value is then refused by the root option, naming it."""
    formats = {f.value for f in Format}
    head: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i:])
            break
        if i > 0 and arg in ("-o", "--output") and i + 1 < len(argv):
            head += [arg, argv[i + 1]]
            i += 2
            continue
        glued = arg.startswith("--output=") or (arg.startswith("-o") and arg[2:] in formats)
        if i > 0 and glued:
            head.append(arg)
        else:
            rest.append(arg)
        i += 1
    return head + rest


def _check_wait(argv: list[str]) -> None:
    """A bad ``--wait`` value is refused before the command writes anything (the project's
    one duration grammar, controlplane/durations.py: standard library only)."""
    from ..durations import parse_duration_seconds

    for arg in argv:
        if arg.startswith("--wait="):
            try:
                parse_duration_seconds(arg.removeprefix("--wait="), "--wait")
            except ValueError as exc:
                raise PolicyInvalid(str(exc)) from None


#: root options that take a value (the value is not the command name)
_ROOT_VALUED = ("--db", "--context", "--output", "-o")


def _app_for(argv: list[str]) -> typer.Typer:
    """The app with only the command the arguments name, when they name one.

    typer builds the click command of every registered command, with all its options,
    before it parses anything (~60 ms of CPU for ~300 options); one command's tree costs
    ~15 ms. ``--help`` alone, an unknown command and shell completion get the whole app,
    so listings, suggestions and completions are unchanged."""
    import os

    if any(k.endswith("_COMPLETE") for k in os.environ):
        return app
    first = None
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _ROOT_VALUED:
            skip = True
        elif not arg.startswith("-"):
            first = arg
            break
    if first is None:
        return app
    groups = [g for g in app.registered_groups if g.name == first]
    commands = [
        c
        for c in app.registered_commands
        if (c.name or (c.callback.__name__ if c.callback else "")).replace("_", "-") == first
    ]
    if len(groups) + len(commands) != 1:
        return app
    import copy

    view = copy.copy(app)
    view.registered_groups = groups
    view.registered_commands = commands
    return view


def run() -> None:
    try:
        argv = _hoist_output(_expand_wait(sys.argv[1:]))
        _check_wait(argv)
        code = _app_for(argv)(args=argv, prog_name="gatewayctl", standalone_mode=False)
        if isinstance(code, int) and code:  # typer.Exit(n) comes back as a return value here
            sys.exit(code)
    except GatewayError as exc:
        stderr.print(f"error: {exc}", markup=False)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        stderr.print("aborted")
        sys.exit(130)
    except typer.TyperException as exc:  # usage errors: unknown option, bad value
        show = getattr(exc, "show", None)
        if show is not None:
            show()
        else:
            stderr.print(f"error: {exc}", markup=False)
        sys.exit(getattr(exc, "exit_code", 2))

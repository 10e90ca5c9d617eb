"""``gatewayctl``: manage gateway policy, run the controller, run a local gateway."""

from __future__ import annotations

import sys
from typing import Annotated, TypeVar

import typer

from ..errors import GatewayError, PolicyInvalid, WaitFailed
from .context import Ctx, ValidateMode
from .fastparams import install as _install_plain_params
from .output import Format, stderr

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


#: each module of this package that adds commands, in --help order, with the top-level
#: names it adds (tests/unit/test_cli_imports.py checks the names against the modules)
COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "resources": (
        "gateway",
        "cluster",
        "route",
        "jwt-provider",
        "oidc-provider",
        "consumer",
        "plan",
    ),
    "certs": ("cert",),
    "ratelimit": ("ratelimit",),
    "quota": ("quota",),
    "protos": ("proto",),
    "declarative": ("apply", "diff", "export", "render"),
    "history": ("history", "rollback", "audit"),
    "status": ("status",),
    "run": ("serve", "aggregator", "up"),
    "database": ("init", "backup", "restore"),
    "traffic": ("cache",),
    "analytics": ("analytics", "analytics-sink", "events"),
    "secrets": ("secrets",),
    "pki": ("pki",),
    "tokens": ("token",),
    "contexts_cli": ("context",),
}
_registered: set[str] = set()


def register(module: str, target: typer.Typer | None = None) -> None:
    """Import ``module`` and add its commands to ``target`` (default: the app), once.

    Importing every command module costs start-up that one command does not need (each
    pulls in its own helpers); :func:`run` registers only the module of the command named,
    and everything for ``--help``, an unknown name and shell completion (ADR 0029)."""
    import importlib

    if target is None:
        if module in _registered:
            return
        _registered.add(module)
    mod = importlib.import_module(f"{__package__}.{module}")
    target = app if target is None else target
    if module == "resources":  # `consumer key ...` lives in keys.py, under the consumer group
        from .keys import register_keys

        register_keys(mod.register_resources(target))
        return
    registrar = next(getattr(mod, n) for n in dir(mod) if n.startswith("register_"))
    registrar(target)


def register_all() -> typer.Typer:
    """The app with every command (``--help``, completion, tests, documentation)."""
    for module in COMMAND_MODULES:
        register(module)
    return app


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
    before it parses anything (~60 ms of CPU for ~300 options), and importing every
    command's module costs more; one command's module and tree cost a fraction of that.
    ``--help`` alone, an unknown command and shell completion get the whole app, so
    listings, suggestions and completions are unchanged."""
    import os

    if any(k.endswith("_COMPLETE") for k in os.environ):
        return register_all()
    first = None
    skip = False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
        elif arg in _ROOT_VALUED:
            skip = True
        elif not arg.startswith("-"):
            first = arg
            second = argv[i + 1] if i + 1 < len(argv) else None
            break
    module = next((m for m, names in COMMAND_MODULES.items() if first in names), None)
    if first is None and (not argv or "--help" in argv):
        return _listing_from_table()
    if first is None or module is None:
        return register_all()
    register(module)
    import copy

    listing = "--help" in argv and (second is None or second.startswith("-"))
    view = copy.copy(app)
    view.registered_groups = [
        _listed_group(g) if listing else _only(g, second)
        for g in app.registered_groups
        if g.name == first
    ]
    view.registered_commands = [c for c in app.registered_commands if _command_name(c) == first]
    return view


def _command_name(info: typer.models.CommandInfo) -> str:
    return (info.name or (info.callback.__name__ if info.callback else "")).replace("_", "-")


def _only(group: typer.models.TyperInfo, name: str | None) -> typer.models.TyperInfo:
    """``group`` with only its subcommand ``name`` when it has one by that name (``route
    update``: not the other route commands and their options); else the whole group, so
    its help, listing and suggestions are unchanged."""
    import copy

    inner = group.typer_instance
    if name is None or inner is None:
        return group
    commands = [c for c in inner.registered_commands if _command_name(c) == name]
    groups = [g for g in inner.registered_groups if g.name == name]
    if len(commands) + len(groups) != 1:
        return group
    pruned = copy.copy(inner)
    pruned.registered_commands, pruned.registered_groups = commands, groups
    view = copy.copy(group)
    view.typer_instance = pruned
    return view


def _listing_from_table() -> typer.Typer:
    """The app for ``gatewayctl --help`` built from :mod:`.listing` (no command module is
    imported): the root options, and each command as a name and its help."""
    import copy

    from .listing import COMMANDS

    def listed() -> None:
        pass

    view = copy.copy(app)
    view.registered_groups = []
    view.registered_commands = [
        typer.models.CommandInfo(
            name=c.name,
            help=c.help,
            short_help=c.short_help,
            hidden=c.hidden,
            deprecated=c.deprecated,
            callback=listed,
        )
        for c in COMMANDS
    ]
    return view


def _listed_group(group: typer.models.TyperInfo) -> typer.models.TyperInfo:
    """``gatewayctl route --help``: the group's own options, its subcommands as a listing."""
    import copy

    if group.typer_instance is None:
        return group
    view = copy.copy(group)
    view.typer_instance = _listing(group.typer_instance)
    return view


def _listing(full: typer.Typer) -> typer.Typer:
    """``full`` for a help listing: every command and group with its one-line help, but no
    group's subcommands, which the listing does not show and typer would otherwise build,
    options and all, and no command's options: each command and group callback is replaced
    by one without parameters and with the same docstring, so typer does not evaluate their
    annotations (~400 evaluations for the whole app, most of a listing's cost). ``full``'s
    own callback, whose options the help shows, is kept. tests/unit/test_cli_imports.py
    compares the helps."""
    import copy

    view = copy.copy(full)
    groups = []
    for group in full.registered_groups:
        inner = group.typer_instance
        if inner is not None:
            inner = copy.copy(inner)
            inner.registered_commands, inner.registered_groups = [], []
            if inner.registered_callback is not None:
                inner.registered_callback = _bare(inner.registered_callback)
        shallow = _bare(group)
        shallow.typer_instance = inner
        groups.append(shallow)
    view.registered_groups = groups
    view.registered_commands = [_bare(c) for c in full.registered_commands]
    return view


_Info = TypeVar("_Info", typer.models.CommandInfo, typer.models.TyperInfo)


def _bare(info: _Info) -> _Info:
    """``info`` with a callback that takes no parameters and has the same docstring."""
    import copy

    bare = copy.copy(info)
    callback = info.callback
    if callable(callback):  # not None nor typer's DefaultPlaceholder

        def listed() -> None:
            """"""

        listed.__doc__ = callback.__doc__
        listed.__name__ = callback.__name__
        bare.callback = listed
    return bare


def run() -> None:
    try:
        argv = _hoist_output(_expand_wait(sys.argv[1:]))
        _check_wait(argv)
        code = _app_for(argv)(args=argv, prog_name="gatewayctl", standalone_mode=False)
        if isinstance(code, int) and code:  # typer.Exit(n) comes back as a return value here
            sys.exit(code)
    except GatewayError as exc:
        if isinstance(exc, WaitFailed) and exc.revision is not None:
            # the admin API did the waiting: the write itself is committed (a local command
            # said so before it waited)
            stderr.print(f"change committed (revision {exc.revision})", markup=False)
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

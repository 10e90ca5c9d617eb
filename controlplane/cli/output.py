"""Rendering for ``--output table|json|yaml``: tables for people, JSON/YAML for scripts."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["Format", "emit", "emit_table", "stderr"]


class _LazyConsole:
    """A rich Console made on first use: importing rich costs 50-150 ms, which ``--help``
    and JSON output never need (ADR 0029)."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Console | None = None

    def _get(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return self._console

    def print(self, *objects: Any, **kwargs: Any) -> None:
        """Plain text (the CLI's messages: ``route 'r' updated``) is written as it is: rich
        would change nothing in it but costs its import; markup, styles, renderables and
        options go to rich."""
        texts = objects and all(type(o) is str for o in objects)
        if (
            texts
            and set(kwargs) <= {"markup", "end"}
            and (kwargs.get("markup") is False or not any("[" in o for o in objects))
        ):
            stream = sys.stderr if self._options.get("stderr") else sys.stdout
            stream.write(" ".join(objects) + kwargs.get("end", "\n"))
            stream.flush()
            return
        self._get().print(*objects, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._get(), name)


stderr = _LazyConsole(stderr=True, highlight=False, soft_wrap=True)
stdout = _LazyConsole(highlight=False, soft_wrap=True)


class Format(StrEnum):
    table = "table"
    json = "json"
    yaml = "yaml"


def emit(data: Any, fmt: Format) -> None:
    """Structured output; ``table`` falls back to YAML for a single object."""
    if fmt == Format.json:
        print(_json(data))
    else:
        import yaml  # only for YAML output: it costs start-up time

        print(yaml.safe_dump(data, sort_keys=False, default_flow_style=False), end="")


def _json(data: Any) -> str:
    """Indented JSON. The standard library indents in pure Python (~0.3 s for a 10,000-route
    listing, most of the command's time); orjson does it in C, with the same layout and
    UTF-8 text instead of ASCII escapes. What orjson cannot encode (an integer beyond 64
    bits) falls back to the standard library."""
    import orjson

    try:
        return orjson.dumps(data, option=orjson.OPT_INDENT_2).decode()
    except TypeError:  # orjson.JSONEncodeError
        import json

        return json.dumps(data, indent=2, ensure_ascii=False)


def emit_table(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], *, title: str | None = None
) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title, show_edge=False, header_style="bold", pad_edge=False)
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*("" if v is None else escape(str(v)) for v in row))
    console = stdout._get()
    if console.is_terminal:  # fit the terminal: rich folds the widest cells
        console.print(table)
        return
    # Piped or redirected (grep, a CI log, a file): rich would assume 80 columns and fold
    # cells onto several lines, breaking `gatewayctl status | grep NODE`; one line per row.
    # (print's own width= is capped at the console's width: widen the console itself)
    natural = console.measure(table, options=console.options.update_width(1 << 16)).maximum
    before, console.width = console.width, max(natural, console.width)
    try:
        console.print(table)
    finally:
        console.width = before

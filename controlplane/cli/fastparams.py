"""Option values of plain types converted without pydantic.

typer 0.29 converts every option value through a pydantic ``TypeAdapter`` built on first
use: parsing ``route list -o json`` imports pydantic (~0.2 s here) and builds a schema per
option, before the command runs. The CLI's options are strings, integers, floats, booleans,
string enums and lists of these; for exactly those annotations this module gives typer a
converter in plain Python with pydantic's error messages, and leaves every other annotation
to typer. It hooks ``typer.core._TyperParameter.get_runtime_param`` (typer's own lazy
per-parameter hook); if a typer release changes that, :func:`install` does nothing and the
CLI is only slower - tests/unit/test_cli_imports.py then fails, naming pydantic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Any, Union, get_args, get_origin

__all__ = ["install"]

_INT = re.compile(r"^[+-]?\d+(_\d+)*$")
_SCALARS = (str, int, float, bool)
_TRUE = {"1", "true", "t", "yes", "y", "on"}
_FALSE = {"0", "false", "f", "no", "n", "off"}


def _leaf(annotation: Any) -> Any:
    """``X`` of ``X``, ``X | None`` and ``Optional[X]``; None when not that shape."""
    origin = get_origin(annotation)
    if origin is Union or (origin is not None and type(annotation).__name__ == "UnionType"):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else None
    return annotation


def _simple(annotation: Any) -> Any:
    """The element type when ``annotation`` is one this module converts, else None."""
    if isinstance(annotation, type) and (
        annotation in _SCALARS or (issubclass(annotation, Enum) and issubclass(annotation, str))
    ):
        return annotation
    return None


def convert(kind: type, value: Any) -> Any:
    """One value as ``kind``; ValueError with pydantic's wording otherwise."""
    if isinstance(value, kind):
        return value
    text = value if isinstance(value, str) else str(value)
    if kind is str:
        return text
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError("Input should be a valid boolean, unable to interpret input")
    if kind is int:
        stripped = text.strip()
        if not _INT.match(stripped):
            raise ValueError(
                "Input should be a valid integer, unable to parse string as an integer"
            )
        return int(stripped)
    if kind is float:
        try:
            return float(text.strip())
        except ValueError:
            raise ValueError(
                "Input should be a valid number, unable to parse string as a number"
            ) from None
    assert issubclass(kind, Enum)
    try:
        return kind(text)
    except ValueError:
        values = [repr(str(m.value)) for m in kind]
        listed = ", ".join(values[:-1]) + f" or {values[-1]}" if len(values) > 1 else values[0]
        raise ValueError(f"Input should be {listed}") from None


def install() -> None:
    """Give typer the plain converter for the annotations :func:`_simple` accepts."""
    try:
        from typer import core
        from typer._click.exceptions import BadParameter
        from typer._coercion import RuntimeParam
        from typer._param_types import coerce_cli_choice
    except ImportError:  # another typer: its own conversion applies
        return
    parameter = getattr(core, "_TyperParameter", None)
    original = getattr(parameter, "get_runtime_param", None)
    if parameter is None or original is None:
        return

    @dataclass(frozen=True)
    class PlainRuntimeParam(RuntimeParam):  # type: ignore[misc]
        annotation: Any
        parameter_info: Any
        kind: type
        many: bool
        choices: tuple[Any, ...] | None
        case_sensitive: bool

        def _one(self, value: Any, ctx: Any) -> Any:
            if self.choices is not None:  # typer's own choice matching and message
                return coerce_cli_choice(
                    value, choices=self.choices, case_sensitive=self.case_sensitive, ctx=ctx
                )
            return convert(self.kind, value)

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            try:
                if self.many:
                    items = value if isinstance(value, list | tuple) else [value]
                    return [self._one(item, ctx) for item in items]
                return self._one(value, ctx)
            except ValueError as exc:
                raise BadParameter(str(exc), ctx=ctx, param=param) from None

    def get_runtime_param(self: Any) -> Any:
        if self._runtime_param is None:
            descriptor = self.type_descriptor
            info = descriptor.parameter_info
            annotation = _leaf(descriptor.annotation)
            many = get_origin(annotation) is list
            kind = _simple(get_args(annotation)[0] if many else annotation)
            plain = (
                kind is not None
                and descriptor.file_annotation is None
                and getattr(info, "min", None) is None
                and getattr(info, "max", None) is None
                and getattr(info, "parser", None) is None
                and getattr(info, "click_type", None) is None
            )
            if plain:
                self._runtime_param = PlainRuntimeParam(
                    annotation=descriptor.annotation,
                    parameter_info=info,
                    kind=kind,
                    many=many,
                    choices=descriptor.choices,
                    case_sensitive=descriptor.case_sensitive,
                )
        return original(self)

    parameter.get_runtime_param = get_runtime_param

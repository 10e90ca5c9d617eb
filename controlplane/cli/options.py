"""Parsing of option values shared by several command groups."""

from __future__ import annotations

from ..errors import PolicyInvalid

__all__ = ["pairs"]


def pairs(values: list[str] | None, option: str) -> dict[str, str]:
    """``NAME=VALUE`` options (repeatable) as a mapping; the error names the option."""
    out = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise PolicyInvalid(f"{option}: {item!r} must be NAME=VALUE")
        out[key.strip()] = value
    return out

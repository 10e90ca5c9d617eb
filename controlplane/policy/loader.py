"""Reading a declarative file (YAML or JSON) without the traps of a plain ``yaml.safe_load``.

* A key given twice in one mapping is refused with its line: YAML's "last one wins" let a
  second ``auth:`` silently replace the first and make a protected route public.
* Nesting deeper than :data:`MAX_DEPTH` is refused with one line (the composer recurses,
  so deep input ended in a RecursionError).
* Aliases that expand to more than :data:`MAX_NODES` nodes are refused (a few lines of
  ``&a [*b, *b, ...]`` can otherwise stand for billions of values to validate).
* Bytes that are not UTF-8 and characters YAML does not allow are named by position.
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from ..errors import PolicyInvalid

__all__ = ["MAX_DEPTH", "MAX_NODES", "decode", "load_text"]

#: policy files nest about 8 levels (routes[0].auth.claims.NAME[0]); leave ample room
MAX_DEPTH = 64
#: values after expanding aliases; an export of 10,000 routes has about 400,000
MAX_NODES = 2_000_000


class _TooDeep(Exception):
    def __init__(self, line: int) -> None:
        self.line = line


class _Loader(yaml.SafeLoader):
    """SafeLoader that tracks depth while composing and refuses duplicate keys."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _TooDeep(self.peek_event().start_mark.line + 1)
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        finally:
            self._depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # a merge (<<) supplies defaults that explicit keys override
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:
                continue  # an unhashable key is reported by the constructor itself
            line = key_node.start_mark.line + 1
            if first is not None:
                raise PolicyInvalid(
                    f"duplicate key {key!r} at line {line} (first at line {first}); "
                    "a key may appear once in a mapping"
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)  # type: ignore[no-any-return]


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _count(root: Node) -> int:
    """Values ``root`` stands for with aliases expanded; linear in the composed graph (each
    shared node is sized once). A node that contains itself is refused."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if done:
            open_nodes.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in _children(node))
            if sizes[id(node)] > MAX_NODES:
                raise PolicyInvalid(
                    f"the file expands to more than {MAX_NODES:,} values (through aliases)"
                )
            continue
        if id(node) in sizes:
            continue
        if id(node) in open_nodes:
            raise PolicyInvalid(f"line {node.start_mark.line + 1}: an alias refers to itself")
        open_nodes.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in sizes)
    return sizes[id(root)]


def decode(data: bytes, source: str) -> str:
    """UTF-8 text of a file, or one line naming where it is not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyInvalid(f"{source}: not UTF-8 text (byte {exc.start})") from None


def _json_depth(data: Any) -> int:
    deepest = 0
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
    return deepest


class _Duplicate(Exception):
    pass


def _load_json(text: str, source: str) -> Any:
    """A JSON document (JSON allows tabs where YAML 1.1 does not), or _NOT_JSON when the
    text is not JSON or names a key twice (the YAML reader then says where)."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                raise _Duplicate(key)
            out[key] = value
        return out

    def constant(name: str) -> Any:
        raise PolicyInvalid(f"{source}: {name} is not a JSON number")

    try:
        data = json.loads(text, object_pairs_hook=pairs, parse_constant=constant)
    except RecursionError:
        raise PolicyInvalid(f"{source}: nested deeper than {MAX_DEPTH} levels") from None
    except (ValueError, _Duplicate):
        return _NOT_JSON
    if _json_depth(data) > MAX_DEPTH:
        raise PolicyInvalid(f"{source}: nested deeper than {MAX_DEPTH} levels")
    return data


_NOT_JSON = object()


def load_text(text: str, source: str = "input") -> Any:
    """The data of a YAML or JSON document, or PolicyInvalid with one line."""
    if text.lstrip().startswith(("{", "[")):
        data = _load_json(text, source)
        if data is not _NOT_JSON:
            return data
    loader: _Loader | None = None
    try:
        loader = _Loader(text)
        node = loader.get_single_node()
        if node is None:
            return None
        _count(node)
        return loader.construct_document(node)
    except _TooDeep as exc:
        raise PolicyInvalid(
            f"{source}: nested deeper than {MAX_DEPTH} levels at line {exc.line}"
        ) from None
    except PolicyInvalid as exc:
        raise PolicyInvalid(f"{source}: {exc}") from None
    except yaml.reader.ReaderError as exc:
        raise PolicyInvalid(
            f"{source}: character {chr(exc.character)!r} at position {exc.position} is not "
            "allowed in YAML"
            if isinstance(exc.character, int)
            else f"{source}: not valid YAML text"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise PolicyInvalid(f"{source}: malformed YAML{where}: {problem}") from None
    except RecursionError:
        raise PolicyInvalid(f"{source}: nested too deeply") from None
    except ValueError as exc:  # an integer of thousands of digits (Python's int limit)
        raise PolicyInvalid(f"{source}: malformed YAML: {str(exc).split(':')[0]}") from None
    finally:
        if loader is not None:
            loader.dispose()

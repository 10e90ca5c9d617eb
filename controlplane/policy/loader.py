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

import gc
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import yaml
from yaml.composer import Composer, ComposerError
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.events import (
    MappingEndEvent,
    MappingStartEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)
from yaml.nodes import MappingNode, Node, SequenceNode
from yaml.resolver import Resolver

from ..errors import PolicyInvalid

__all__ = ["MAX_DEPTH", "MAX_NODES", "decode", "gc_paused", "load_text"]

#: policy files nest about 8 levels (routes[0].auth.claims.NAME[0]); leave ample room
MAX_DEPTH = 64
#: values after expanding aliases; an export of 10,000 routes has about 400,000
MAX_NODES = 2_000_000


class _TooDeep(Exception):
    def __init__(self, line: int) -> None:
        self.line = line


class _StrictConstructor:
    """Refuses a key given twice in one mapping (mixed into either loader below)."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # a merge (<<) supplies defaults that explicit keys override
            key = self.construct_object(key_node, deep=True)  # type: ignore[attr-defined]
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
        return super().construct_mapping(node, deep=deep)  # type: ignore[misc,no-any-return]


class _DepthComposer(Composer):
    """PyYAML's composer (it recurses in Python) tracking depth while composing, so a deep
    input is refused before it exhausts the stack."""

    _depth = 0
    #: nodes composed so far (each once; an alias composes none)
    _nodes = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        self._depth += 1
        self._nodes += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _TooDeep(self.peek_event().start_mark.line + 1)  # type: ignore[attr-defined]
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        finally:
            self._depth -= 1


class _PyLoader(_StrictConstructor, _DepthComposer, yaml.SafeLoader):
    """Pure Python: the reader when PyYAML was built without libyaml."""


_CLoader: type | None = None
if getattr(yaml, "__with_libyaml__", False):
    from yaml._yaml import CParser

    class _CLoader(  # type: ignore[no-redef]
        _StrictConstructor, _DepthComposer, CParser, SafeConstructor, Resolver
    ):
        """libyaml's scanner and parser (C: most of the time of reading a file) under the
        Python composer, so that a file is composed one top-level list item at a time
        (:func:`_load_document`) instead of as one node graph (about 4.6 KB per route:
        230 MiB at 50,000 routes). See ADR 0038."""

        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            Composer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)


def _loader_class() -> type:
    """The loader :func:`load_text` uses: libyaml's when PyYAML has it."""
    return _CLoader if _CLoader is not None else _PyLoader


def _plain(event: Any) -> bool:
    """A collection start without anchor or tag: its items can be built one by one."""
    return event.anchor is None and event.tag is None


#: called with (top-level key, index, value) for each item of a top-level list as it is
#: built; its result replaces the value (Bundle.from_text: the validated model, so the
#: plain values of 50,000 routes are never all in memory next to their models). Once it
#: raises it is called no more and the remaining values stay plain.
ItemHook = Callable[[Any, int, Any], Any]


def _load_document(loader: Any, item: ItemHook | None = None) -> Any:
    """The single document of the stream, built like ``construct_document(
    get_single_node())`` with every check of :func:`_count`, but when the document is a
    mapping of lists (a policy file) one list item at a time: the nodes of an item are
    dropped once its value is built, so memory holds the values and one item's nodes."""
    loader.get_event()  # stream start
    data = None
    if not loader.check_event(StreamEndEvent):
        start = loader.peek_event()
        loader.get_event()  # document start
        if isinstance(loader.peek_event(), MappingStartEvent) and _plain(loader.peek_event()):
            data = _load_root(loader, item)
        else:
            node = loader.compose_node(None, None)
            _count(node)
            data = loader.construct_document(node)
        loader.get_event()  # document end
        loader.anchors = {}
        if not loader.check_event(StreamEndEvent):
            raise ComposerError(
                "expected a single document in the stream",
                start.start_mark,
                "but found another document",
                loader.get_event().start_mark,
            )
    loader.get_event()  # stream end
    return data


def _load_root(loader: Any, item: ItemHook | None) -> dict[Any, Any]:
    """The top-level mapping, each value (each item of a list value) composed and built on
    its own; duplicate keys, depth, the alias budget (over the whole file) as elsewhere."""
    loader.get_event()  # mapping start
    loader._depth = 1  # inside the top-level mapping
    out: dict[Any, Any] = {}
    seen: dict[Any, int] = {}
    defaults: list[Any] = []  # merge (<<) values: keys given explicitly win
    total = 1
    while not loader.check_event(MappingEndEvent):
        key_node = loader.compose_node(None, None)
        total += _count(key_node, above=1)
        merge = key_node.tag == "tag:yaml.org,2002:merge"
        key = None if merge else loader.construct_document(key_node)
        if not merge:
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:
                raise ConstructorError(
                    "while constructing a mapping", None, "found unhashable key",
                    key_node.start_mark,
                ) from None  # fmt: skip
            if first is not None:
                raise PolicyInvalid(
                    f"duplicate key {key!r} at line {line} (first at line {first}); "
                    "a key may appear once in a mapping"
                )
            seen[key] = line
        if not merge and loader.check_event(SequenceStartEvent) and _plain(loader.peek_event()):
            loader.get_event()  # sequence start
            loader._depth = 2
            items: list[Any] = []
            while not loader.check_event(SequenceEndEvent):
                composed = loader._nodes
                node = loader.compose_node(None, None)
                if loader.anchors:  # aliases possible: expand them (_count)
                    total += _count(node, above=2)
                else:  # a tree: its nodes are its values, its depth the composer checked
                    total += loader._nodes - composed
                if total > MAX_NODES:
                    raise PolicyInvalid(
                        f"the file expands to more than {MAX_NODES:,} values (through aliases)"
                    )
                value = loader.construct_document(node)
                if item is not None:
                    try:
                        value = item(key, len(items), value)
                    except Exception:
                        # the rest stays plain: the caller validates it again in its own
                        # order, after the whole file is read (a syntax error further
                        # down is the answer, as it was)
                        item = None
                items.append(value)
            loader.get_event()  # sequence end
            loader._depth = 1
            out[key] = items
            continue
        node = loader.compose_node(None, None)
        total += _count(node, above=1)
        if total > MAX_NODES:
            raise PolicyInvalid(
                f"the file expands to more than {MAX_NODES:,} values (through aliases)"
            )
        value = loader.construct_document(node)
        if merge:
            defaults.extend(value if isinstance(value, list) else [value])
        else:
            out[key] = value
    loader.get_event()  # mapping end
    for extra in defaults:
        if not isinstance(extra, dict):
            raise ConstructorError(
                "while constructing a mapping", None,
                "expected a mapping or list of mappings for merging", None,
            )  # fmt: skip
        for k, v in extra.items():
            out.setdefault(k, v)
    return out


def _count(root: Node, above: int = 0) -> int:
    """Values ``root`` stands for with aliases expanded; linear in the composed graph (each
    shared node is sized once). A node that contains itself is refused, and so is nesting
    deeper than :data:`MAX_DEPTH` (aliases expanded: the data built is that deep) with
    ``above`` levels above ``root``."""
    #: per node: (values it stands for, levels from it down, its deepest descendant)
    info: dict[int, tuple[int, int, Node]] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[Node, list[Node] | None]] = [(root, None)]
    while stack:
        node, kids = stack.pop()
        if kids is not None:  # every child is sized: size this node
            open_nodes.discard(id(node))
            size, height, deepest = 1, 0, node
            for child in kids:
                s, h, d = info[id(child)]
                size += s
                if h > height:
                    height, deepest = h, d
            if size > MAX_NODES:
                raise PolicyInvalid(
                    f"the file expands to more than {MAX_NODES:,} values (through aliases)"
                )
            if height + 1 + above > MAX_DEPTH:
                raise _TooDeep(deepest.start_mark.line + 1)
            info[id(node)] = (size, height + 1, deepest)
            continue
        if id(node) in info:
            continue
        if isinstance(node, SequenceNode):
            kids = list(node.value)
        elif isinstance(node, MappingNode):
            kids = [n for pair in node.value for n in pair]
        else:  # a scalar: one value, one level (most nodes; no second visit)
            info[id(node)] = (1, 1, node)
            continue
        if id(node) in open_nodes:
            raise PolicyInvalid(f"line {node.start_mark.line + 1}: an alias refers to itself")
        open_nodes.add(id(node))
        stack.append((node, kids))
        stack.extend((c, None) for c in kids if id(c) not in info)
    return info[id(root)][0]


@contextmanager
def gc_paused() -> Iterator[None]:
    """Cyclic garbage collection off for a bulk step (restored after it, as it was).

    Reading a large file allocates millions of objects that all stay alive (nodes, then
    values, then models), and each allocation burst triggers collections that walk all of
    them again and free nothing: half the time of reading 50,000 routes. Reference
    counting still frees everything as usual; only cycles wait until the step ends."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


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


def load_text(text: str, source: str = "input", item: ItemHook | None = None) -> Any:
    """The data of a YAML or JSON document, or PolicyInvalid with one line. ``item``: see
    :data:`ItemHook` (YAML only)."""
    if text.lstrip().startswith(("{", "[")):
        data = _load_json(text, source)
        if data is not _NOT_JSON:
            return data
    loader: Any = None
    try:
        with gc_paused():
            loader = _loader_class()(text)
            return _load_document(loader, item)
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
        if getattr(exc, "problem", None) == "exceeded maximum nesting depth":  # libyaml's
            where = f" at line {mark.line + 1}" if mark else ""
            raise PolicyInvalid(f"{source}: nested deeper than {MAX_DEPTH} levels{where}") from None
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

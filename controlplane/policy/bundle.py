"""A bundle: a whole set of policy objects, the unit of ``apply`` and ``export``.

The bundle checks what no single object can: unique names per kind and references between
objects (a route naming an unknown cluster). The store runs the same reference check inside
every transaction, so both paths refuse the same inputs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import PolicyInvalid
from .cluster import Cluster
from .common import PolicyModel
from .gateway import Gateway
from .route import Route

__all__ = [
    "KINDS",
    "PLURALS",
    "Bundle",
    "format_validation_error",
    "parse_object",
    "reference_errors",
]

#: kind name -> model class. A new policy kind is added here and nowhere in the store.
KINDS: dict[str, type[PolicyModel]] = {"gateway": Gateway, "cluster": Cluster, "route": Route}
#: kind name -> key in the declarative file
PLURALS: dict[str, str] = {"gateway": "gateways", "cluster": "clusters", "route": "routes"}


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """One line naming the first bad field and why (pydantic's own text is multi-line)."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = _loc(tuple(p for p in first["loc"] if p not in ("function-after", "function-before")))
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown field"
    elif msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    where = ": ".join(p for p in (prefix, loc) if p)
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {msg}{more}" if where else f"{msg}{more}"


def parse_object(kind: str, data: Any, where: str | None = None) -> PolicyModel:
    """Validate one object of ``kind``; errors name it as ``kind 'name'``."""
    model = KINDS[kind]
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        name = data.get("name") if isinstance(data, Mapping) else None
        label = where or (f"{kind} {name!r}" if isinstance(name, str) else kind)
        raise PolicyInvalid(format_validation_error(exc, label)) from None


class Bundle(BaseModel):
    """The declarative file: ``gateways``, ``clusters`` and ``routes`` lists."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gateways: list[Gateway] = Field(default_factory=list)
    clusters: list[Cluster] = Field(default_factory=list)
    routes: list[Route] = Field(default_factory=list)

    def objects(self) -> Iterator[PolicyModel]:
        for kind in KINDS:
            yield from getattr(self, PLURALS[kind])

    @classmethod
    def from_objects(cls, objects: Iterable[PolicyModel]) -> Bundle:
        groups: dict[str, list[PolicyModel]] = {PLURALS[k]: [] for k in KINDS}
        for obj in objects:
            groups[PLURALS[obj.kind]].append(obj)
        for items in groups.values():
            items.sort(key=lambda o: o.name)  # type: ignore[attr-defined]
        return cls.model_validate({k: [o.model_dump() for o in v] for k, v in groups.items()})

    @classmethod
    def parse(cls, data: Any) -> Bundle:
        """Validate a decoded file, with errors like ``routes[2] 'api': match.path: ...``."""
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise PolicyInvalid("the file must be a mapping with gateways, clusters and routes")
        unknown = set(data) - set(PLURALS.values())
        if unknown:
            raise PolicyInvalid(
                f"{sorted(unknown)[0]}: unknown top-level key "
                f"(expected {', '.join(PLURALS.values())})"
            )
        parsed: dict[str, list[PolicyModel]] = {}
        for kind, key in PLURALS.items():
            items = data.get(key) or []
            if not isinstance(items, list):
                raise PolicyInvalid(f"{key}: must be a list")
            out = []
            for i, item in enumerate(items):
                name = item.get("name") if isinstance(item, Mapping) else None
                where = f"{key}[{i}]" + (f" {name!r}" if isinstance(name, str) else "")
                out.append(parse_object(kind, item, where))
            parsed[key] = out
        bundle = cls.model_construct(**parsed)  # type: ignore[arg-type]  # validated above
        bundle.check()
        return bundle

    @classmethod
    def from_text(cls, text: str, source: str = "input") -> Bundle:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or "not valid YAML"
            raise PolicyInvalid(f"{source}: malformed YAML{where}: {problem}") from None
        return cls.parse(data)

    def check(self) -> None:
        """Unique names per kind and resolvable references; raises PolicyInvalid."""
        names: dict[str, set[str]] = {k: set() for k in KINDS}
        for kind, key in PLURALS.items():
            for obj in getattr(self, key):
                if obj.name in names[kind]:
                    raise PolicyInvalid(f"{key}: duplicate name {obj.name!r}")
                names[kind].add(obj.name)
        problems = reference_errors(self.objects(), lambda kind, name: name in names[kind])
        if problems:
            raise PolicyInvalid(problems[0])

    def to_data(self) -> dict[str, Any]:
        """The canonical file content; ``from_text`` of its YAML gives an equal bundle."""
        return {
            key: [o.spec() for o in sorted(getattr(self, key), key=lambda o: o.name)]
            for key in PLURALS.values()
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_data(), sort_keys=False, default_flow_style=False)


def references(obj: PolicyModel) -> list[tuple[str, str]]:
    """(kind, name) of every object ``obj`` depends on."""
    refs = getattr(obj, "references", None)
    return list(refs()) if refs else []


def reference_errors(objects: Iterable[PolicyModel], exists: Any) -> list[str]:
    out = []
    for obj in objects:
        for kind, name in references(obj):
            if not exists(kind, name):
                out.append(f"{obj.kind} {obj.name!r}: {kind} {name!r} does not exist")  # type: ignore[attr-defined]
    return out

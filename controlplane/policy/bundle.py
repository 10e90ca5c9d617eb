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
from .certificate import Certificate
from .cluster import Cluster
from .common import PolicyModel
from .consumer import ApiKey, Consumer
from .gateway import Gateway
from .jwt import JwtProvider
from .loader import load_text
from .oidc import OidcProvider
from .proto import Proto
from .ratelimit import Plan
from .route import Route

__all__ = [
    "CONTENT_KINDS",
    "KINDS",
    "PLURALS",
    "Bundle",
    "content_errors",
    "format_validation_error",
    "parse_object",
    "reference_errors",
]

#: kind name -> model class. A new policy kind is added here and nowhere in the store.
KINDS: dict[str, type[PolicyModel]] = {
    "gateway": Gateway,
    "cluster": Cluster,
    "route": Route,
    "jwt_provider": JwtProvider,
    "consumer": Consumer,
    "plan": Plan,
    "api_key": ApiKey,
    "certificate": Certificate,
    "proto": Proto,
    "oidc_provider": OidcProvider,
}
#: kind name -> key in the declarative file
#: Kinds without an entry (API keys) hold secrets and are managed imperatively only.
PLURALS: dict[str, str] = {
    "jwt_provider": "jwt_providers",
    "oidc_provider": "oidc_providers",
    "plan": "plans",
    "consumer": "consumers",
    "certificate": "certificates",
    "proto": "protos",
    "gateway": "gateways",
    "cluster": "clusters",
    "route": "routes",
}


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
    name = data.get("name") if isinstance(data, Mapping) else None
    label = where or (f"{kind} {name!r}" if isinstance(name, str) else kind)
    try:
        obj = model.model_validate(data)
    except ValidationError as exc:
        raise PolicyInvalid(format_validation_error(exc, label)) from None
    # checks of new input only, not of stored objects (a stored certificate may expire)
    input_problem = getattr(obj, "input_problem", None)
    problem = input_problem() if input_problem is not None else None
    if problem:
        raise PolicyInvalid(f"{label}: {problem}")
    return obj


def _parse_item(kind: str, key: str, i: int, item: Any) -> PolicyModel:
    """Item ``i`` of the file's ``key`` list, with errors like ``routes[2] 'api': ...``."""
    name = item.get("name") if isinstance(item, Mapping) else None
    where = f"{key}[{i}]" + (f" {name!r}" if isinstance(name, str) else "")
    return parse_object(kind, item, where)


class Bundle(BaseModel):
    """The declarative file: a list per kind (``gateways``, ``clusters``, ``routes``...)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    jwt_providers: list[JwtProvider] = Field(default_factory=list)
    oidc_providers: list[OidcProvider] = Field(default_factory=list)
    plans: list[Plan] = Field(default_factory=list)
    consumers: list[Consumer] = Field(default_factory=list)
    certificates: list[Certificate] = Field(default_factory=list)
    protos: list[Proto] = Field(default_factory=list)
    gateways: list[Gateway] = Field(default_factory=list)
    clusters: list[Cluster] = Field(default_factory=list)
    routes: list[Route] = Field(default_factory=list)

    def objects(self) -> Iterator[PolicyModel]:
        for key in PLURALS.values():
            yield from getattr(self, key)

    def by_kind(self) -> dict[str, dict[str, PolicyModel]]:
        """kind -> name -> object, the shape translation reads other objects in."""
        out: dict[str, dict[str, PolicyModel]] = {kind: {} for kind in PLURALS}
        for obj in self.objects():
            out[obj.kind][obj.name] = obj  # type: ignore[attr-defined]
        return out

    @classmethod
    def from_objects(cls, objects: Iterable[PolicyModel]) -> Bundle:
        """The declarative kinds among ``objects`` (secrets such as API keys are left out)."""
        groups: dict[str, list[PolicyModel]] = {key: [] for key in PLURALS.values()}
        for obj in objects:
            if obj.kind in PLURALS:
                groups[PLURALS[obj.kind]].append(obj)
        for items in groups.values():
            items.sort(key=lambda o: o.name)  # type: ignore[attr-defined]
        return cls.model_validate({k: [o.model_dump() for o in v] for k, v in groups.items()})

    @classmethod
    def parse(cls, data: Any, *, self_contained: bool = True) -> Bundle:
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
            items = data.get(key)
            if items is None:
                items = []
            if not isinstance(items, list):
                raise PolicyInvalid(f"{key}: must be a list")
            out = []
            for i, item in enumerate(items):
                if isinstance(item, KINDS[kind]):  # validated while reading (from_text)
                    out.append(item)
                    continue
                out.append(_parse_item(kind, key, i, item))
            parsed[key] = out
        bundle = cls.model_construct(**parsed)  # type: ignore[arg-type]  # validated above
        bundle.check(references=self_contained)
        return bundle

    @classmethod
    def from_text(cls, text: str, source: str = "input", *, self_contained: bool = True) -> Bundle:
        """Parse a file; ``self_contained=False`` leaves references to the store to check."""
        kinds = {key: kind for kind, key in PLURALS.items()}

        def item(key: Any, i: int, value: Any) -> Any:
            kind = kinds.get(key) if isinstance(key, str) else None
            return value if kind is None else _parse_item(kind, key, i, value)

        return cls.parse(load_text(text, source, item), self_contained=self_contained)

    def check(self, *, references: bool = True) -> None:
        """Unique names per kind and (optionally) resolvable references; raises PolicyInvalid."""
        names: dict[str, set[str]] = {k: set() for k in KINDS}
        for kind, key in PLURALS.items():
            for obj in getattr(self, key):
                if obj.name in names[kind]:
                    raise PolicyInvalid(f"{key}: duplicate name {obj.name!r}")
                names[kind].add(obj.name)
        if not references:
            return
        problems = reference_errors(self.objects(), lambda kind, name: name in names[kind])
        if problems:
            raise PolicyInvalid(problems[0])
        by_kind = self.by_kind()
        problems = content_errors(self.objects(), lambda kind, name: by_kind[kind].get(name))
        if problems:
            raise PolicyInvalid(problems[0])

    def to_data(self) -> dict[str, Any]:
        """The canonical file content (kinds with no objects left out); ``from_text`` of its
        YAML gives an equal bundle."""
        out = {}
        for key in PLURALS.values():
            items = sorted(getattr(self, key), key=lambda o: o.name)
            if items:
                out[key] = [o.spec() for o in items]
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_data(), sort_keys=False, default_flow_style=False)


def references(obj: PolicyModel) -> list[tuple[str, str]]:
    """(kind, name) of every object ``obj`` depends on."""
    refs = getattr(obj, "references", None)
    return list(refs()) if refs else []


#: kinds whose content (not only existence) other objects depend on: an update of one of
#: these re-checks the objects that reference it
CONTENT_KINDS = frozenset({"proto"})


def content_errors(objects: Iterable[PolicyModel], lookup: Any) -> list[str]:
    """Problems with what referenced objects contain (a route exposing a service its proto
    lacks); objects opt in with ``reference_problem(kind, target)``."""
    out = []
    for obj in objects:
        check = getattr(obj, "reference_problem", None)
        if check is None:
            continue
        for kind, name in references(obj):
            target = lookup(kind, name)
            problem = check(kind, target) if target is not None else None
            if problem:
                out.append(f"{obj.kind} {obj.name!r}: {problem}")  # type: ignore[attr-defined]
    return out


def reference_errors(objects: Iterable[PolicyModel], exists: Any) -> list[str]:
    out = []
    for obj in objects:
        for kind, name in references(obj):
            if not exists(kind, name):
                out.append(f"{obj.kind} {obj.name!r}: {kind} {name!r} does not exist")  # type: ignore[attr-defined]
    return out

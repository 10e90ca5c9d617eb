"""CRUD of every policy kind, and consumers' API keys: ``/v1/{plural}[/{name}]``.

One set of operations per kind, each typed with the kind's own pydantic model, so the
OpenAPI document describes every field and FastAPI refuses unknown fields and wrong types
before the store is touched. Every write then runs the store's one write path (the same
validation, reference checks and transaction as the CLI), inside the caller's identity.
"""
# no ``from __future__ import annotations``: FastAPI reads the per-kind annotations at
# definition time from the closures below

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from ..errors import NotFound, PolicyInvalid
from ..policy import KINDS, ApiKey, PolicyModel, new_api_key
from ..policy.bundle import parse_object
from ..policy.common import _NAME_RE
from .auth import visible
from .deps import Atomic, Caller, IfMatch, StoreDep, Wait, Writer, redact, write_response
from .errors import ERROR_RESPONSES, ApiError

__all__ = ["PATH_KINDS", "SpecCache", "router"]

#: URL segment -> kind
PATH_KINDS: dict[str, str] = {
    "gateways": "gateway",
    "clusters": "cluster",
    "routes": "route",
    "jwt-providers": "jwt_provider",
    "oidc-providers": "oidc_provider",
    "consumers": "consumer",
    "plans": "plan",
    "certificates": "certificate",
    "protos": "proto",
}

router = APIRouter(prefix="/v1", responses=ERROR_RESPONSES)

NamePath = Annotated[
    str,
    Path(pattern=_NAME_RE.pattern, max_length=63, description="The object's name."),
]


class ObjectOut(BaseModel):
    kind: str
    name: str
    spec: dict[str, Any]
    revision: int | None = None


class ObjectList(BaseModel):
    revision: int
    items: list[ObjectOut]


class ChangeOut(BaseModel):
    op: str
    kind: str
    name: str


class WriteOut(BaseModel):
    revision: int
    changes: list[ChangeOut]
    dry_run: bool = False
    notes: list[str] | None = None


def _checked(kind: str, name: str, obj: PolicyModel) -> PolicyModel:
    """The checks of new input pydantic does not run (``input_problem``: e.g. a certificate
    that has already expired)."""
    problem_of = getattr(obj, "input_problem", None)
    problem = problem_of() if problem_of is not None else None
    if problem:
        raise PolicyInvalid(f"{kind} {name!r}: {problem}")
    return obj


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge key by key, ``null`` removes, anything
    else replaces."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


class SpecCache:
    """Each object's redacted spec, computed once per object: the controller's objects are
    immutable and replaced on change, so an entry is valid while it holds the same object.
    It also keeps the last encoded listing of each kind that an unscoped caller got, keyed
    by revision and shape: a revision's listing never changes, and the same listing is
    asked for again and again (the CLI, the console, scripts polling)."""

    def __init__(self) -> None:
        self._specs: dict[tuple[str, str], tuple[PolicyModel, dict[str, Any] | None]] = {}
        self._listings: dict[str, tuple[tuple[int, str, bool], bytes]] = {}

    def spec(self, kind: str, obj: PolicyModel) -> dict[str, Any] | None:
        key = (kind, obj.name)  # type: ignore[attr-defined]
        hit = self._specs.get(key)
        if hit is not None and hit[0] is obj:
            return hit[1]
        spec = redact(kind, obj.spec())
        self._specs[key] = (obj, spec)
        return spec

    def keep(self, kind: str, names: set[str]) -> None:
        """Forget the objects of ``kind`` not listed any more (deleted ones)."""
        entries = list(self._specs.items())  # one C call: safe against other threads' writes
        if sum(1 for (k, _), _v in entries if k == kind) > len(names):
            self._specs = {key: v for key, v in entries if key[0] != kind or key[1] in names}

    def listing(self, kind: str, key: tuple[int, str, bool]) -> bytes | None:
        hit = self._listings.get(kind)
        return hit[1] if hit is not None and hit[0] == key else None

    def keep_listing(self, kind: str, key: tuple[int, str, bool], body: bytes) -> None:
        self._listings[kind] = (key, body)


def _encode(body: Any, pretty: bool) -> bytes:
    import orjson

    if pretty:  # what `gatewayctl ... -o json` prints: two-space indent, a final newline
        return orjson.dumps(body, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
    return orjson.dumps(body)


def _raw(content: bytes, revision: int) -> Response:
    return Response(content, media_type="application/json", headers={"ETag": f'"{revision}"'})


#: ``?view=`` of a listing
ListView = Annotated[
    Literal["objects", "specs"],
    Query(
        description="objects: the envelope {revision, items: [{kind, name, spec}]}; specs: "
        "a bare array of the specs, as `gatewayctl <kind> list -o json` prints them (the "
        "revision is in the ETag)."
    ),
]
Pretty = Annotated[bool, Query(description="Indent the JSON by two spaces.")]


def _etag(response: Response, revision: int) -> None:
    response.headers["ETag"] = f'"{revision}"'


def _kind_routes(plural: str, kind: str, model: type[PolicyModel]) -> None:
    tag = plural
    label = kind.replace("_", " ")

    @router.get(
        f"/{plural}",
        response_model=ObjectList | list[model],  # type: ignore[valid-type]
        tags=[tag],
        summary=f"List {plural}",
    )
    def list_objects(
        principal: Caller,
        store: StoreDep,
        request: Request,
        view: ListView = "objects",
        pretty: Pretty = False,
    ) -> Response:
        revision = store.revision()
        specs = request.app.state.specs
        key = (revision, view, pretty)
        if not principal.scoped and (cached := specs.listing(kind, key)) is not None:
            return _raw(cached, revision)
        # the controller's state in memory when it is this revision (10,000 routes: ~20 ms
        # instead of ~1 s to read, validate and dump them again), else the store
        listed = getattr(request.app.state, "listing", None)
        objects: list[Any] | None = listed(kind, revision) if listed is not None else None
        if objects is None:
            objects = list(store.list_objects(kind))
        items: list[Any] = []
        for obj in objects:
            spec = specs.spec(kind, obj)
            if visible(principal, kind, spec):
                if view == "specs":  # name first, as the CLI prints a spec
                    spec = spec or {}
                    items.append(spec if "name" in spec else {"name": obj.name, **spec})
                else:
                    items.append({"kind": kind, "name": obj.name, "spec": spec})
        specs.keep(kind, {obj.name for obj in objects})
        # encoded here: FastAPI would validate the 10,000 items against ObjectList again
        body = _encode(items if view == "specs" else {"revision": revision, "items": items}, pretty)
        if not principal.scoped:
            specs.keep_listing(kind, key, body)
        return _raw(body, revision)

    @router.get(
        f"/{plural}/{{name}}", response_model=ObjectOut, tags=[tag], summary=f"Get a {label}"
    )
    def get_object(
        name: NamePath, principal: Caller, store: StoreDep, response: Response
    ) -> dict[str, Any]:
        revision = store.revision()
        spec = store.get(kind, name).spec()
        if not visible(principal, kind, spec):
            raise NotFound(f"{kind} {name!r} does not exist")  # not even its existence leaks
        _etag(response, revision)
        return {"kind": kind, "name": name, "spec": redact(kind, spec), "revision": revision}

    @router.post(
        f"/{plural}",
        response_model=WriteOut,
        response_model_exclude_none=True,
        status_code=201,
        tags=[tag],
        summary=f"Create a {label}",
    )
    def create_object(
        body: Annotated[model, Body(description=f"The {label}, as in a declarative file.")],  # type: ignore[valid-type]
        principal: Caller,
        store: StoreDep,
        expect: IfMatch,
        wait: Wait,
        response: Response,
        atomic: Atomic = False,
    ) -> dict[str, Any]:
        obj = _checked(kind, body.name, body)  # type: ignore[attr-defined]
        writer = Writer(store, principal)
        writer.check(kind, obj.name, None, obj.spec())  # type: ignore[attr-defined]
        result = writer.single(lambda: _create(store, obj, expect))
        _etag(response, result.revision)
        return write_response(store, result, wait, atomic_as=_atomic_as(principal, atomic))

    @router.put(
        f"/{plural}/{{name}}",
        response_model=WriteOut,
        response_model_exclude_none=True,
        tags=[tag],
        summary=f"Replace a {label}",
    )
    def replace_object(
        name: NamePath,
        body: Annotated[model, Body(description=f"The whole {label}.")],  # type: ignore[valid-type]
        principal: Caller,
        store: StoreDep,
        expect: IfMatch,
        wait: Wait,
        response: Response,
        atomic: Atomic = False,
    ) -> dict[str, Any]:
        obj = _checked(kind, name, body)
        if obj.name != name:  # type: ignore[attr-defined]
            raise ApiError(400, "invalid", f"{kind} {name!r}: name: differs from the path", "name")
        new = obj.spec()
        writer = Writer(store, principal)

        def replace(current: dict[str, Any]) -> dict[str, Any]:
            writer.check(kind, name, current, new)
            return new

        result = writer.single(lambda: store.update(kind, name, replace, expect_revision=expect))
        _etag(response, result.revision)
        return write_response(store, result, wait, atomic_as=_atomic_as(principal, atomic))

    @router.patch(
        f"/{plural}/{{name}}",
        response_model=WriteOut,
        response_model_exclude_none=True,
        tags=[tag],
        summary=f"Change fields of a {label} (JSON merge patch)",
    )
    def patch_object(
        name: NamePath,
        body: Annotated[
            dict[str, Any],
            Body(
                description="RFC 7386 JSON merge patch of the object: the fields to set; "
                "null removes a field.",
                media_type="application/merge-patch+json",
            ),
        ],
        principal: Caller,
        store: StoreDep,
        expect: IfMatch,
        wait: Wait,
        response: Response,
        atomic: Atomic = False,
    ) -> dict[str, Any]:
        writer = Writer(store, principal)

        def patch(current: dict[str, Any]) -> dict[str, Any]:
            merged = merge_patch(current, body)
            new = _checked(kind, name, parse_object(kind, merged, f"{kind} {name!r}")).spec()
            writer.check(kind, name, current, new)
            return new

        result = writer.single(lambda: store.update(kind, name, patch, expect_revision=expect))
        _etag(response, result.revision)
        return write_response(store, result, wait, atomic_as=_atomic_as(principal, atomic))

    @router.delete(
        f"/{plural}/{{name}}",
        response_model=WriteOut,
        response_model_exclude_none=True,
        tags=[tag],
        summary=f"Delete a {label}",
    )
    def delete_object(
        name: NamePath,
        principal: Caller,
        store: StoreDep,
        expect: IfMatch,
        wait: Wait,
        response: Response,
        atomic: Atomic = False,
    ) -> dict[str, Any]:
        result = _delete(Writer(store, principal), kind, name, expect)
        _etag(response, result.revision)
        return write_response(store, result, wait, atomic_as=_atomic_as(principal, atomic))


def _atomic_as(principal: Any, atomic: bool) -> str | None:
    return principal.name if atomic else None  # type: ignore[no-any-return]


def _create(store: Any, obj: PolicyModel, expect: int | None) -> Any:
    from ..store import ApplyResult, ObjectChange

    revision = store.create(obj, expect_revision=expect)
    return ApplyResult(revision, [ObjectChange("create", obj.kind, obj.name)])  # type: ignore[attr-defined]


def _delete(writer: Writer, kind: str, name: str, expect: int | None) -> Any:
    """A delete, checked against the object as it is when deleted (a scoped caller: planned
    at a revision, and written only at that revision)."""
    from ..store import ApplyResult, ObjectChange

    store = writer.store

    def run(dry_run: bool, expect_revision: int | None) -> ApplyResult:
        if dry_run:
            revision = store.revision()
            before = store.get(kind, name).spec()
            if store.revision() != revision:  # changed while reading: a conflict, try again
                from ..errors import Conflict

                raise Conflict(f"{kind} {name!r} changed while it was being deleted")
            if expect_revision is not None and revision != expect_revision:
                from ..errors import Conflict

                raise Conflict(
                    f"revision is {revision}, not {expect_revision} as expected: "
                    "another change was written since; nothing written (plan again)"
                )
            return ApplyResult(revision, [ObjectChange("delete", kind, name, before, None)])
        # the change carries the deleted value: what atomic=true writes back
        return store.write([("delete", kind, name, None)], expect_revision=expect_revision)

    return writer.bundle(run, expect)


for _plural, _kind in PATH_KINDS.items():
    _kind_routes(_plural, _kind, KINDS[_kind])


# -- consumers' API keys --------------------------------------------------------------------


def parse_expiry(value: str | None, field: str = "expires") -> datetime | None:
    """A duration from now or an ISO 8601 time in the future (controlplane/durations.py)."""
    from ..durations import expiry

    if value is None:
        return None
    try:
        return datetime.fromtimestamp(expiry(value, field), UTC)
    except ValueError as exc:
        raise ApiError(400, "invalid", str(exc), field) from None


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    expires: str | None = Field(
        default=None, max_length=64, description="30d, 12h, 90m, or an ISO 8601 time."
    )


class KeyOut(BaseModel):
    id: str
    consumer: str
    prefix: str
    expires_at: str | None
    expired: bool
    revoked: bool = Field(description="revoked keys stay listed; their secret is erased")
    revoked_at: str | None


class KeyList(BaseModel):
    items: list[KeyOut]


class KeyCreated(WriteOut):
    key: str = Field(description="The API key itself: shown this once, never again.")
    id: str


def _key_row(key: ApiKey) -> dict[str, Any]:
    return key.listing()


class KeyOwner(BaseModel):
    id: str
    consumer: str


KeyId = Annotated[str, Path(pattern=r"^ak_[0-9a-f]{12}$")]


@router.get("/api-keys", response_model=KeyList, tags=["consumers"])
def list_all_keys(principal: Caller, store: StoreDep, response: Response) -> dict[str, Any]:
    """Every consumer's API keys by id and prefix, in one request (``consumer key list``
    without a consumer), ordered by id."""
    revision = store.revision()
    keys = store.list_objects("api_key")
    _etag(response, revision)
    return {"items": [_key_row(k) for k in keys]}  # type: ignore[arg-type]


@router.get("/api-keys/{key_id}", response_model=KeyOwner, tags=["consumers"])
def key_owner(
    key_id: KeyId, principal: Caller, store: StoreDep, response: Response
) -> dict[str, Any]:
    """Which consumer an API key belongs to, by its id: one request where finding it under
    ``/consumers/{name}/keys`` takes one per consumer. Read without the key's secret, so it
    also answers for a row whose secret no longer decrypts (to revoke it)."""
    revision = store.revision()
    try:
        spec = store.clear_spec("api_key", key_id)
    except NotFound:
        raise NotFound(f"api key {key_id!r} does not exist") from None
    _etag(response, revision)
    return {"id": key_id, "consumer": str(spec.get("consumer", ""))}


@router.get("/consumers/{name}/keys", response_model=KeyList, tags=["consumers"])
def list_keys(
    name: NamePath, principal: Caller, store: StoreDep, response: Response
) -> dict[str, Any]:
    """A consumer's API keys by id and prefix (the key itself is never shown again)."""
    revision = store.revision()
    store.get("consumer", name)  # 404 for a consumer that does not exist
    keys = [k for k in store.list_objects("api_key") if k.consumer == name]  # type: ignore[attr-defined]
    _etag(response, revision)
    return {"items": [_key_row(k) for k in keys]}  # type: ignore[arg-type]


@router.post(
    "/consumers/{name}/keys",
    response_model=KeyCreated,
    response_model_exclude_none=True,
    status_code=201,
    tags=["consumers"],
)
def add_key(
    name: NamePath,
    principal: Caller,
    store: StoreDep,
    expect: IfMatch,
    wait: Wait,
    response: Response,
    body: Annotated[KeyIn | None, Body()] = None,
) -> dict[str, Any]:
    """Create an API key for the consumer; the answer's ``key`` is the only time it is shown."""
    key = new_api_key(name, parse_expiry((body or KeyIn()).expires))
    writer = Writer(store, principal)
    writer.check("api_key", key.name, None, redact("api_key", key.spec()))
    result = writer.single(lambda: _create(store, key, expect))
    _etag(response, result.revision)
    return {**write_response(store, result, wait), "key": key.key, "id": key.name}


@router.delete(
    "/consumers/{name}/keys/{key_id}",
    response_model=WriteOut,
    response_model_exclude_none=True,
    tags=["consumers"],
)
def revoke_key(
    name: NamePath,
    key_id: KeyId,
    principal: Caller,
    store: StoreDep,
    expect: IfMatch,
    wait: Wait,
    response: Response,
) -> dict[str, Any]:
    """Revoke an API key: its secret is erased, it stays listed as revoked (with when), and
    proxies stop accepting it with the new revision."""
    try:
        # the clear part of the row: owner and the (redacted) old value need no secret, so
        # a row whose secret does not decrypt (damaged, forged) is checked and removed too
        before = store.clear_spec("api_key", key_id)
    except NotFound:
        raise NotFound(f"api key {key_id!r} does not exist") from None
    if before.get("consumer") != name:
        raise NotFound(f"api key {key_id!r} of consumer {name!r} does not exist")
    from ..keyrevoke import revoke_key

    writer = Writer(store, principal)
    writer.check("api_key", key_id, redact("api_key", before), None)
    result = writer.single(lambda: revoke_key(store, key_id, expect_revision=expect)[0])
    _etag(response, result.revision)
    return write_response(store, result, wait)

"""Whole documents: ``apply`` / ``plan`` / ``diff`` / ``export``, and ``render`` of a gateway.

The body of apply, plan and diff is the declarative file (``apply -f``) as JSON, typed with
the same :class:`~controlplane.policy.Bundle` model the CLI reads files with.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Response
from pydantic import BaseModel

from ..errors import NotFound, PolicyInvalid
from ..policy import Bundle
from .auth import require_role, visible
from .deps import Caller, IfMatch, StoreDep, Wait, Writer, change_rows, redact, write_response
from .errors import ERROR_RESPONSES
from .policy import NamePath, WriteOut

__all__ = ["router"]

router = APIRouter(prefix="/v1", responses=ERROR_RESPONSES, tags=["declarative"])

BundleBody = Annotated[
    Bundle, Body(description="A declarative document, as `gatewayctl apply -f` reads (JSON).")
]
Prune = Annotated[
    bool, Query(description="Also delete the objects of the declarative kinds not named.")
]


class DiffChange(BaseModel):
    op: str
    kind: str
    name: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None


class DiffOut(BaseModel):
    revision: int
    changes: list[DiffChange]


def _checked(bundle: Bundle) -> Bundle:
    """The checks of a file that its model alone does not make: unique names, and each new
    object's ``input_problem`` (references may name stored objects: the store checks them)."""
    bundle.check(references=False)
    for obj in bundle.objects():
        problem_of = getattr(obj, "input_problem", None)
        problem = problem_of() if problem_of is not None else None
        if problem:
            raise PolicyInvalid(f"{obj.kind} {obj.name!r}: {problem}")  # type: ignore[attr-defined]
    return bundle


def _apply(
    store: Any,
    principal: Any,
    bundle: Bundle,
    prune: bool,
    dry_run: bool,
    expect: int | None,
    wait: float | None,
    response: Response,
) -> dict[str, Any]:
    _checked(bundle)
    result = Writer(store, principal).bundle(
        lambda dry, rev: store.apply(bundle, prune=prune, dry_run=dry, expect_revision=rev),
        expect,
        dry_run=dry_run,
    )
    response.headers["ETag"] = f'"{result.revision}"'
    return write_response(store, result, wait, dry_run=dry_run)


@router.post("/apply", response_model=WriteOut, response_model_exclude_none=True)
def apply(
    body: BundleBody,
    principal: Caller,
    store: StoreDep,
    expect: IfMatch,
    wait: Wait,
    response: Response,
    prune: Prune = False,
    dry_run: Annotated[
        bool, Query(description="Run every check of the apply, then roll it back.")
    ] = False,
) -> dict[str, Any]:
    """Make the policy match the document, all or nothing (``apply -f``)."""
    return _apply(store, principal, body, prune, dry_run, expect, wait, response)


@router.post("/plan", response_model=WriteOut, response_model_exclude_none=True)
def plan(
    body: BundleBody,
    principal: Caller,
    store: StoreDep,
    expect: IfMatch,
    response: Response,
    prune: Prune = False,
) -> dict[str, Any]:
    """The apply, every check included, rolled back: its answer is the apply's."""
    return _apply(store, principal, body, prune, True, expect, None, response)


@router.post("/diff", response_model=DiffOut)
def diff(
    body: BundleBody, principal: Caller, store: StoreDep, response: Response, prune: Prune = False
) -> dict[str, Any]:
    """What applying the document would change, with each object's old and new value."""
    _checked(body)
    result = store.apply(body, prune=prune, dry_run=True, checks=False)
    response.headers["ETag"] = f'"{result.revision}"'
    changes = [
        c
        for c in change_rows(result.changes, values=True)
        if visible(principal, c["kind"], c["after"] or c["before"] or {})
    ]
    return {"revision": result.revision, "changes": changes}


@router.get("/export", response_model=dict[str, Any])
def export(
    principal: Caller,
    store: StoreDep,
    response: Response,
    secrets: Annotated[
        bool, Query(description="Include certificates' private keys (admin tokens only).")
    ] = False,
) -> dict[str, Any]:
    """All policy the caller may see, as one declarative document."""
    if secrets:
        require_role(principal, "admin")
    revision, objects = store.load_all()
    bundle = Bundle.from_objects(
        o
        for o in objects
        if visible(principal, o.kind, o.spec())  # type: ignore[attr-defined]
    )
    data = bundle.to_data()
    if not secrets:
        for key, items in data.items():
            kind = next((o.kind for o in getattr(bundle, key)), None)  # type: ignore[attr-defined]
            if kind is not None:
                data[key] = [redact(kind, item) for item in items]
    response.headers["ETag"] = f'"{revision}"'
    return data


@router.get("/gateways/{name}/render", response_model=dict[str, Any], tags=["gateways"])
def render(
    name: NamePath,
    principal: Caller,
    store: StoreDep,
    show_secrets: Annotated[
        bool, Query(description="Private keys and API keys in clear (admin tokens only).")
    ] = False,
) -> dict[str, Any]:
    """The exact xDS resources a proxy of the gateway receives (``gatewayctl render``)."""
    from ..render import render_gateway

    if show_secrets:
        require_role(principal, "admin")
    if not visible(principal, "gateway", {"name": name}):
        raise NotFound(f"gateway {name!r} does not exist")
    return render_gateway(store, name, show_secrets=show_secrets)

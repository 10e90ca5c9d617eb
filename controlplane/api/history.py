"""Admin API: revision history, diff between revisions, rollback, audit (contract v1).

GET  /v1/history        revisions newest first (viewer; a scoped token sees its gateways'
                        and routes' changes and the shared kinds')
GET  /v1/history/diff   what changed between two revisions (viewer, same visibility)
POST /v1/rollback       the policy as of a revision, written as a NEW revision (editor;
                        every object it changes must be writable by the caller)
GET  /v1/audit          who changed what, with old and new values, secrets as digests (admin)
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from ..errors import Conflict, PolicyInvalid
from ..store import ObjectChange
from ..store.actor import acting_as
from .auth import Principal, check_write, require_role, visible
from .deps import Caller
from .deps import StoreDep as Db
from .errors import ERROR_RESPONSES

__all__ = ["router"]

router = APIRouter(prefix="/v1", responses=ERROR_RESPONSES, tags=["history"])

#: the most rows one call returns
MAX_LIMIT = 10_000


class ChangeRef(BaseModel):
    op: str
    kind: str
    name: str


class HistoryItem(BaseModel):
    revision: int
    at: float | None
    actor: str | None
    note: str | None = Field(None, description="e.g. 'rollback to revision 12'")
    changes: list[ChangeRef]


class HistoryPage(BaseModel):
    items: list[HistoryItem]


class ChangeValues(ChangeRef):
    before: dict[str, Any] | None
    after: dict[str, Any] | None


class DiffResult(BaseModel):
    changes: list[ChangeValues]


class AuditItem(ChangeValues):
    revision: int
    at: float | None
    actor: str | None


class AuditPage(BaseModel):
    items: list[AuditItem]


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    revision: int = Field(ge=0, description="the revision whose policy to restore")
    dry_run: bool = False


class SkippedItem(BaseModel):
    kind: str
    name: str
    reason: str


class RollbackResponse(BaseModel):
    revision: int
    changes: list[ChangeRef]
    dry_run: bool
    skipped: list[SkippedItem]
    notes: list[str] = Field(default_factory=list)


def _etag(response: Response, revision: int) -> None:
    response.headers["ETag"] = f'"{revision}"'


def _if_match(value: str | None) -> int | None:
    """``If-Match: "N"`` -> N (the revision the caller planned against)."""
    if value is None:
        return None
    text = value.strip().removeprefix("W/").strip('"')
    if not text.isdigit():
        raise PolicyInvalid(f'If-Match: {value[:32]!r} is not a revision such as "12"')
    return int(text)


def _kind(kind: str | None) -> str | None:
    from ..policy import KINDS

    if kind is None:
        return None
    normal = kind.replace("-", "_")
    if normal not in KINDS:
        raise PolicyInvalid(f"kind: {kind[:32]!r} is not a kind ({', '.join(KINDS)})")
    return normal


@router.get("/history", response_model=HistoryPage)
def get_history(
    who: Caller,
    db: Db,
    response: Response,
    kind: str | None = None,
    name: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
    before: Annotated[int | None, Query(ge=0, description="only revisions older")] = None,
) -> HistoryPage:
    require_role(who, "viewer")
    revisions = db.history(_kind(kind), name, limit, before)
    items = []
    for r in revisions:
        changes = [
            ChangeRef(op=c.op, kind=c.kind, name=c.name)
            for c in r.changes
            if _visible_any(who, c.kind, c.name, c.before, c.after)
        ]
        if changes:
            items.append(
                HistoryItem(
                    revision=r.revision, at=r.at, actor=r.actor, note=r.note, changes=changes
                )
            )
    _etag(response, db.revision())
    return HistoryPage(items=items)


@router.get("/history/diff", response_model=DiffResult)
def get_diff(
    who: Caller,
    db: Db,
    response: Response,
    from_: Annotated[int, Query(alias="from", ge=0)],
    to: Annotated[int | None, Query(ge=0, description="default: the newest")] = None,
) -> DiffResult:
    require_role(who, "viewer")
    newest = db.revision()
    changes = db.diff_revisions(from_, newest if to is None else to)
    _etag(response, newest)
    return DiffResult(changes=[_values(c) for c in changes if _visible(who, c)])


def _visible(who: Principal, c: ObjectChange) -> bool:
    return _visible_any(who, c.kind, c.name, c.before, c.after)


def _visible_any(who: Principal, kind: str, name: str, *specs: dict[str, Any] | None) -> bool:
    """A change is visible when the object is, before or after it (a route moved out of a
    token's gateways still shows that it left)."""
    return any(visible(who, kind, spec or {}, name) for spec in specs if spec is not None) or (
        all(spec is None for spec in specs) and visible(who, kind, {}, name)
    )


def _values(c: ObjectChange) -> ChangeValues:
    return ChangeValues(op=c.op, kind=c.kind, name=c.name, before=c.before, after=c.after)


@router.post("/rollback", response_model=RollbackResponse)
async def post_rollback(
    who: Caller,
    db: Db,
    body: RollbackRequest,
    response: Response,
    if_match: Annotated[str | None, Header()] = None,
    dry_run: Annotated[bool, Query()] = False,
    wait: Annotated[str | None, Query(description="e.g. 30s: answer once proxies run it")] = None,
) -> RollbackResponse:
    """Write the policy as of ``revision`` as one new revision. The caller must be allowed
    to write every object it changes: it is planned (a dry run), checked, then written
    against the planned revision, so a concurrent change makes it 409, never unchecked."""
    require_role(who, "editor")
    expect = _if_match(if_match)
    timeout = _timeout(wait)
    dry = dry_run or body.dry_run

    def run() -> Any:
        with acting_as(who.name):
            plan = db.rollback(body.revision, expect_revision=expect, dry_run=True)
            for c in plan.changes:
                check_write(who, c.kind, c.name, c.before, c.after)
            if dry or not plan.changes:
                return plan
            try:
                return db.rollback(body.revision, expect_revision=plan.revision)
            except Conflict:
                raise Conflict(
                    "another change was written while the rollback was checked; "
                    "nothing written (try again)"
                ) from None

    result = await run_in_threadpool(run)
    notes: list[str] = []
    if timeout is not None and result.changes and not dry:
        from .deps import wait_committed

        notes = await run_in_threadpool(wait_committed, db, result.revision, timeout)
    _etag(response, result.revision)
    return RollbackResponse(
        revision=result.revision,
        changes=[ChangeRef(op=c.op, kind=c.kind, name=c.name) for c in result.changes],
        dry_run=dry,
        skipped=[SkippedItem(kind=s.kind, name=s.name, reason=s.reason) for s in result.skipped],
        notes=notes,
    )


def _timeout(wait: str | None) -> float | None:
    if wait is None:
        return None
    from ..policy.bounds import duration_ms, parse_duration

    try:
        return duration_ms(parse_duration(wait)) / 1000
    except ValueError as exc:
        raise PolicyInvalid(f"wait: {exc}") from None


@router.get("/audit", response_model=AuditPage)
def get_audit(
    who: Caller,
    db: Db,
    response: Response,
    actor: str | None = None,
    kind: str | None = None,
    name: str | None = None,
    since: Annotated[float | None, Query(description="epoch seconds")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
) -> AuditPage:
    require_role(who, "admin")
    entries = db.audit(actor, _kind(kind), name, since, limit)
    _etag(response, db.revision())
    return AuditPage(
        items=[
            AuditItem(
                revision=e.revision,
                at=e.at,
                actor=e.actor,
                op=e.op,
                kind=e.kind,
                name=e.name,
                before=e.before,
                after=e.after,
            )
            for e in entries
        ]
    )

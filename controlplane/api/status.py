"""Read-only state: revision, proxies' status, events; and the unauthenticated probes
(``/healthz``, ``/readyz``, ``/metrics``), which expose no policy."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel

from .auth import visible
from .deps import Caller, StoreDep
from .errors import ERROR_RESPONSES

__all__ = ["HealthSource", "probes", "router"]

router = APIRouter(prefix="/v1", responses=ERROR_RESPONSES, tags=["status"])


@dataclass(frozen=True)
class HealthSource:
    """What the running controller tells probes: whether it serves its first snapshot yet,
    its Prometheus text, and its own status (``/status`` of the health port)."""

    ready: Callable[[], bool]
    metrics: Callable[[], str]
    status: Callable[[], dict[str, Any]] | None = None


class RevisionOut(BaseModel):
    revision: int
    database_id: str


class StatusOut(BaseModel):
    revision: int
    controllers: list[dict[str, Any]]
    gateways: dict[str, dict[str, Any]]
    proxies: list[dict[str, Any]]
    problem: str | None


class EventsOut(BaseModel):
    items: list[dict[str, Any]]


@router.get("/revision", response_model=RevisionOut)
def revision(principal: Caller, store: StoreDep, response: Response) -> dict[str, Any]:
    """The policy revision (also every response's ETag) and the database's id."""
    ident = store.identity()
    response.headers["ETag"] = f'"{ident.revision}"'
    return {"revision": ident.revision, "database_id": ident.database_id}


@router.get("/status", response_model=StatusOut)
def status(
    principal: Caller,
    store: StoreDep,
    response: Response,
    grace: Annotated[
        str,
        Query(
            max_length=32,
            description="How long after a change a connected proxy may still run an older "
            "revision before it counts as out of sync: a duration (5s, 250ms, 1m) or a "
            "number of seconds, at most 1h.",
        ),
    ] = "5s",
) -> dict[str, Any]:
    """Every proxy: gateway, ACKed revision, in sync or not, last NACK (``gatewayctl status``);
    ``problem`` is non-null when one is out of sync, NACKing or held (the CLI's exit 8)."""
    from ..cli.status import status_document
    from ..durations import parse_duration_seconds
    from ..errors import PolicyInvalid

    try:
        grace_s = parse_duration_seconds(grace, "grace", min_s=0, max_s=3600)
    except ValueError as exc:
        raise PolicyInvalid(str(exc)) from None
    data = status_document(
        store, grace_s, visible=lambda gateway: visible(principal, "gateway", {"name": gateway})
    )
    response.headers["ETag"] = f'"{data["revision"]}"'
    return data


@router.get("/events", response_model=EventsOut)
def events(
    principal: Caller,
    store: StoreDep,
    since: Annotated[
        float | None, Query(ge=0, le=1e11, description="Epoch seconds: only newer events.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> dict[str, Any]:
    """Proxy events (connect, ACK, NACK...) and policy changes, oldest first."""
    items = [
        e
        for e in store.events(since=since, limit=limit)
        if not e.get("gateway") or visible(principal, "gateway", {"name": e["gateway"]})
    ]
    return {"items": items}


def probes(source: HealthSource | None, *, status: bool = False) -> APIRouter:
    """``/healthz``, ``/readyz`` (503 until the first snapshot), ``/metrics``; with
    ``status`` also the controller's own ``/status`` (the health port only)."""
    probe = APIRouter(tags=["probes"])

    def ready() -> bool:
        return source is None or source.ready()

    @probe.head("/healthz", include_in_schema=False)
    @probe.get(
        "/healthz", response_model=dict[str, bool], responses={503: {"description": "Not ready"}}
    )
    async def healthz() -> JSONResponse:
        ok = ready()
        return JSONResponse({"ok": ok}, status_code=200 if ok else 503)

    @probe.head("/readyz", include_in_schema=False)
    @probe.get(
        "/readyz", response_model=dict[str, bool], responses={503: {"description": "Not ready"}}
    )
    async def readyz() -> JSONResponse:
        ok = ready()
        return JSONResponse({"ok": ok}, status_code=200 if ok else 503)

    @probe.head("/metrics", include_in_schema=False)
    @probe.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        from ..metrics import CONTENT_TYPE

        text = source.metrics() if source is not None else ""
        return Response(text, media_type=CONTENT_TYPE)

    if status and source is not None and source.status is not None:
        status_of = source.status

        @probe.api_route(
            "/status",
            methods=["GET", "HEAD"],
            response_model=dict[str, Any],
            include_in_schema=False,
        )
        async def controller_status(request: Request) -> dict[str, Any]:
            return status_of()

    return probe

"""``/v1/analytics/...``: usage analytics from the access-log rollups (``gatewayctl
analytics summary|consumers|routes|gateways|usage|chart|export``), same filters, same JSON as
``-o json``."""

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from ..errors import Forbidden, PolicyInvalid
from ..policy.common import _NAME_RE
from .auth import Principal
from .deps import Caller, StoreDep
from .errors import ERROR_RESPONSES, ApiError

__all__ = ["router"]

router = APIRouter(prefix="/v1/analytics", responses=ERROR_RESPONSES, tags=["analytics"])

Since = Annotated[
    str, Query(max_length=64, description="Start: 1h (ago), today, or an ISO 8601 time.")
]
Until = Annotated[str, Query(max_length=64, description="End: now, 10m (ago), or ISO 8601.")]
NameQuery = Annotated[str | None, Query(pattern=_NAME_RE.pattern, max_length=63)]
ConsumerQuery = Annotated[
    str | None,
    Query(pattern=rf"{_NAME_RE.pattern}|^-$", max_length=63, description="'-': no consumer."),
]


def _rows(
    store: Any,
    principal: Principal,
    since: str,
    until: str,
    gateway: str | None,
    route: str | None,
    consumer: str | None,
) -> tuple[list[Any], float, float]:
    from ..analytics.rollup import Filter, RollupReader
    from ..cli.analytics import parse_time

    if principal.gateways and gateway not in principal.gateways:
        raise Forbidden(
            f"token {principal.name!r} sees the analytics of gateways "
            f"{', '.join(sorted(principal.gateways))} only: give gateway="
        )
    try:
        start, end = parse_time(since, "since"), parse_time(until, "until")
    except (ValueError, OverflowError):
        raise PolicyInvalid("since/until: not a time") from None
    if end <= start:
        raise PolicyInvalid(f"until: must be after since ({since})")
    reader = RollupReader(store._reader)  # the store's own read engine: no new pool per call
    who = "" if consumer == "-" else consumer
    return list(reader.rows(Filter(start, end, gateway, route, who))), start, end


@router.get("/summary", response_model=dict[str, Any])
def summary(
    principal: Caller,
    store: StoreDep,
    since: Since = "1h",
    until: Until = "now",
    gateway: NameQuery = None,
    route: NameQuery = None,
    consumer: ConsumerQuery = None,
) -> dict[str, Any]:
    """Requests per status class, error rate and latency percentiles."""
    from ..analytics.report import summarise

    rows, start, end = _rows(store, principal, since, until, gateway, route, consumer)
    data = summarise(rows)
    data["since"] = datetime.fromtimestamp(start, UTC).isoformat()
    data["until"] = datetime.fromtimestamp(end, UTC).isoformat()
    return data


@router.get("/top/{by}", response_model=list[dict[str, Any]])
def top(
    by: Annotated[str, Path(pattern="^(consumers|routes|gateways)$")],
    principal: Caller,
    store: StoreDep,
    since: Since = "1h",
    until: Until = "now",
    gateway: NameQuery = None,
    route: NameQuery = None,
    consumer: ConsumerQuery = None,
    limit: Annotated[int, Query(ge=0, le=10_000, description="Rows (0: all).")] = 10,
) -> list[dict[str, Any]]:
    """Top consumers, routes or gateways by requests, with status classes and percentiles."""
    from ..analytics.report import top as top_of

    rows, _, _ = _rows(store, principal, since, until, gateway, route, consumer)
    return top_of(rows, by.removesuffix("s"), limit)


class UsageEntry(BaseModel):
    consumer: str
    plan: str | None = Field(description="the plan the limit comes from; null: its own limits")
    per: str = Field(description="second, minute, hour, day, week or month")
    limit: int = Field(description="requests allowed per `per`")
    period_start: str | None = Field(
        description="ISO 8601 start of the counted period (the current minute for a "
        "per-second limit: rollups are per minute; the calendar window for day/week/month); "
        "null: a quota no route applies"
    )
    used: int = Field(
        description="requests the limits let through since period_start: admitted + "
        "upstream_errors; for day/week/month, the quota counters' count on `route`"
    )
    admitted: int
    upstream_errors: int
    throttled: int = Field(description="refused with 429 by the gateway's own limits")
    gateway: str | None = Field(None, description="day/week/month: the gateway counted on")
    route: str | None = Field(None, description="day/week/month: the route counted on")
    resets_at: int | None = Field(
        None, description="day/week/month: unix time the calendar window ends"
    )
    text: str = Field(description="the line `gatewayctl analytics usage` prints")


class UsageOut(BaseModel):
    items: list[UsageEntry]
    warnings: list[str] = Field(
        description="why the figures may be short, e.g. gateways with analytics off"
    )


@router.get("/usage", response_model=UsageOut)
def usage(
    principal: Caller,
    store: StoreDep,
    consumer: Annotated[
        str | None,
        Query(pattern=_NAME_RE.pattern, max_length=63, description="Only this consumer."),
    ] = None,
) -> dict[str, Any]:
    """Requests of consumers in the current period of each of their limits, against them
    (``gatewayctl analytics usage``). Counted over every gateway: not for gateway-scoped
    tokens. An unknown consumer: 404."""
    from ..analytics.rollup import RollupReader
    from ..analytics.usage import usage as usage_of

    if principal.gateways:
        raise Forbidden(
            f"token {principal.name!r} is limited to gateways "
            f"{', '.join(sorted(principal.gateways))}: usage counts every gateway"
        )
    return usage_of(store, RollupReader(store._reader), consumer)


class ExportRow(BaseModel):
    """One hour x gateway x route x consumer; the request columns never overlap and add up
    to ``requests``. Empty ``route``: no route matched; empty ``consumer``: anonymous."""

    hour: str = Field(description="start of the hour, UTC, 2026-12-04T13:00:00Z")
    gateway: str
    route: str
    consumer: str
    requests: int
    admitted: int = Field(description="passed the gateway's checks, answered below 500")
    throttled: int = Field(description="429 from the gateway's own rate limits")
    unauthenticated: int = Field(description="401/403 generated by the gateway")
    upstream_errors: int = Field(description="5xx, from the backend or reaching it")
    refused: int = Field(description="no response, or another answer of the gateway itself")
    bytes_in: int = Field(description="request headers and body bytes, every request")
    bytes_out: int = Field(description="response headers and body bytes, every request")
    latency_p50_ms: float | None = Field(
        description="of admitted and upstream-error requests (upper bound of a 19 % bucket)"
    )
    latency_p95_ms: float | None
    latency_p99_ms: float | None


class ExportOut(BaseModel):
    columns: list[str] = Field(description="the column order of the CSV and JSONL exports")
    items: list[ExportRow]


@router.get("/export", response_model=ExportOut)
def export(
    principal: Caller,
    store: StoreDep,
    since: Annotated[
        str | None, Query(max_length=64, description="Start (required): ISO 8601, 1h (ago)...")
    ] = None,
    until: Annotated[
        str | None, Query(max_length=64, description="End (required): ISO 8601, now...")
    ] = None,
    gateway: NameQuery = None,
    route: NameQuery = None,
    consumer: ConsumerQuery = None,
) -> dict[str, Any]:
    """Usage per hour x gateway x route x consumer for billing (``gatewayctl analytics
    export``, which writes these rows as CSV or JSON Lines). Both ends of the range are
    required."""
    from ..analytics.export import COLUMNS, export_rows

    for name, value in (("since", since), ("until", until)):
        if value is None:
            raise ApiError(
                400, "invalid", f"{name}: required (an export covers a bounded range)", name
            )
    rows, _, _ = _rows(store, principal, since or "", until or "", gateway, route, consumer)
    return {"columns": list(COLUMNS), "items": export_rows(rows)}


class ChartOut(BaseModel):
    points: list[dict[str, Any]] = Field(
        description="per step: time, requests, errors (5xx and no response), p99_ms"
    )
    summary: dict[str, Any]
    consumers: list[dict[str, Any]] = Field(description="top 20 consumers")
    routes: list[dict[str, Any]] = Field(description="top 20 routes")


#: the most points one chart answer holds (a 100-day range at 1m would be 144,000)
MAX_POINTS = 10_000


@router.get("/chart", response_model=ChartOut)
def chart(
    principal: Caller,
    store: StoreDep,
    since: Since = "1h",
    until: Until = "now",
    gateway: NameQuery = None,
    route: NameQuery = None,
    consumer: ConsumerQuery = None,
    step: Annotated[str, Query(max_length=32, description="Time per point: 1m, 5m, 1h...")] = "1m",
) -> dict[str, Any]:
    """Requests, errors and p99 latency over time, with the summary and top consumers and
    routes of the same window: what ``gatewayctl analytics chart`` draws (``--html`` is
    written by the CLI from this answer)."""
    from ..analytics.report import series, summarise
    from ..analytics.report import top as top_of
    from ..durations import parse_duration_seconds

    try:
        step_s = int(parse_duration_seconds(step, "step", min_s=60))
    except ValueError as exc:
        raise ApiError(400, "invalid", str(exc), "step") from None
    rows, start, end = _rows(store, principal, since, until, gateway, route, consumer)
    if (end - start) / step_s > MAX_POINTS:
        raise ApiError(
            400, "invalid", f"step: {step} gives more than {MAX_POINTS} points; widen it", "step"
        )
    return {
        "points": series(rows, start, end, step_s),
        "summary": summarise(rows),
        "consumers": top_of(rows, "consumer", 20),
        "routes": top_of(rows, "route", 20),
    }

"""``/v1/analytics/...``: usage analytics from the access-log rollups (``gatewayctl
analytics summary|consumers|routes|gateways``), same filters, same JSON as ``-o json``."""

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from ..errors import Forbidden, PolicyInvalid
from ..policy.common import _NAME_RE
from .auth import Principal
from .deps import Caller, StoreDep
from .errors import ERROR_RESPONSES

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

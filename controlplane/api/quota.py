"""``/v1/quotas``: day/week/month quotas, their use in the open calendar window, and an
operator's reset (``gatewayctl quota show|reset``), same JSON as ``-o json``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from ..policy.common import _NAME_RE
from .auth import require_role
from .deps import Caller, StoreDep
from .errors import ERROR_RESPONSES

__all__ = ["router"]

router = APIRouter(prefix="/v1/quotas", responses=ERROR_RESPONSES, tags=["quotas"])

NameQuery = Annotated[str | None, Query(pattern=_NAME_RE.pattern, max_length=63)]


class QuotaEntry(BaseModel):
    gateway: str
    route: str
    key: str = Field(description="what is counted: consumer:NAME, ip:ADDR, header:VALUE or all")
    consumer: str | None
    unit: str = Field(description="day, week or month")
    used: int = Field(description="admitted requests in the open calendar window")
    limit: int | None = Field(description="from policy; null: the policy no longer has it")
    remaining: int | None
    source: str | None = Field(
        description="where the limit comes from: plan NAME, consumer NAME, route NAME or "
        "gateway NAME (the limits of callers without a plan)"
    )
    time_zone: str = Field(description="the calendar's IANA time zone")
    window_start: str = Field(description="ISO 8601, in time_zone")
    window_end: str = Field(description="ISO 8601, in time_zone: when the count starts again")
    resets_at: int = Field(description="window_end as unix seconds")
    resets_in: str = Field(description="how long until then, e.g. 3d 4h")


class QuotaList(BaseModel):
    items: list[QuotaEntry]


@router.get("", response_model=QuotaList)
def list_quotas(
    principal: Caller,
    store: StoreDep,
    consumer: NameQuery = None,
    gateway: NameQuery = None,
    route: NameQuery = None,
) -> dict[str, Any]:
    """Every day/week/month quota (filtered) with its use in the window open now. A
    gateway-scoped token sees its gateways only; an unknown consumer, gateway or route: 404."""
    from ..quota.counters import QuotaCounters
    from ..quota.report import show

    items = show(
        store,
        QuotaCounters(store._reader),
        consumer=consumer,
        gateway=gateway,
        route=route,
        scope=principal.gateways,
        who=principal.name,
    )
    return {"items": items}


class ResetIn(BaseModel):
    model_config = {"extra": "forbid"}

    consumer: str = Field(pattern=_NAME_RE.pattern, max_length=63)
    gateway: str | None = Field(None, pattern=_NAME_RE.pattern, max_length=63)
    route: str | None = Field(None, pattern=_NAME_RE.pattern, max_length=63)
    unit: str | None = Field(None, description="day, week or month; none: every unit")


class ResetCounter(BaseModel):
    gateway: str
    route: str
    unit: str
    used: int = Field(description="what it had counted before the reset")


class ResetOut(BaseModel):
    consumer: str
    reset: int = Field(description="counters reset (rows of open windows deleted)")
    counters: list[ResetCounter]
    detail: str = Field(description="the line recorded among the events (quota_reset)")


@router.post("/reset", response_model=ResetOut)
def reset_quotas(principal: Caller, store: StoreDep, body: ResetIn) -> dict[str, Any]:
    """Forget what a consumer has used in the open day/week/month windows (filtered):
    its next requests count from 0. Editor or admin; a gateway-scoped token resets on its
    gateways only. Recorded among the events (kind quota_reset) with the caller's name."""
    from ..quota.counters import QuotaCounters
    from ..quota.report import reset

    require_role(principal, "editor", "reset quotas")
    return reset(
        store,
        QuotaCounters(store._writer),
        consumer=body.consumer,
        gateway=body.gateway,
        route=body.route,
        unit=body.unit,
        scope=principal.gateways,
        actor=principal.name,
    )

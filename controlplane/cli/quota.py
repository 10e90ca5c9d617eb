"""``gatewayctl quota show|reset``: day/week/month quotas and what they have counted.

A quota's limit comes from policy (plan, consumer or route limits); its use from the quota
counters of the calendar window open now (controlplane/quota/report.py). Both commands work
on the database (``--db``) or through a controller's admin API (``/v1/quotas``), like every
other command.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from ..errors import PolicyInvalid
from .context import ctx_of
from .output import Format, emit, stderr

__all__ = ["register_quota"]

GatewayOpt = Annotated[str | None, typer.Option("--gateway", help="Only this gateway.")]
RouteOpt = Annotated[str | None, typer.Option("--route", help="Only this route.")]
_UNITS = ("day", "week", "month")


_WORD = {"day": "today", "week": "this week", "month": "this month"}


def _line(e: dict[str, Any]) -> str:
    """``public/users-api consumer:acme: 120 of 1,000 today (2026-12-04 00:00 ..
    2026-12-05 00:00 Europe/Paris, plan pro), resets in 12h 21m``: one line per quota,
    readable at any terminal width (the JSON output has every field)."""
    limit = "no longer limited" if e["limit"] is None else f"{e['limit']:,}"
    start = e["window_start"][:16].replace("T", " ")
    end = e["window_end"][:16].replace("T", " ")
    source = f", {e['source']}" if e["source"] else ""
    return (
        f"{e['gateway']}/{e['route']} {e['key']}: {e['used']:,} of {limit} {_WORD[e['unit']]} "
        f"({start} .. {end} {e['time_zone']}{source}), resets in {e['resets_in']}"
    )


def register_quota(app: typer.Typer) -> None:
    group = typer.Typer(
        help="Day/week/month quotas: use in the current calendar window, operator reset.",
        no_args_is_help=True,
    )
    app.add_typer(group, name="quota")

    @group.command("show")
    def show(
        ctx: typer.Context,
        consumer: Annotated[
            str | None, typer.Option("--consumer", help="Every quota of this consumer.")
        ] = None,
        gateway: GatewayOpt = None,
        route: RouteOpt = None,
    ) -> None:
        """Per route x key x unit: requests used of the limit in the calendar window open
        now, the window in the quota's time zone, and when it resets. Exit 3 for an unknown
        consumer, gateway or route."""
        c = ctx_of(ctx)
        api = c.remote
        if api is not None:
            items = api.get("/v1/quotas", consumer=consumer, gateway=gateway, route=route)["items"]
        else:
            from ..quota.counters import QuotaCounters
            from ..quota.report import show as show_quotas

            store = c.store
            items = show_quotas(
                store, QuotaCounters(store._reader), consumer=consumer, gateway=gateway,
                route=route,
            )  # fmt: skip
        if c.output != Format.table:
            emit(items, c.output)
            return
        if not items:
            stderr.print("no day/week/month quota" + (f" for {consumer}" if consumer else ""))
            return
        for entry in items:
            print(_line(entry))

    @group.command("reset")
    def reset(
        ctx: typer.Context,
        consumer: Annotated[str, typer.Option("--consumer", help="The consumer (required).")],
        gateway: GatewayOpt = None,
        route: RouteOpt = None,
        unit: Annotated[
            str | None, typer.Option("--unit", help="day, week or month (default: all).")
        ] = None,
        yes: Annotated[
            bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")
        ] = False,
    ) -> None:
        """Start a consumer's day/week/month counts again from 0 in the windows open now
        (filtered). Asks first unless --yes; needs the editor role through the admin API;
        recorded among the events (`gatewayctl events`, kind quota_reset) with who did it."""
        if unit is not None and unit not in _UNITS:
            raise PolicyInvalid(f"--unit: {unit!r} is not day, week or month")
        what = " ".join(
            f"{label} {value}"
            for label, value in (("on gateway", gateway), ("route", route), ("unit", unit))
            if value is not None
        )
        question = f"reset the quota counts of consumer {consumer!r}{' ' + what if what else ''}?"
        try:
            confirmed = yes or typer.confirm(question, err=True)
        except typer.Abort:  # no answer (standard input closed)
            confirmed = False
            print(file=sys.stderr)
        if not confirmed:
            stderr.print("nothing reset (--yes resets without asking)")
            raise typer.Exit(1)
        c = ctx_of(ctx)
        api = c.remote
        body = {"consumer": consumer, "gateway": gateway, "route": route, "unit": unit}
        if api is not None:
            out = api.request("POST", "/v1/quotas/reset", body=body).data
        else:
            from ..quota.counters import QuotaCounters
            from ..quota.report import reset as reset_quotas
            from ..store.actor import current_actor

            store = c.store
            out = reset_quotas(
                store, QuotaCounters(store._writer), consumer=consumer, gateway=gateway,
                route=route, unit=unit, actor=current_actor(),
            )  # fmt: skip
        if c.output != Format.table:
            emit(out, c.output)
        stderr.print(out["detail"], markup=False, highlight=False)

"""``gatewayctl ratelimit set|off|inherit|list``: rate limits as a policy of their own.

A rate limit is stored on the route (or, as its routes' default, on the gateway) it applies
to, so it is exported, applied and validated with that object; these commands are the view
of those settings across objects. ``set`` replaces the whole limit of its target; ``off``
exempts a route from its gateway's default; ``inherit`` gives a route its gateway's default
back. Every subcommand works on the database (``--db``) or through a controller's admin API
(GATEWAY_URL or a context).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ..errors import PolicyInvalid
from .context import ctx_of, finish_change, finish_remote
from .output import emit, emit_table
from .resources import TimeZoneOption, WaitOption, _limits, spec_of
from .resources import _limits_text as _limits_of

__all__ = ["register_ratelimit"]

RouteOption = Annotated[str | None, typer.Option("--route", help="The route it applies to.")]
GatewayOption = Annotated[
    str | None, typer.Option("--gateway", help="The gateway whose routes it applies to.")
]


def _target(route: str | None, gateway: str | None) -> tuple[str, str]:
    if (route is None) == (gateway is None):
        raise PolicyInvalid("ratelimit: name exactly one of --route or --gateway")
    return ("route", route) if route is not None else ("gateway", gateway)  # type: ignore[return-value]


def _change(
    ctx: typer.Context, kind: str, name: str, value: Any, what: str, wait: str | None
) -> None:
    c = ctx_of(ctx)

    def patch(spec: dict[str, Any]) -> dict[str, Any]:
        spec = dict(spec)
        if value is None:
            spec.pop("rate_limit", None)
        else:
            spec["rate_limit"] = value
        return spec

    api = c.remote
    if api is not None:
        from .resources import remote_update

        resp = remote_update(api, kind, name, patch, wait)
        changed = bool(resp.get("changes"))
        text = f"rate limit of {kind} {name!r} {what if changed else 'unchanged'}"
        finish_remote(resp, text, wait if changed else None)
        return
    result = c.store.update(kind, name, patch)
    message = (
        f"rate limit of {kind} {name!r} {what}"
        if result.changes
        else (f"rate limit of {kind} {name!r} unchanged")
    )
    finish_change(c, result.revision, message, wait if result.changes else None)


#: the order of units, shortest first (policy.ratelimit.SECONDS, not imported at start-up)
_ORDER = {"second": 1, "minute": 2, "hour": 3, "day": 4, "week": 5, "month": 6}


def _limits_text(policy: dict[str, Any]) -> str:
    """``100/minute (burst 150), 5000/month``; the day/week/month quotas' time zone after
    them when it is not UTC."""
    limits = sorted(policy.get("limits", []), key=lambda x: _ORDER.get(x["per"], 0))
    return _limits_of(limits, policy.get("time_zone")) or "-"


def register_ratelimit(app: typer.Typer) -> None:
    group = typer.Typer(help="Manage rate limits of routes and gateways.", no_args_is_help=True)

    @group.command("set")
    def set_(
        ctx: typer.Context,
        route: RouteOption = None,
        gateway: GatewayOption = None,
        key: Annotated[
            str,
            typer.Option(help="Count per consumer, client_ip, header:NAME or none (whole route)."),
        ] = "consumer",
        limit: Annotated[
            list[str] | None,
            typer.Option(help="e.g. 100/minute or 100/minute:150 (burst); repeatable."),
        ] = None,
        burst: Annotated[int | None, typer.Option(help="Burst of a single limit.")] = None,
        plans: Annotated[
            bool | None,
            typer.Option("--plans/--no-plans", help="Consumers' plans apply (key consumer)."),
        ] = None,
        time_zone: TimeZoneOption = None,
        wait: WaitOption = None,
    ) -> None:
        """Replace the rate limit of a route, or the default of a gateway's routes."""
        kind, name = _target(route, gateway)
        value: dict[str, Any] = {"key": key, "limits": _limits(limit, burst, "--limit")}
        value["use_plans"] = plans if plans is not None else key.strip() == "consumer"
        if time_zone is not None:
            value["time_zone"] = time_zone
        if not value["limits"] and not value["use_plans"]:
            raise PolicyInvalid("ratelimit set: give --limit (or --plans with key consumer)")
        _change(ctx, kind, name, value, "set", wait)

    @group.command("off")
    def off(ctx: typer.Context, route: RouteOption = None, gateway: GatewayOption = None,
            wait: WaitOption = None) -> None:  # fmt: skip
        """No limit: a route is exempt from its gateway's default; a gateway drops its default."""
        kind, name = _target(route, gateway)
        value = {"key": "none", "limits": [], "use_plans": False} if kind == "route" else None
        _change(ctx, kind, name, value, "removed", wait)

    @group.command("inherit")
    def inherit(
        ctx: typer.Context,
        route: Annotated[str, typer.Option("--route", help="The route.")],
        wait: WaitOption = None,
    ) -> None:
        """Give a route its gateway's default rate limit again."""
        _change(ctx, "route", route, None, "reset to the gateway's default", wait)

    @group.command("list")
    def list_(ctx: typer.Context) -> None:
        """Every rate limit: on gateways (defaults of their routes) and on routes."""
        c = ctx_of(ctx)
        api = c.remote
        rows: list[dict[str, Any]] = []
        for kind in ("gateway", "route"):
            if api is not None:  # the same models as locally, from the admin API's specs
                from ..policy import parse_object

                plural = "gateways" if kind == "gateway" else "routes"
                objs = [
                    parse_object(kind, spec_of(item), f"{kind} {item['name']!r}")
                    for item in api.get(f"/v1/{plural}")["items"]
                ]
            else:
                objs = c.store.list_objects(kind)
            for obj in objs:
                spec = obj.spec()
                policy = getattr(obj, "rate_limit", None)
                if policy is None:
                    continue
                rows.append(
                    {
                        "target": f"{kind}/{spec['name']}",
                        "key": policy.key,
                        "limits": _limits_text(policy.model_dump(mode="json")),
                        "plans": policy.use_plans,
                    }
                )
        if c.output.value == "table":
            emit_table(
                ["TARGET", "KEY", "LIMITS", "PLANS"],
                [[r["target"], r["key"], r["limits"], "yes" if r["plans"] else "no"] for r in rows],
            )
        else:
            emit(rows, c.output)

    app.add_typer(group, name="ratelimit")

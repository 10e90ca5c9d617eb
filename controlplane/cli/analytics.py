"""``analytics`` (usage reports from the rollups), ``analytics-sink`` and ``events``.

Reports read the rollups in the database (``--db``), or ask a controller's admin API
(``/v1/analytics/...``, GATEWAY_URL or a context) for the same numbers; the sink is a server
of its own and works on a database only.
"""

import logging
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from ..durations import parse_duration_ms, parse_duration_seconds
from ..errors import GatewayError, PolicyInvalid
from .context import ctx_of
from .output import Format, emit, emit_table, stderr

__all__ = ["parse_time", "register_analytics"]

#: the furthest back a relative time goes (a hundred years): keeps datetime arithmetic in range
_MAX_AGO_MS = 36500 * 86_400_000


def parse_time(value: str, option: str, now: float | None = None) -> float:
    """``1h`` (that long ago), ``now``, ``today`` (UTC midnight) or an ISO 8601 time (UTC
    when no offset is given) -> unix time."""
    now = time.time() if now is None else now
    text = value.strip().lower()
    if text == "now":
        return now
    if text == "today":
        return float(int(now // 86400) * 86400)
    # a bare number is not taken as seconds ago here: 20261203 is an ISO 8601 date
    ago_ms = None if text[-1:].isdigit() else parse_duration_ms(text)
    if ago_ms is not None:
        if ago_ms > _MAX_AGO_MS:
            raise PolicyInvalid(f"{option}: {value!r} is too long ago (at most 36500d)")
        return now - ago_ms / 1000
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise PolicyInvalid(
            f"{option}: {value!r} is not a time (a duration ago such as 1h, 30m, 2d, "
            "or now, today, ISO 8601)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


Since = Annotated[str, typer.Option(help="Start: 1h (ago), today, ISO time.")]
Until = Annotated[str, typer.Option(help="End: now, 10m (ago), ISO time.")]
GatewayOpt = Annotated[str | None, typer.Option("--gateway", help="Only this gateway.")]
RouteOpt = Annotated[str | None, typer.Option("--route", help="Only this route.")]
ConsumerOpt = Annotated[
    str | None, typer.Option("--consumer", help="Only this consumer ('-' for none).")
]
LimitOpt = Annotated[int, typer.Option(help="Rows to show (0: all).")]


def _window(since: str, until: str) -> tuple[float, float]:
    start = parse_time(since, "--since")
    end = parse_time(until, "--until")
    if end <= start:
        raise PolicyInvalid(f"--until: must be after --since ({since})")
    return start, end


def _remote_query(
    start: float, end: float, gateway: str | None, route: str | None, consumer: str | None
) -> dict[str, Any]:
    """The filters for ``/v1/analytics/...``: the window as absolute times, measured here,
    so the controller reports exactly the window the local command would."""
    return {
        "since": datetime.fromtimestamp(start, UTC).isoformat(),
        "until": datetime.fromtimestamp(end, UTC).isoformat(),
        "gateway": gateway,
        "route": route,
        "consumer": consumer,
    }


def _rows(
    ctx: typer.Context,
    since: str,
    until: str,
    gateway: str | None,
    route: str | None,
    consumer: str | None,
) -> tuple[list[Any], float, float]:
    from ..analytics.rollup import Filter, RollupReader

    start, end = _window(since, until)
    c = ctx_of(ctx)
    c.store  # noqa: B018 - opens (and migrates) the database first
    reader = RollupReader.open(c.db)
    who = "" if consumer == "-" else consumer
    rows = list(reader.rows(Filter(start, end, gateway, route, who)))
    return rows, start, end


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def _top_table(entries: list[dict[str, Any]], by: str) -> None:
    """Narrow enough for 80 columns; bytes and 1xx/3xx are in the JSON output."""
    emit_table(
        [by.upper(), "REQUESTS", "2XX", "4XX", "5XX", "ERRORS", "P50 MS", "P95 MS", "P99 MS"],
        [
            [
                e[by],
                f"{e['requests']:,}",
                f"{e['status'].get('2xx', 0):,}",
                f"{e['status'].get('4xx', 0):,}",
                f"{e['status'].get('5xx', 0):,}",
                _pct(e["error_rate"]),
                _ms(e["latency_ms"]["p50"]),
                _ms(e["latency_ms"]["p95"]),
                _ms(e["latency_ms"]["p99"]),
            ]
            for e in entries
        ],
    )


def register_analytics(app: typer.Typer) -> None:
    group = typer.Typer(
        help="Usage analytics from the access-log rollups (gateways with analytics on).",
        no_args_is_help=True,
    )
    app.add_typer(group, name="analytics")

    @group.command("summary")
    def summary(
        ctx: typer.Context,
        since: Since = "1h",
        until: Until = "now",
        gateway: GatewayOpt = None,
        route: RouteOpt = None,
        consumer: ConsumerOpt = None,
    ) -> None:
        """Requests per status class, error rate and latency percentiles."""
        c = ctx_of(ctx)
        api = c.remote
        if api is not None:
            start, end = _window(since, until)
            data = api.get(
                "/v1/analytics/summary", **_remote_query(start, end, gateway, route, consumer)
            )
        else:
            from ..analytics.report import summarise

            rows, start, end = _rows(ctx, since, until, gateway, route, consumer)
            data = summarise(rows)
            data["since"] = datetime.fromtimestamp(start, UTC).isoformat()
            data["until"] = datetime.fromtimestamp(end, UTC).isoformat()
        if c.output != Format.table:
            emit(data, c.output)
            return
        lat = data["latency_ms"]
        stderr.print(f"{data['since']} .. {data['until']}")
        emit_table(
            [
                "REQUESTS",
                *[k.upper() for k in data["status"]],
                "ERRORS",
                "P50 MS",
                "P95 MS",
                "P99 MS",
            ],
            [
                [
                    f"{data['requests']:,}",
                    *[f"{v:,}" for v in data["status"].values()],
                    _pct(data["error_rate"]),
                    _ms(lat["p50"]),
                    _ms(lat["p95"]),
                    _ms(lat["p99"]),
                ]
            ],
        )

    def _top(by: str) -> Any:
        def command(
            ctx: typer.Context,
            since: Since = "1h",
            until: Until = "now",
            gateway: GatewayOpt = None,
            route: RouteOpt = None,
            consumer: ConsumerOpt = None,
            limit: LimitOpt = 10,
        ) -> None:
            c = ctx_of(ctx)
            api = c.remote
            if api is not None:
                start, end = _window(since, until)
                query = _remote_query(start, end, gateway, route, consumer)
                entries = api.get(f"/v1/analytics/top/{by}s", **query, limit=limit)
            else:
                from ..analytics.report import top

                rows, _, _ = _rows(ctx, since, until, gateway, route, consumer)
                entries = top(rows, by, limit)
            if c.output != Format.table:
                emit(entries, c.output)
            else:
                _top_table(entries, by)

        command.__doc__ = f"Top {by}s by requests, with status classes and percentiles."
        return command

    group.command("consumers")(_top("consumer"))
    group.command("routes")(_top("route"))
    group.command("gateways")(_top("gateway"))

    @group.command("usage")
    def usage(
        ctx: typer.Context,
        consumer: Annotated[
            str | None, typer.Argument(help="Consumer (default: every consumer with limits).")
        ] = None,
    ) -> None:
        """Requests of consumers in the current period of each of their limits, against
        them: requests the limits let through (admitted and upstream errors), with the
        throttled ones beside. Warns when a gateway's analytics are off; exit 3 for an
        unknown consumer."""
        c = ctx_of(ctx)
        api = c.remote
        if api is not None:
            out = api.get("/v1/analytics/usage", consumer=consumer)
        else:
            from ..analytics.rollup import RollupReader
            from ..analytics.usage import usage as usage_of

            store = c.store
            out = usage_of(store, RollupReader.open(c.db), consumer)
        for warning in out["warnings"]:
            stderr.print(f"warning: {warning}", markup=False, highlight=False)
        if c.output != Format.table:
            emit(out["items"], c.output)
            return
        if not out["items"]:
            stderr.print(
                "no consumer with limits" if consumer is None else f"{consumer}: no limits"
            )
        for entry in out["items"]:
            print(entry["text"])

    @group.command("export")
    def export(
        ctx: typer.Context,
        since: Annotated[
            str | None, typer.Option(help="Start (required): ISO time, today, 1d (ago).")
        ] = None,
        until: Annotated[
            str | None, typer.Option(help="End (required): ISO time, now, 1h (ago).")
        ] = None,
        fmt: Annotated[str, typer.Option("--format", help="csv or jsonl.")] = "csv",
        gateway: GatewayOpt = None,
        route: RouteOpt = None,
        consumer: ConsumerOpt = None,
        file: Annotated[
            Path | None, typer.Option("--file", help="Write here instead of stdout.")
        ] = None,
    ) -> None:
        """Usage per hour x gateway x route x consumer for billing: requests, admitted,
        throttled, unauthenticated, upstream errors, refused, bytes and latency percentiles
        (columns in README "Usage export")."""
        if fmt not in ("csv", "jsonl"):
            raise PolicyInvalid(f"--format: {fmt!r} is not csv or jsonl")
        for option, value in (("--since", since), ("--until", until)):
            if value is None:
                raise PolicyInvalid(f"{option}: required (an export covers a bounded range)")
        start, end = _window(since or "", until or "")
        c = ctx_of(ctx)
        api = c.remote
        if api is not None:
            items = api.get(
                "/v1/analytics/export", **_remote_query(start, end, gateway, route, consumer)
            )["items"]
        else:
            from ..analytics.export import export_rows

            rows, _, _ = _rows(ctx, since or "", until or "", gateway, route, consumer)
            items = export_rows(rows)
        from ..analytics.export import render

        text = render(items, fmt)
        if file is None:
            sys.stdout.write(text)
        else:
            file.write_text(text, encoding="utf-8", newline="")
            stderr.print(f"wrote {file} ({len(items)} rows)")

    @group.command("chart")
    def chart(
        ctx: typer.Context,
        since: Since = "1h",
        until: Until = "now",
        gateway: GatewayOpt = None,
        route: RouteOpt = None,
        consumer: ConsumerOpt = None,
        step: Annotated[str, typer.Option(help="Time per bar: 1m, 5m, 1h...")] = "1m",
        html: Annotated[
            Path | None, typer.Option("--html", help="Write a self-contained HTML report here.")
        ] = None,
    ) -> None:
        """Requests, errors and p99 latency over time; in the terminal or as an HTML report."""
        from ..analytics.report import html_report, series, summarise, text_chart, top

        try:
            step_s = int(parse_duration_seconds(step, "--step", min_s=60))
        except ValueError as exc:
            raise PolicyInvalid(str(exc)) from None
        c = ctx_of(ctx)
        api = c.remote
        if api is not None:  # the data from the controller; the HTML is written here
            start, end = _window(since, until)
            query = _remote_query(start, end, gateway, route, consumer)
            answer = api.get("/v1/analytics/chart", **query, step=step)
            points = answer["points"]
            parts = (answer["summary"], answer["consumers"], answer["routes"])
        else:
            rows, start, end = _rows(ctx, since, until, gateway, route, consumer)
            points = series(rows, start, end, step_s)
            parts = (summarise(rows), top(rows, "consumer", 20), top(rows, "route", 20))
        if html is not None:
            title = "Gateway analytics " + " ".join(
                f"{k}={v}"
                for k, v in (("gateway", gateway), ("route", route), ("consumer", consumer))
                if v
            )
            report = html_report(title.strip(), points, *parts)
            html.write_text(report, encoding="utf-8")
            stderr.print(f"wrote {html} ({len(points)} points)")
            return
        if c.output != Format.table:
            emit(points, c.output)
            return
        print(text_chart(points))

    @app.command("analytics-sink")
    def analytics_sink(
        ctx: typer.Context,
        address: Annotated[
            str,
            typer.Option(
                envvar="GATEWAY_SINK_ADDRESS",
                help="gRPC access-log listen address; beyond loopback only with mutual TLS "
                "or --insecure.",
            ),
        ] = "127.0.0.1:18002",
        http_address: Annotated[
            str,
            typer.Option(
                envvar="GATEWAY_SINK_HTTP_ADDRESS", help="/metrics and /healthz; empty: none."
            ),
        ] = "127.0.0.1:18003",
        tls_cert: Annotated[
            str | None,
            typer.Option(envvar="GATEWAY_SINK_TLS_CERT", help="Serve over TLS: PEM cert."),
        ] = None,
        tls_key: Annotated[
            str | None, typer.Option(envvar="GATEWAY_SINK_TLS_KEY", help="Its PEM private key.")
        ] = None,
        client_ca: Annotated[
            str | None,
            typer.Option(
                envvar="GATEWAY_SINK_CLIENT_CA",
                help="Require Envoy client certificates signed by this PEM CA.",
            ),
        ] = None,
        insecure: Annotated[
            bool,
            typer.Option(
                envvar="GATEWAY_INSECURE",
                help="Allow plaintext on a non-loopback address (trusts every client).",
            ),
        ] = False,
        retention: Annotated[str, typer.Option(help="Keep rollups this long.")] = "30d",
        log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    ) -> None:
        """Run the access-log sink as its own process (gateways with --analytics-sink). It
        writes the rollups into the database it is given (--db or GATEWAY_DB): a server of
        its own, never run through a controller's admin API (refused while GATEWAY_URL or a
        context is the target)."""
        from ..analytics.sink import serve_sink

        ctx_of(ctx).require_local()

        try:
            retention_s = parse_duration_seconds(retention, "--retention", min_s=1)
        except ValueError as exc:
            raise PolicyInvalid(str(exc)) from None
        files = (tls_cert, tls_key, client_ca)
        if any(files) and not all(files):
            raise PolicyInvalid(
                "--tls-cert, --tls-key and --client-ca go together: the sink serves TLS "
                "only to clients the CA vouches for"
            )
        import asyncio

        logging.basicConfig(
            level=log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        try:
            asyncio.run(
                serve_sink(
                    ctx_of(ctx).db,
                    address,
                    http_address or None,
                    retention_s=retention_s,
                    tls=(tls_cert, tls_key, client_ca) if all(files) else None,  # type: ignore[arg-type]
                    insecure=insecure,
                )
            )
        except OSError as exc:
            raise GatewayError(str(exc)) from None

    @app.command("events")
    def events(
        ctx: typer.Context,
        since: Annotated[str | None, typer.Option(help="Only after: 1h (ago), ISO time.")] = None,
        limit: Annotated[int, typer.Option(help="Newest N events.")] = 50,
    ) -> None:
        """History of policy changes, pushes, ACKs, NACKs and proxy connections."""
        c = ctx_of(ctx)
        start = parse_time(since, "--since") if since else None
        api = c.remote
        if api is not None:
            items = api.get("/v1/events", since=start, limit=limit)["items"]
        else:
            items = c.store.events(start, limit)
        for e in items:
            e["time"] = datetime.fromtimestamp(e["at"], UTC).isoformat(timespec="milliseconds")
        if c.output != Format.table:
            emit(items, c.output)
            return
        emit_table(
            ["TIME (UTC)", "EVENT", "GATEWAY", "NODE", "REV", "DETAIL"],
            [
                [
                    e["time"][:23].replace("T", " "),
                    e["kind"],
                    e["gateway"],
                    e["node"],
                    e["revision"] if e["revision"] is not None else "",
                    " ".join(str(e["detail"]).split())[:120],
                ]
                for e in items
            ],
        )

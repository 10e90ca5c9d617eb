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

__all__ = ["Base", "Change", "ControllerRow", "GatewayBuild", "Meta", "ProxyRow", "Ref", "Resource"]


class Base(DeclarativeBase):
    pass


class Meta(Base):
    """The single row holding the policy revision; bumped by every committed change."""

    __tablename__ = "meta"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    revision: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)


class Resource(Base):
    __tablename__ = "resources"
    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    spec: Mapped[dict] = mapped_column(JSON, nullable=False)
    revision: Mapped[int] = mapped_column(BigInteger, nullable=False)


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

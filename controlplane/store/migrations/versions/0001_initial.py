"""Initial schema: policy resources, references, change log, revision, proxy status.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "meta",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("revision", sa.BigInteger, nullable=False),
    )
    op.execute("INSERT INTO meta (id, revision) VALUES (1, 0)")
    op.create_table(
        "resources",
        sa.Column("kind", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("revision", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "refs",
        sa.Column("kind", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("to_kind", sa.String(32), primary_key=True),
        sa.Column("to_name", sa.String(128), primary_key=True),
    )
    op.create_index("ix_refs_target", "refs", ["to_kind", "to_name"])
    op.create_table(
        "changes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("op", sa.String(8), nullable=False),
    )
    op.create_index("ix_changes_revision", "changes", ["revision"])
    op.create_table(
        "proxies",
        sa.Column("node_id", sa.String(255), primary_key=True),
        sa.Column("gateway", sa.String(128), nullable=False),
        sa.Column("controller", sa.String(255), nullable=False),
        sa.Column("connected", sa.Boolean, nullable=False),
        sa.Column("address", sa.String(255), nullable=False),
        sa.Column("envoy_version", sa.String(64), nullable=False),
        sa.Column("acked_revision", sa.BigInteger, nullable=False),
        sa.Column("nack_revision", sa.BigInteger, nullable=True),
        sa.Column("nack_type", sa.String(64), nullable=True),
        sa.Column("nack_error", sa.Text, nullable=True),
        sa.Column("nack_objects", sa.Text, nullable=True),
        sa.Column("connected_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_index("ix_proxies_gateway", "proxies", ["gateway"])
    op.create_table(
        "gateway_builds",
        sa.Column("gateway", sa.String(128), primary_key=True),
        sa.Column("built_revision", sa.BigInteger, nullable=False),
        sa.Column("changed_revision", sa.BigInteger, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
    )
    op.create_table(
        "controllers",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("xds_address", sa.String(255), nullable=False),
        sa.Column("built_revision", sa.BigInteger, nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("heartbeat_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    for table in ("controllers", "gateway_builds", "proxies", "changes", "refs", "resources"):
        op.drop_table(table)
    op.drop_table("meta")

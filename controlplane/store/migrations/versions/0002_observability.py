"""Observability: access-log rollups, an event history, and times for ACKs and changes.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "analytics_rollups",
        sa.Column("minute", sa.BigInteger, primary_key=True),
        sa.Column("gateway", sa.String(128), primary_key=True),
        sa.Column("route", sa.String(255), primary_key=True),
        sa.Column("consumer", sa.String(255), primary_key=True),
        sa.Column("status_class", sa.String(8), primary_key=True),
        sa.Column("sink", sa.String(255), primary_key=True),
        sa.Column("requests", sa.BigInteger, nullable=False),
        sa.Column("bytes_in", sa.BigInteger, nullable=False),
        sa.Column("bytes_out", sa.BigInteger, nullable=False),
        sa.Column("latency_ms_sum", sa.Float, nullable=False),
        sa.Column("latency_hist", sa.Text, nullable=False),
    )
    op.create_index("ix_analytics_rollups_sink_minute", "analytics_rollups", ["sink", "minute"])
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("gateway", sa.String(128), nullable=False),
        sa.Column("node", sa.String(255), nullable=False),
        sa.Column("revision", sa.BigInteger, nullable=True),
        sa.Column("detail", sa.Text, nullable=False),
    )
    op.create_index("ix_events_at", "events", ["at"])
    with op.batch_alter_table("proxies") as batch:
        batch.add_column(sa.Column("acked_at", sa.Float, nullable=True))
    with op.batch_alter_table("changes") as batch:
        batch.add_column(sa.Column("at", sa.Float, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("changes") as batch:
        batch.drop_column("at")
    with op.batch_alter_table("proxies") as batch:
        batch.drop_column("acked_at")
    op.drop_table("events")
    op.drop_table("analytics_rollups")

"""Quota counters: requests counted per limit window, shared by controllers, kept across
restarts.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "quota_counters",
        sa.Column("gateway", sa.String(128), primary_key=True),
        sa.Column("route", sa.String(255), primary_key=True),
        sa.Column("key", sa.String(512), primary_key=True),
        sa.Column("unit", sa.String(16), primary_key=True),
        sa.Column("window_start", sa.BigInteger, primary_key=True),
        sa.Column("used", sa.BigInteger, nullable=False),
        sa.Column("window_end", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_quota_counters_window_end", "quota_counters", ["window_end"])


def downgrade() -> None:
    op.drop_index("ix_quota_counters_window_end", table_name="quota_counters")
    op.drop_table("quota_counters")

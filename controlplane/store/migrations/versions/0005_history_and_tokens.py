"""History and identities: each change row records who wrote it and the object before and
after; admin API tokens.

Revision ID: 0005
Revises: 0004

Rows written before this migration keep ``recorded`` false: their revisions are listed by
``history`` but cannot be the target of a rollback (their contents were never kept).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("changes") as batch:
        batch.add_column(sa.Column("actor", sa.String(255), nullable=True))
        batch.add_column(sa.Column("before", sa.JSON, nullable=True))
        batch.add_column(sa.Column("after", sa.JSON, nullable=True))
        batch.add_column(
            sa.Column("recorded", sa.Boolean, nullable=False, server_default=sa.false())
        )
    op.create_index("ix_changes_kind_name", "changes", ["kind", "name"])
    op.create_table(
        "api_tokens",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("digest", sa.String(64), nullable=False, unique=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("gateways", sa.JSON, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=True),
        sa.Column("revoked_at", sa.Float, nullable=True),
        sa.Column("last_used_at", sa.Float, nullable=True),
        sa.Column("created_by", sa.String(255), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("api_tokens")
    op.drop_index("ix_changes_kind_name", table_name="changes")
    with op.batch_alter_table("changes") as batch:
        batch.drop_column("recorded")
        batch.drop_column("after")
        batch.drop_column("before")
        batch.drop_column("actor")

"""Database identity: a random id per database, the databases it absorbed by restore, and
why a proxy is held back from a rollback.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("meta") as batch:
        batch.add_column(sa.Column("database_id", sa.String(32), nullable=True))
    # generated here, once: a database created or upgraded gets an id no other one has
    op.execute(
        sa.text("UPDATE meta SET database_id = :id WHERE id = 1").bindparams(
            id=secrets.token_hex(8)
        )
    )
    op.create_table(
        "lineage",
        sa.Column("database_id", sa.String(32), primary_key=True),
        sa.Column("revision", sa.BigInteger, nullable=False),
    )
    with op.batch_alter_table("proxies") as batch:
        batch.add_column(sa.Column("hold", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("proxies") as batch:
        batch.drop_column("hold")
    op.drop_table("lineage")
    with op.batch_alter_table("meta") as batch:
        batch.drop_column("database_id")

"""Secrets at rest: API keys and private keys move from the clear spec to an encrypted column.

Revision ID: 0004
Revises: 0003

Each row of a kind with secret fields gets them removed from ``spec`` and written, AES-GCM
encrypted under the store's newest secret key, to ``secret`` (``secret_key_id`` names the
key). The key ring comes from the store running the migration (``secret_keys`` attribute);
a database without such rows needs no key. On SQLite, ``secure_delete`` zeroes the space
the clear values leave behind, and the store checkpoints the WAL afterwards, so the file no
longer holds them anywhere.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

#: the secret fields as of this migration (frozen here: later models may add others, and
#: a migration must do the same thing whenever it runs)
SECRET_FIELDS = {"api_key": ("key",), "certificate": ("key",)}

resources = sa.table(
    "resources",
    sa.column("kind", sa.String),
    sa.column("name", sa.String),
    sa.column("spec", sa.JSON),
    sa.column("secret", sa.Text),
    sa.column("secret_key_id", sa.String),
)


def upgrade() -> None:
    with op.batch_alter_table("resources") as batch:
        batch.add_column(sa.Column("secret", sa.Text, nullable=True))
        batch.add_column(sa.Column("secret_key_id", sa.String(32), nullable=True))
    bind = op.get_bind()
    rows = bind.execute(
        sa.select(resources.c.kind, resources.c.name, resources.c.spec).where(
            resources.c.kind.in_(list(SECRET_FIELDS))
        )
    ).all()
    if not rows:
        return
    keys = context.config.attributes["secret_keys"]
    if bind.dialect.name == "sqlite":
        bind.exec_driver_sql("PRAGMA secure_delete=ON")
    for kind, name, spec in rows:
        fields = {f: spec[f] for f in SECRET_FIELDS[kind] if f in spec}
        if not fields:
            continue
        sealed = keys.seal(kind, name, fields)
        public = {k: v for k, v in spec.items() if k not in fields}
        bind.execute(
            resources.update()
            .where(resources.c.kind == kind, resources.c.name == name)
            .values(spec=public, secret=sealed.blob, secret_key_id=sealed.key_id)
        )


def downgrade() -> None:
    bind = op.get_bind()
    keys = context.config.attributes["secret_keys"]
    rows = bind.execute(
        sa.select(
            resources.c.kind,
            resources.c.name,
            resources.c.spec,
            resources.c.secret,
            resources.c.secret_key_id,
        ).where(resources.c.secret.is_not(None))
    ).all()
    from controlplane.store.secrets import Sealed

    for kind, name, spec, blob, kid in rows:
        clear = {**spec, **keys.open(kind, name, Sealed(kid, blob))}
        bind.execute(
            resources.update()
            .where(resources.c.kind == kind, resources.c.name == name)
            .values(spec=clear)
        )
    with op.batch_alter_table("resources") as batch:
        batch.drop_column("secret_key_id")
        batch.drop_column("secret")

"""ledger_snapshots.asked_at (the query left) and .point (the snapshot is a check point)

A snapshot's balance was read between asking and answering; a reduction applied within a
second of it, or not final in our records, leaves it undecided (domain/ledger.py), so
whether a snapshot is a check point is recorded when it is decided instead of being read
off its balance and flag. Snapshots stored before keep the old rule (a balance, nothing in
transit) and their answer time as their asking time.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ledger_snapshots") as batch:
        batch.add_column(sa.Column("asked_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("point", sa.Boolean(), nullable=True))
    snapshots = sa.table(
        "ledger_snapshots",
        sa.column("point", sa.Boolean()),
        sa.column("balance", sa.BigInteger()),
        sa.column("in_transit", sa.Boolean()),
    )
    op.execute(
        snapshots.update()
        .where(snapshots.c.balance.is_not(None), snapshots.c.in_transit.is_(False))
        .values(point=True)
    )


def downgrade() -> None:
    with op.batch_alter_table("ledger_snapshots") as batch:
        batch.drop_column("point")
        batch.drop_column("asked_at")

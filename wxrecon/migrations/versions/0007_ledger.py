"""ledger_snapshots and ledger_discrepancies: the ledger reconciliation (README, "Ledgers")

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "ledger_snapshots",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("mchid", sa.String(32), nullable=False),
        sa.Column("ledger_hash", sa.String(64), nullable=False),
        sa.Column("ledger_sealed", sa.String(256), nullable=False),
        sa.Column("balance", sa.BigInteger(), nullable=True),
        sa.Column("in_transit", sa.Boolean(), nullable=True),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("taken_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ledger_snapshots"),
    )
    op.create_index(
        "ix_ledger_snapshots_mchid_ledger_hash_taken_at",
        "ledger_snapshots",
        ["mchid", "ledger_hash", "taken_at"],
    )
    op.create_table(
        "ledger_discrepancies",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("mchid", sa.String(32), nullable=False),
        sa.Column("ledger_hash", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(24), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("observed", sa.BigInteger(), nullable=False),
        sa.Column("explained", sa.BigInteger(), nullable=False),
        sa.Column("start_snapshot_id", sa.BigInteger(), nullable=False),
        sa.Column("end_snapshot_id", sa.BigInteger(), nullable=False),
        sa.Column("window_start", TIME, nullable=False),
        sa.Column("window_end", TIME, nullable=False),
        sa.Column("order_ids", sa.JSON(), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ledger_discrepancies"),
        sa.UniqueConstraint("end_snapshot_id", name="uq_ledger_discrepancies_end_snapshot_id"),
    )
    op.create_index(
        "ix_ledger_discrepancies_mchid_ledger_hash_created_at",
        "ledger_discrepancies",
        ["mchid", "ledger_hash", "created_at"],
    )


def downgrade() -> None:
    op.drop_table("ledger_discrepancies")
    op.drop_table("ledger_snapshots")

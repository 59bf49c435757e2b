"""caller on both order tables: the merchant profile an order is signed by (default: default)

Revision ID: 0009
Revises: 0006
Create Date: 2026-12-02 12:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

TABLES = ("special_reductions", "compensation_bills")


def upgrade() -> None:
    for table in TABLES:
        # Existing orders were all signed by the single identity: the profile "default".
        op.add_column(
            table,
            sa.Column("caller", sa.String(32), nullable=False, server_default="default"),
        )


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("caller")

"""compensation_bills.receiver_detail: who a bill pays (receiver type, transaction id and type)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-09 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("compensation_bills", sa.Column("receiver_detail", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("compensation_bills") as batch:
        batch.drop_column("receiver_detail")

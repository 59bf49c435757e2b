"""special_reductions.refusal: a refused POST awaits a signed query before REJECTED

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 05:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("special_reductions", sa.Column("refusal", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("special_reductions") as batch:
        batch.drop_column("refusal")

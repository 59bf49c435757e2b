"""special_reductions.bal_account_no sealed at rest; bal_account_hash for look-ups

The column is widened to hold a sealed value (``v1:<key id>:<base64>``, at most 244
characters) and ``bal_account_hash`` (HMAC-SHA256 of the plaintext under
WXRECON_LOOKUP_KEY, hex) is added, indexed. The migration itself seals nothing: it needs no
keys, so ``wxrecon db upgrade`` stays a pure schema step. Rows written before it keep their
plaintext with ``bal_account_hash`` NULL (the marker of an unsealed row) until
``wxrecon db seal`` seals them in committed batches (resumable); workers refuse to start
while any is left (store/sealing.py, ``ready``).

Revision ID: 0011
Revises: 0006
Create Date: 2026-12-02 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("special_reductions") as batch:
        batch.alter_column(
            "bal_account_no",
            existing_type=sa.String(length=128),
            type_=sa.String(length=256),
            existing_nullable=False,
        )
        batch.add_column(sa.Column("bal_account_hash", sa.String(length=64), nullable=True))
    op.create_index(
        "ix_special_reductions_bal_account_hash", "special_reductions", ["bal_account_hash"]
    )


def downgrade() -> None:
    # Sealed values do not fit the old column: open them first (not provided; restore a
    # backup taken before the upgrade instead).
    op.drop_index("ix_special_reductions_bal_account_hash", table_name="special_reductions")
    with op.batch_alter_table("special_reductions") as batch:
        batch.drop_column("bal_account_hash")

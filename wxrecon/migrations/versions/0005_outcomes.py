"""outcomes: the transactional outbox of outcome events, and its read contract view

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-09 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIME = sa.DateTime(timezone=True)

# The pull contract, version 1: these columns keep their names and meaning (README,
# "Outcome delivery"); a change is a new view, wxrecon_outcomes_v2.
VIEW_V1 = """
CREATE VIEW wxrecon_outcomes_v1 AS
SELECT id AS seq, event_id, type, kind, order_id, order_no, state, occurred_at, payload,
       delivery, delivered_at
FROM outcomes
"""


def upgrade() -> None:
    op.create_table(
        "outcomes",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(length=96), nullable=False),
        sa.Column("type", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("order_id", sa.BigInteger(), nullable=True),
        sa.Column("order_key", sa.String(length=128), nullable=False),
        sa.Column("order_no", sa.String(length=64), nullable=True),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("occurred_at", TIME, nullable=False),
        sa.Column("delivery", sa.String(length=12), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", TIME, nullable=False),
        sa.Column("claim_token", sa.String(length=64), nullable=True),
        sa.Column("last_error", sa.String(length=256), nullable=True),
        sa.Column("task_sent_at", TIME, nullable=True),
        sa.Column("webhook_sent_at", TIME, nullable=True),
        sa.Column("delivered_at", TIME, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outcomes")),
        sa.UniqueConstraint("event_id", name=op.f("uq_outcomes_event_id")),
    )
    with op.batch_alter_table("outcomes") as batch:
        batch.create_index("ix_outcomes_order_key_id", ["order_key", "id"])
        batch.create_index(
            "ix_outcomes_pending",
            ["next_attempt_at"],
            postgresql_where=sa.text("delivery = 'pending'"),
            sqlite_where=sa.text("delivery = 'pending'"),
        )
        batch.create_index("ix_outcomes_occurred_at", ["occurred_at"])
        batch.create_index(
            "ix_outcomes_undelivered",
            ["delivery", "occurred_at"],
            postgresql_where=sa.text("delivery <> 'delivered'"),
            sqlite_where=sa.text("delivery <> 'delivered'"),
        )
    op.execute(VIEW_V1)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS wxrecon_outcomes_v1")
    op.drop_table("outcomes")

"""initial schema

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-25 01:16:46.928802
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "compensation_bills",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("out_bill_no", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("provider_state", sa.String(length=32), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=True),
        sa.Column("bill_id", sa.String(length=64), nullable=True),
        sa.Column("sp_mchid", sa.String(length=32), nullable=True),
        sa.Column("sponsor_mchid", sa.String(length=32), nullable=True),
        sa.Column("transfer_remark", sa.String(length=512), nullable=True),
        sa.Column("accept_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("success_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("close_reason", sa.String(length=64), nullable=True),
        sa.Column("close_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_poll_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claim_token", sa.String(length=64), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_request_id", sa.String(length=128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer(), server_default="1", nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_compensation_bills")),
        sa.UniqueConstraint("out_bill_no", name=op.f("uq_compensation_bills_out_bill_no")),
    )
    with op.batch_alter_table("compensation_bills", schema=None) as batch_op:
        batch_op.create_index(
            "ix_compensation_bills_due",
            ["next_poll_at"],
            unique=False,
            postgresql_where=sa.text(
                "state IN ('ACCEPTED', 'CANCELING', 'TRACKING', 'WAIT_USER_CONFIRM')"
            ),
            sqlite_where=sa.text(
                "state IN ('ACCEPTED', 'CANCELING', 'TRACKING', 'WAIT_USER_CONFIRM')"
            ),
        )
        batch_op.create_index("ix_compensation_bills_state", ["state"], unique=False)

    op.create_table(
        "events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("order_id", sa.BigInteger(), nullable=False),
        sa.Column("from_state", sa.String(length=20), nullable=True),
        sa.Column("to_state", sa.String(length=20), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index("ix_events_kind_order_id", ["kind", "order_id"], unique=False)

    op.create_table(
        "special_reductions",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("mchid", sa.String(length=32), nullable=False),
        sa.Column("bal_account_no", sa.String(length=128), nullable=False),
        sa.Column("out_request_no", sa.String(length=32), nullable=False),
        sa.Column("reduction_type", sa.String(length=32), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(length=512), nullable=True),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("provider_state", sa.String(length=32), nullable=True),
        sa.Column("fail_reason", sa.String(length=64), nullable=True),
        sa.Column("quota_change_no", sa.String(length=64), nullable=True),
        sa.Column("success_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("fail_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_submit_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_poll_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claim_token", sa.String(length=64), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_request_id", sa.String(length=128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer(), server_default="1", nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_special_reductions")),
        sa.UniqueConstraint(
            "mchid", "out_request_no", name=op.f("uq_special_reductions_mchid_out_request_no")
        ),
    )
    with op.batch_alter_table("special_reductions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_special_reductions_due",
            ["next_poll_at"],
            unique=False,
            postgresql_where=sa.text("state IN ('PROCESSING', 'RECEIVED', 'SUBMITTED')"),
            sqlite_where=sa.text("state IN ('PROCESSING', 'RECEIVED', 'SUBMITTED')"),
        )
        batch_op.create_index("ix_special_reductions_state", ["state"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("special_reductions", schema=None) as batch_op:
        batch_op.drop_index("ix_special_reductions_state")
        batch_op.drop_index(
            "ix_special_reductions_due",
            postgresql_where=sa.text("state IN ('PROCESSING', 'RECEIVED', 'SUBMITTED')"),
            sqlite_where=sa.text("state IN ('PROCESSING', 'RECEIVED', 'SUBMITTED')"),
        )

    op.drop_table("special_reductions")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_kind_order_id")

    op.drop_table("events")
    with op.batch_alter_table("compensation_bills", schema=None) as batch_op:
        batch_op.drop_index("ix_compensation_bills_state")
        batch_op.drop_index(
            "ix_compensation_bills_due",
            postgresql_where=sa.text(
                "state IN ('ACCEPTED', 'CANCELING', 'TRACKING', 'WAIT_USER_CONFIRM')"
            ),
            sqlite_where=sa.text(
                "state IN ('ACCEPTED', 'CANCELING', 'TRACKING', 'WAIT_USER_CONFIRM')"
            ),
        )

    op.drop_table("compensation_bills")

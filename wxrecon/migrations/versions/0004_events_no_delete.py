"""events refuse DELETE (and, on PostgreSQL, TRUNCATE) as they refuse UPDATE

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 06:30:00
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

MESSAGE = "events are append-only"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # The function of 0002 raises whatever fired it.
        op.execute(
            "CREATE TRIGGER events_no_delete BEFORE DELETE ON events "
            "FOR EACH ROW EXECUTE FUNCTION wxrecon_events_append_only()"
        )
        op.execute(
            "CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events "
            "FOR EACH STATEMENT EXECUTE FUNCTION wxrecon_events_append_only()"
        )
    else:
        op.execute(
            "CREATE TRIGGER events_no_delete BEFORE DELETE ON events "
            f"BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS events_no_truncate ON events")
        op.execute("DROP TRIGGER IF EXISTS events_no_delete ON events")
    else:
        op.execute("DROP TRIGGER IF EXISTS events_no_delete")

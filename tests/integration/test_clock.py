"""Time comes from the database: a worker whose own clock is wrong neither takes over a live
lease nor re-enters early (issue: a worker 300 s fast took over a live lease)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from tests.integration.test_reconcile import make_request
from wxrecon.domain.kinds import REDUCTION
from wxrecon.engine.intake import intake_reduction
from wxrecon.engine.sweep import claim_due
from wxrecon.store import db as dbmod
from wxrecon.store.db import Database

pytestmark = pytest.mark.postgres


class _Fast(datetime):
    """This host's clock, 300 s ahead of everyone else's."""

    @classmethod
    def now(cls, tz: Any = None) -> Any:
        return datetime.now(tz) + timedelta(seconds=300)


def _server_now(db: Database) -> datetime:
    with db.connect() as conn:
        value: datetime = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
    return value.astimezone(UTC)


def test_the_database_clock_corrects_a_fast_host(
    pg_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dbmod, "datetime", _Fast)
    assert abs((pg_db.now() - _server_now(pg_db)).total_seconds()) < 5
    assert (_Fast.now(UTC) - pg_db.now()).total_seconds() > 290  # the host is still wrong


def test_a_fast_worker_does_not_take_over_a_live_lease(
    pg_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pg_db.transaction() as session:
        order = intake_reduction(session, make_request("CLK1"), lease=120)
    # Its intake lease was set by the database's clock: due 120 s from now, not before.
    with pg_db.connect() as conn:
        due = conn.execute(
            text("SELECT claimed_until FROM special_reductions WHERE id = :i"),
            {"i": order.order_id},
        ).scalar_one()
    assert 110 < (due - _server_now(pg_db)).total_seconds() <= 120
    fast = Database(pg_db.url)
    monkeypatch.setattr(dbmod, "datetime", _Fast)
    try:
        assert claim_due(fast, REDUCTION, limit=10, lease=60) == []  # 300 s fast: still live
    finally:
        fast.dispose()


def test_sqlite_uses_this_hosts_clock(sqlite_url: str) -> None:
    db = Database(sqlite_url)
    try:
        assert abs((db.now() - datetime.now(UTC)).total_seconds()) < 5
    finally:
        db.dispose()

"""The batched compare-and-set of one commit on PostgreSQL (``store.unit.commit`` →
``store.sql.cas_many``): each write wins or loses exactly as its one-row statement would,
an event and an outcome row exist only for a write that won, and nothing is truncated."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError

from tests.fixtures_db import FakeClock
from tests.integration.test_chunks import intake_all, snapshot
from wxrecon.domain.decisions import Action, Write
from wxrecon.domain.kinds import REDUCTION
from wxrecon.domain.states import RState
from wxrecon.engine.steps import load_rows, prepare
from wxrecon.store import sql, unit
from wxrecon.store.db import Database
from wxrecon.store.models import Event, Outcome, SpecialReduction

pytestmark = pytest.mark.postgres


def count(db: Database, model: Any, **where: Any) -> int:
    with db.read() as session:
        stmt = select(func.count()).select_from(model)
        for k, v in where.items():
            stmt = stmt.where(getattr(model, k) == v)
        return int(session.execute(stmt).scalar_one())


def test_each_write_of_a_batch_wins_or_loses_on_its_own_version(
    pg_db: Database, clock: FakeClock
) -> None:
    ids, _ = intake_all(pg_db, clock, ["M1", "M2", "M3"])
    rows = load_rows(pg_db, REDUCTION, ids)
    now = clock()
    # M2 moves on behind the batch's back: its prepared write now holds a stale version.
    stale = rows[ids[1]]
    other = load_rows(pg_db, REDUCTION, [ids[1]])[ids[1]]  # another worker's copy
    unit.commit(
        pg_db, [prepare(pg_db, other, Write(Action.RECORD, None, {"attempts": 5}, "x"), now, "t")]
    )
    events_before = count(pg_db, Event)
    writes = [
        prepare(pg_db, r, Write(Action.RECORD, RState.SUBMITTED, {}, "sent"), now, "t")
        for r in (rows[ids[0]], stale, rows[ids[2]])
    ]
    assert unit.commit(pg_db, writes) == [True, False, True]
    assert [snapshot(pg_db, SpecialReduction, i)["state"] for i in ids] == [
        RState.SUBMITTED,
        RState.RECEIVED,
        RState.SUBMITTED,
    ]
    assert count(pg_db, Event) == events_before + 2
    assert count(pg_db, Event, order_id=ids[1], to_state=RState.SUBMITTED) == 0
    # The won writes updated their rows in memory; the lost one was left as it was.
    assert writes[0].row.state == RState.SUBMITTED and stale.state == RState.RECEIVED


def test_outcome_rows_only_for_won_final_writes(pg_db: Database, clock: FakeClock) -> None:
    ids, _ = intake_all(pg_db, clock, ["N1", "N2"])
    rows = load_rows(pg_db, REDUCTION, ids)
    now = clock()
    rejected = [
        prepare(pg_db, rows[i], Write(Action.REJECT, RState.REJECTED, {}, "bad"), now, "t")
        for i in ids
    ]
    assert all(w.outcome is not None for w in rejected)
    # The second write's row is stale (its version moved): it loses, and no outcome is written.
    stale_version = rejected[1].params["cas_version"]
    rejected[1].params["cas_version"] = stale_version + 7
    assert unit.commit(pg_db, rejected) == [True, False]
    assert count(pg_db, Outcome) == 1
    assert count(pg_db, Outcome, order_id=ids[0]) == 1


def test_a_value_too_long_is_refused_not_truncated(pg_db: Database, clock: FakeClock) -> None:
    ids, _ = intake_all(pg_db, clock, ["P1", "P2"])
    rows = load_rows(pg_db, REDUCTION, ids)
    now = clock()
    values = {"last_request_id": "R" * 300}  # the column is String(128)
    writes = [
        prepare(pg_db, rows[i], Write(Action.RECORD, None, values, "x"), now, "t") for i in ids
    ]
    with pytest.raises(DBAPIError):
        unit.commit(pg_db, writes)
    assert all(snapshot(pg_db, SpecialReduction, i)["last_request_id"] is None for i in ids)


def test_bulk_insert_refuses_a_value_too_long_too(pg_db: Database) -> None:
    with pytest.raises(DBAPIError), pg_db.begin() as conn:
        sql.insert_new(
            conn,
            SpecialReduction,
            ("mchid", "out_request_no"),
            [
                {
                    "mchid": "1900000109",
                    "out_request_no": "X" * 40,  # String(32)
                    "bal_account_no": "v1:k:x",
                    "reduction_type": "FINANCIAL_PENALTY",
                    "amount": 1,
                    "state": "RECEIVED",
                }
            ],
        )
    assert count(pg_db, SpecialReduction) == 0

"""History stays true: events refuse DELETE as they refuse UPDATE, on both databases, and
``wxrecon db verify`` reads every order's event chain against its row."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from tests.fixtures_cli import Cli
from tests.fixtures_db import FakeProvider, reduction
from wxrecon import tasks
from wxrecon.domain.chains import chain_problem
from wxrecon.engine.intake import intake_bill, intake_reduction
from wxrecon.store.db import Database
from wxrecon.store.verify import verify
from wxrecon.wechatpay.resources import SpecialReductionRequest

GOOD = {
    "mchid": "1900000109",
    "bal_account_no": "6222000011112222",
    "out_request_no": "H1",
    "reduction_type": "FINANCIAL_PENALTY",
    "amount": 700,
}


def _request(no: str) -> SpecialReductionRequest:
    return SpecialReductionRequest.create(**{**GOOD, "out_request_no": no})


@pytest.mark.parametrize(
    ("steps", "state", "problem"),
    [
        ([(None, "RECEIVED")], "RECEIVED", None),
        (
            [(None, "RECEIVED"), ("RECEIVED", "SUBMITTED"), ("SUBMITTED", "SUCCESS")],
            "SUCCESS",
            None,
        ),
        ([(None, "RECEIVED")], "SUCCESS", "changed outside the engine"),
        ([], "RECEIVED", "has no events"),
        ([(None, "RECEIVED")], None, "row is missing"),
        ([("RECEIVED", "SUBMITTED")], "SUBMITTED", "first event"),
        ([(None, "SUBMITTED")], "SUBMITTED", "first event"),
        ([(None, "RECEIVED"), ("SUBMITTED", "SUCCESS")], "SUCCESS", "event 2"),
    ],
)
def test_chain_rules(steps: list, state: str | None, problem: str | None) -> None:
    found = chain_problem("RECEIVED", steps, state)
    assert (found is None) if problem is None else (problem in str(found))


def test_events_refuse_delete(db: Database) -> None:
    with db.transaction() as session:
        intake_reduction(session, _request("D1"))
    for statement in ("DELETE FROM events", "UPDATE events SET reason = 'x'"):
        with pytest.raises(Exception, match="append-only"), db.transaction() as session:
            session.execute(text(statement))
    if db.is_postgresql:
        with pytest.raises(Exception, match="append-only"), db.transaction() as session:
            session.execute(text("TRUNCATE events"))
    with db.read() as session:
        assert session.execute(text("SELECT count(*) FROM events")).scalar_one() == 1


def test_verify_passes_on_the_engine_s_own_history(
    installed: tuple[Database, FakeProvider],
) -> None:
    db, provider = installed
    provider.submit_answers.append(reduction("H1", "SUCCESS"))
    assert tasks.submit_special_reduction.apply(kwargs=GOOD).get()["state"] == "SUCCESS"
    with db.transaction() as session:
        intake_bill(session, "BILL1")
    checked, broken = verify(db)
    assert checked == {"reduction": 1, "bill": 1} and broken == []


def _set_state(conn: object, no: str, state: str) -> None:
    conn.execute(  # type: ignore[attr-defined]
        text("UPDATE special_reductions SET state = :s WHERE out_request_no = :no"),
        {"s": state, "no": no},
    )


def test_verify_names_rows_changed_outside_the_engine(db: Database) -> None:
    with db.transaction() as session:
        for no in ("V1", "V2", "V3", "V4"):
            intake_reduction(session, _request(no))
    with db.begin() as conn:
        conn.execute(
            text("UPDATE special_reductions SET state = 'SUCCESS' WHERE out_request_no = 'V2'")
        )
        conn.execute(text("DELETE FROM special_reductions WHERE out_request_no = 'V3'"))
        v4 = conn.execute(text("SELECT id FROM special_reductions WHERE out_request_no = 'V4'"))
        conn.execute(
            text(
                "INSERT INTO events (kind, order_id, from_state, to_state, reason, actor, at) "
                "VALUES ('reduction', :id, 'SUBMITTED', 'RECEIVED', 'forged', 'x', :at)"
            ),
            {"id": v4.scalar_one(), "at": datetime(2026, 1, 1, tzinfo=UTC).replace(tzinfo=None)},
        )
    checked, broken = verify(db)
    assert checked["reduction"] == 3
    problems = {b.number or f"#{b.order_id}": b.problem for b in broken}
    assert len(broken) == 3, problems
    assert "outside the engine" in problems["1900000109/V2"]
    assert any("row is missing" in p for p in problems.values())
    assert "event 2" in problems["1900000109/V4"]


def test_db_verify_command(cli: Cli) -> None:
    with cli.db.transaction() as session:
        intake_reduction(session, _request("C1"))
        intake_reduction(session, _request("C2"))
    assert "2 orders" in cli.ok("db", "verify").output
    assert json.loads(cli.ok("db", "verify", "--json").output)["ok"] is True
    with cli.db.begin() as conn:
        conn.execute(
            text("UPDATE special_reductions SET state = 'FAILED' WHERE out_request_no = 'C2'")
        )
    line = cli.fails("db", "verify", code=1)
    assert "1 order(s) fail" in line and "reduction #2" in line
    result = cli.run("db", "verify", "--json")
    assert result.exit_code == 1
    document = json.loads(result.stdout)
    assert document["ok"] is False and document["broken"][0]["number"] == "1900000109/C2"

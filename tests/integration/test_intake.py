"""The Python intake helper: the row is written in the caller's transaction and its task is
enqueued only after that transaction commits; bad input writes and enqueues nothing."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tests.fixtures_db import EngineSettings, FakeProvider, reduction
from wxrecon import intake
from wxrecon.domain.errors import Conflict
from wxrecon.domain.kinds import REDUCTION
from wxrecon.domain.states import RState
from wxrecon.engine.intake import intake_bill
from wxrecon.engine.steps import Reconciler
from wxrecon.store.db import Database, on_commit
from wxrecon.store.models import CompensationBill, Event, SpecialReduction
from wxrecon.wechatpay.errors import InvalidRequest

PARAMS: dict[str, Any] = {
    "mchid": "1900000109",
    "bal_account_no": "6222000011112222",
    "out_request_no": "APP1",
    "reduction_type": "JUDICIAL_DEDUCTION",
    "amount": 500,
    "reason": "court order 9",
}


class Sent(list[tuple[str, dict[str, Any]]]):
    def __call__(self, name: str, kwargs: dict[str, Any]) -> None:
        self.append((name, kwargs))


def rows(db: Database, model: Any = SpecialReduction) -> int:
    with db.read() as session:
        return int(session.execute(select(func.count()).select_from(model)).scalar_one())


def test_enqueued_only_after_commit(db: Database) -> None:
    sent = Sent()
    with db.transaction() as session:
        result = intake.submit_reduction(session, **PARAMS, enqueue=sent)
        assert sent == []  # not before the commit
    assert sent == [("wxrecon.poll_reduction", {"id": result.order_id, "token": result.token})]
    assert rows(db) == 1


def test_rolled_back_transaction_enqueues_nothing(db: Database) -> None:
    sent = Sent()
    with pytest.raises(RuntimeError), db.transaction() as session:
        intake.submit_reduction(session, **PARAMS, enqueue=sent)
        raise RuntimeError("the app's own work failed")
    assert sent == [] and rows(db) == 0


def test_a_later_commit_does_not_send_what_was_rolled_back(db: Database) -> None:
    sent = Sent()
    session = Session(db.engine)  # an app's own session, not one of ours
    with session.begin():
        pass
    session.begin()
    intake.submit_reduction(session, **PARAMS, enqueue=sent)
    session.rollback()
    with session.begin():
        pass
    session.close()
    assert sent == [] and rows(db) == 0


def test_an_apps_own_session_works(db: Database) -> None:
    sent = Sent()
    with Session(db.engine) as session, session.begin():
        intake.submit_reduction(session, **PARAMS, enqueue=sent)
    assert len(sent) == 1 and rows(db) == 1


def test_enqueued_task_can_process_the_order(
    db: Database, provider: FakeProvider, engine_settings: EngineSettings
) -> None:
    sent = Sent()
    with db.transaction() as session:
        intake.submit_reduction(session, **PARAMS, enqueue=sent)
    [(_, kwargs)] = sent
    provider.submit_answers.append(reduction("APP1", "PROCESSING"))
    rec = Reconciler(db, provider, engine_settings)
    assert rec.process(REDUCTION, kwargs["id"], kwargs["token"]) == RState.PROCESSING


def test_same_order_again_enqueues_nothing_new(db: Database) -> None:
    sent = Sent()
    for _ in range(2):
        with db.transaction() as session:
            intake.submit_reduction(session, **PARAMS, enqueue=sent)
    assert len(sent) == 1 and rows(db) == 1


def test_conflict_writes_and_enqueues_nothing(db: Database) -> None:
    sent = Sent()
    with db.transaction() as session:
        intake.submit_reduction(session, **PARAMS, enqueue=sent)
    with pytest.raises(Conflict, match="amount"), db.transaction() as session:
        intake.submit_reduction(session, **{**PARAMS, "amount": 501}, enqueue=sent)
    assert len(sent) == 1 and rows(db) == 1 and rows(db, Event) == 1


def test_track_bill_enqueues_after_commit(db: Database) -> None:
    sent = Sent()
    with db.transaction() as session:
        result = intake.track_bill(session, "BILL77", enqueue=sent)
        assert sent == []
    assert sent == [("wxrecon.poll_bill", {"id": result.order_id, "token": result.token})]
    with pytest.raises(InvalidRequest), db.transaction() as session:
        intake.track_bill(session, "bad bill no!", enqueue=sent)
    assert rows(db, CompensationBill) == 1


def test_a_bill_tracked_again_is_found_by_its_number(db: Database) -> None:
    """The look-up of stored orders for a one-column key (a bill's number): found, not
    written or enqueued again; with another caller, a Conflict."""
    sent = Sent()
    with db.transaction() as session:
        first = intake.track_bill(session, "BILL78", enqueue=sent)
    with db.transaction() as session:
        again = intake.track_bill(session, "BILL78", enqueue=sent)
    assert (again.order_id, again.created, again.token) == (first.order_id, False, None)
    assert len(sent) == 1 and rows(db, CompensationBill) == 1
    with pytest.raises(Conflict, match="caller"), db.transaction() as session:
        intake_bill(session, "BILL78", caller="other", lease=60)
    assert rows(db, CompensationBill) == 1


def test_failing_callback_does_not_stop_the_others(db: Database) -> None:
    ran: list[str] = []

    def boom() -> None:
        raise RuntimeError("broker down")

    with db.transaction() as session:
        on_commit(session, boom)
        on_commit(session, lambda: ran.append("second"))
    assert ran == ["second"]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("amount", "500", "integer"),
        ("amount", 0, "positive"),
        ("amount", -1, "positive"),
        ("amount", 1.5, "integer"),
        ("amount", True, "integer"),
        ("mchid", "19abc", "digits"),
        ("out_request_no", "has space", "out_request_no"),
        ("out_request_no", "x" * 33, "out_request_no"),
        ("reduction_type", "REFUND", "reduction_type"),
        ("bal_account_no", "", "bal_account_no"),
        ("reason", "a\nb", "control"),
    ],
)
def test_invalid_input_one_line_nothing_written(
    db: Database, field: str, value: Any, message: str
) -> None:
    sent = Sent()
    with pytest.raises(InvalidRequest, match=message) as info, db.transaction() as session:
        intake.submit_reduction(session, **{**PARAMS, field: value}, enqueue=sent)
    assert "\n" not in str(info.value)
    assert sent == [] and rows(db) == 0 and rows(db, Event) == 0


junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=40),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(field=st.sampled_from(sorted(PARAMS)), value=junk)
def test_any_input_is_either_accepted_or_refused_cleanly(
    db: Database, field: str, value: Any
) -> None:
    sent = Sent()
    params = {
        **PARAMS,
        field: value,
        "out_request_no": f"H{abs(hash((field, repr(value)))) % 10**9}",
    }
    if field == "out_request_no":
        params["out_request_no"] = value
    before = rows(db)
    try:
        with db.transaction() as session:
            intake.submit_reduction(session, **params, enqueue=sent)
    except InvalidRequest as exc:
        assert "\n" not in str(exc) and "6222000011112222" not in str(exc)
        assert sent == [] and rows(db) == before
    except Conflict:
        assert sent == [] and rows(db) == before
    else:
        assert rows(db) in (before, before + 1)

"""The engine's decisions as a table: (what was asked, what came back) -> what happens next.

Pure: no database, no provider; each case builds a row, an outcome and a time.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.fixtures_db import EngineSettings, bill, reduction
from wxrecon.domain import decisions
from wxrecon.domain.decisions import Action, Call, Endpoint, Policy, Write
from wxrecon.domain.kinds import BILL, REDUCTION
from wxrecon.store.rows import BillRow, ReductionRow, field_names
from wxrecon.wechatpay import errors

T0 = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
POLICY = Policy.of(EngineSettings(), random.Random(1))


def row(state: str = "SUBMITTED", *, sent: datetime | None = T0, **kw: Any) -> ReductionRow:
    values: dict[str, Any] = {
        "id": 1,
        "state": state,
        "version": 3,
        "attempts": 0,
        "next_poll_at": None,
        "claimed_until": None,
        "claim_token": "t",
        "last_error": None,
        "last_request_id": None,
        "created_at": T0,
        "updated_at": T0,
        "mchid": "1900000109",
        "bal_account_no": "6222000011112222",
        "out_request_no": "R1",
        "reduction_type": "FINANCIAL_PENALTY",
        "amount": 100,
        "reason": None,
        "provider_state": None,
        "fail_reason": None,
        "quota_change_no": None,
        "success_time": None,
        "fail_time": None,
        "submitted_at": sent,
        "last_submit_at": sent,
        "refusal": None,
    }
    values.update(kw)
    return ReductionRow(**values)


def bill_row(state: str = "TRACKING") -> BillRow:
    return BillRow(
        id=2,
        state=state,
        version=1,
        attempts=0,
        next_poll_at=None,
        claimed_until=None,
        claim_token="t",
        last_error=None,
        last_request_id=None,
        created_at=T0,
        updated_at=T0,
        out_bill_no="B1",
        provider_state=None,
        amount=None,
        bill_id=None,
        sp_mchid=None,
        sponsor_mchid=None,
        transfer_remark=None,
        accept_time=None,
        success_time=None,
        close_reason=None,
        close_time=None,
    )


POST = Call(Endpoint.SUBMIT, "POST", first=True)
QUERY = Call(Endpoint.QUERY, "query")
REFUSED = errors.Rejected("bad", status=400, code="PARAM_ERROR", request_id="rid-r")
NOT_FOUND = errors.NotFound("none", status=404, code="NOT_FOUND")
GRACE = timedelta(seconds=POLICY.grace)


def ok(no: str = "R1", state: str = "PROCESSING", **kw: Any) -> Any:
    kw.setdefault("mchid", "1900000109")
    kw.setdefault("amount", 100)
    return reduction(no, state, **kw)


@dataclass(frozen=True)
class Case:
    name: str
    call: Call
    outcome: Any
    now: datetime
    expect: str  # an Action, or "call:<endpoint>"
    to: str | None = None
    row_kw: tuple[tuple[str, Any], ...] = ()


CASES = [
    # The POST's answers.
    Case("post accepted", POST, ok(), T0, Action.RECORD, "PROCESSING"),
    Case("post final", POST, ok(state="SUCCESS"), T0, Action.RECORD, "SUCCESS"),
    Case(
        "post outcome unknown",
        POST,
        errors.OutcomeUnknown(errors.NetworkError("reset")),
        T0,
        Action.LATER,
    ),
    Case(
        "not enough: confirm",
        POST,
        errors.NotEnough("x", code="NOT_ENOUGH"),
        T0,
        "call:query",
    ),
    Case("a refusal is no proof: confirm", POST, REFUSED, T0, "call:query"),
    Case(
        "refused by our own validation, first send",
        POST,
        errors.InvalidRequest("bad amount"),
        T0,
        Action.REJECT,
        "REJECTED",
    ),
    Case(
        "refused by our own validation on a re-entry",
        Call(Endpoint.SUBMIT, "POST"),
        errors.InvalidRequest("bad amount"),
        T0,
        Action.REVIEW,
        "NEEDS_REVIEW",
    ),
    Case(
        "unexpected answer to a POST",
        POST,
        errors.UnexpectedAnswer("teapot", status=418),
        T0,
        Action.REVIEW,
        "NEEDS_REVIEW",
    ),
    Case("throttled", POST, errors.Throttled(1.5, "k"), T0, Action.DEFER),
    # The query's answers.
    Case("not found within the grace", QUERY, NOT_FOUND, T0 + GRACE / 2, Action.LATER),
    Case("not found after the grace: re-enter", QUERY, NOT_FOUND, T0 + 2 * GRACE, "call:submit"),
    Case(
        "not found for an accepted order",
        QUERY,
        NOT_FOUND,
        T0 + 2 * GRACE,
        Action.LATER,
        row_kw=(("state", "PROCESSING"),),
    ),
    Case(
        "refused, then nothing after the grace: rejected",
        Call(Endpoint.QUERY, "signed query after PARAM_ERROR", hint=REFUSED),
        NOT_FOUND,
        T0 + 2 * GRACE,
        Action.REJECT,
        "REJECTED",
    ),
    Case(
        "refused, then nothing within the grace: later",
        Call(Endpoint.QUERY, "signed query after PARAM_ERROR", hint=REFUSED),
        NOT_FOUND,
        T0,
        Action.LATER,
    ),
    Case(
        "a stored refusal, then nothing after the grace: rejected",
        QUERY,
        NOT_FOUND,
        T0 + 2 * GRACE,
        Action.REJECT,
        "REJECTED",
        row_kw=(("refusal", "HTTP 400 PARAM_ERROR bad"),),
    ),
    Case(
        "refused, then found: its word counts",
        Call(Endpoint.QUERY, "signed query after PARAM_ERROR", hint=REFUSED),
        ok(state="SUCCESS"),
        T0,
        Action.RECORD,
        "SUCCESS",
    ),
    Case("query busy", QUERY, errors.ProviderBusy("503", status=503), T0, Action.LATER),
    Case(
        "query refused",
        QUERY,
        errors.Rejected("sig", status=401, code="SIGN_ERROR"),
        T0,
        Action.REVIEW,
        "NEEDS_REVIEW",
    ),
    # What a final answer must carry.
    Case("success without an mchid", QUERY, ok(state="SUCCESS", mchid=""), T0, Action.LATER),
    Case(
        "success about another mchid",
        QUERY,
        ok(state="SUCCESS", mchid="1900000999"),
        T0,
        Action.REVIEW,
        "NEEDS_REVIEW",
    ),
    Case("success for another amount", QUERY, ok(state="SUCCESS", amount=99), T0, Action.REVIEW),
    # STATE_UNKNOWN may be a passing state: asked again on the schedule (issue 18).
    Case("unknown state", QUERY, ok(state="STATE_UNKNOWN"), T0, Action.LATER),
    # Issue 18: the pages taken literally.
    Case(
        "unknown state once the budget is spent",
        QUERY,
        ok(state="STATE_UNKNOWN"),
        T0,
        Action.REVIEW,
        "NEEDS_REVIEW",
        (("state", "PROCESSING"), ("attempts", 5)),
    ),
    Case("unknown state answering a POST", POST, ok(state="STATE_UNKNOWN"), T0, Action.LATER),
    Case(
        "REDUCTION_TYPE_UNKNOWN on success",
        QUERY,
        ok(state="SUCCESS", reduction_type="REDUCTION_TYPE_UNKNOWN"),
        T0,
        Action.RECORD,
        "SUCCESS",
    ),
    Case(
        "a type nobody documented on success",
        POST,
        ok(state="SUCCESS", reduction_type="TAX_DEDUCTION"),
        T0,
        Action.RECORD,
        "SUCCESS",
    ),
    Case(
        "a known other type on success",
        QUERY,
        ok(state="SUCCESS", reduction_type="JUDICIAL_DEDUCTION"),
        T0,
        Action.REVIEW,
        "NEEDS_REVIEW",
    ),
    Case(
        "RECEIPT_NOT_EXIST_CLOSED",
        QUERY,
        ok(state="FAILED", fail_reason="RECEIPT_NOT_EXIST_CLOSED", amount=None),
        T0,
        Action.RECORD,
        "FAILED",
    ),
    Case(
        "RECEIPT_NOT_EXIST",
        QUERY,
        ok(state="FAILED", fail_reason="RECEIPT_NOT_EXIST", amount=None),
        T0,
        Action.RECORD,
        "FAILED",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_decision_table(case: Case) -> None:
    got = decisions.decide(
        REDUCTION, row(**dict(case.row_kw)), case.call, case.outcome, case.now, POLICY
    )
    if case.expect.startswith("call:"):
        assert isinstance(got, Call) and got.endpoint == case.expect.split(":")[1]
        return
    assert isinstance(got, Write) and got.action == case.expect, got
    if case.to is not None:
        assert got.to == case.to


def test_an_answer_about_another_order_is_never_recorded() -> None:
    got = decisions.decide(REDUCTION, row(), QUERY, ok("R2", "SUCCESS"), T0, POLICY)
    assert isinstance(got, Write) and got.action == Action.REVIEW
    assert "out_request_no" in got.reason


def test_a_refused_order_waits_out_the_grace_before_its_next_look() -> None:
    hint = Call(Endpoint.QUERY, "signed query after PARAM_ERROR", hint=REFUSED)
    got = decisions.decide(REDUCTION, row(), hint, NOT_FOUND, T0 + timedelta(seconds=1), POLICY)
    assert isinstance(got, Write) and got.values["next_poll_at"] == T0 + GRACE
    assert "PARAM_ERROR" in got.values["refusal"]  # remembered for the look after the grace


def test_the_window_check_holds_on_the_retry_later_path() -> None:
    late = T0 + timedelta(days=31)
    got = decisions.decide(REDUCTION, row(), QUERY, errors.ProviderBusy("x"), late, POLICY)
    assert isinstance(got, Write) and got.action == Action.REVIEW
    assert "31-day re-entry window" in got.reason
    # The margin: an hour before the provider's 31 days, re-entry has already stopped.
    early = T0 + timedelta(days=31) - timedelta(minutes=30)
    got = decisions.decide(REDUCTION, row(), QUERY, NOT_FOUND, early, POLICY)
    assert isinstance(got, Write) and got.action == Action.REVIEW


def test_first_move_submits_a_new_order_and_queries_a_sent_one() -> None:
    first = decisions.start(REDUCTION, row("RECEIVED", sent=None), T0, POLICY, marked=False)
    assert isinstance(first, Call) and first.endpoint is Endpoint.SUBMIT
    assert first.ahead is not None and first.ahead.to == "SUBMITTED"  # the mark goes first
    sent = decisions.start(REDUCTION, row(), T0, POLICY, marked=False)
    assert isinstance(sent, Call) and sent.endpoint is Endpoint.QUERY
    billq = decisions.start(BILL, bill_row(), T0, POLICY, marked=False)
    assert isinstance(billq, Call) and billq.endpoint is Endpoint.QUERY


def test_bills_not_found_is_asked_again_never_reentered() -> None:
    got = decisions.decide(BILL, bill_row(), QUERY, NOT_FOUND, T0 + 2 * GRACE, POLICY)
    assert isinstance(got, Write) and got.action == Action.LATER
    done = decisions.decide(BILL, bill_row(), QUERY, bill("B1", "SUCCESS"), T0, POLICY)
    assert isinstance(done, Write) and done.to == "SUCCESS"


def test_rows_match_their_tables() -> None:
    """The engine's rows are plain dataclasses: their fields are exactly the columns."""
    for kind in (REDUCTION, BILL):
        columns = {c.name for c in kind.model.__table__.columns}
        assert set(field_names(kind.row)) == columns, kind


def test_an_unknown_state_is_asked_again_on_the_schedule_with_nothing_recorded() -> None:
    got = decisions.decide(REDUCTION, row(), QUERY, ok(state="STATE_UNKNOWN"), T0, POLICY)
    assert isinstance(got, Write) and got.to is None and got.values["attempts"] == 1
    assert got.values["next_poll_at"] == T0 + timedelta(seconds=5)  # the schedule's first step
    assert "provider_state" not in got.values and "STATE_UNKNOWN" in got.values["last_error"]
    assert got.values["last_request_id"] == "rid-q"
    bills = decisions.decide(BILL, bill_row(), QUERY, bill("B1", "REFUNDING"), T0, POLICY)
    assert isinstance(bills, Write) and bills.action == Action.LATER and bills.to is None


def test_the_event_names_dropped_fields_and_an_unknown_type() -> None:
    import dataclasses

    answer = dataclasses.replace(
        ok(state="SUCCESS", reduction_type="REDUCTION_TYPE_UNKNOWN"),
        dropped=("fail_reason", "fail_time"),
    )
    got = decisions.decide(REDUCTION, row(), QUERY, answer, T0, POLICY)
    assert isinstance(got, Write) and got.to == "SUCCESS"
    assert "dropped fail_reason, fail_time: not valid for state SUCCESS" in got.reason
    assert "reduction_type REDUCTION_TYPE_UNKNOWN is not one we know" in got.reason
    assert got.values["fail_reason"] is None
    plain = decisions.decide(REDUCTION, row(), QUERY, ok(state="PROCESSING"), T0, POLICY)
    assert isinstance(plain, Write) and plain.reason == "query: PROCESSING"


def test_a_bill_keeps_only_the_fields_of_its_state() -> None:
    """close_info is sent only for CLOSED and success_time only for SUCCESS (the bill page);
    any other copy, as the page's own example shows, is not the bill's."""
    stray = dataclasses.replace(
        bill("B1", "SUCCESS", close_reason="NOT_ENOUGH"),
        success_time=T0,
    )
    done = decisions.decide(BILL, bill_row(), QUERY, stray, T0, POLICY)
    assert isinstance(done, Write) and done.to == "SUCCESS"
    assert done.values["close_reason"] is None and done.values["success_time"] == T0
    closed = dataclasses.replace(bill("B1", "CLOSED", close_reason="EXPIRED"), success_time=T0)
    done = decisions.decide(BILL, bill_row(), QUERY, closed, T0, POLICY)
    assert isinstance(done, Write) and done.values["close_reason"] == "EXPIRED"
    assert done.values["success_time"] is None and "(EXPIRED)" in done.reason


def test_a_failed_answer_without_its_reason_is_asked_again() -> None:
    """FAILED tells one thing, why; an answer that leaves it out (the page marks it optional)
    is asked again rather than recorded with a reason nobody gave."""
    got = decisions.decide(REDUCTION, row(), QUERY, ok(state="FAILED"), T0, POLICY)
    assert isinstance(got, Write) and got.action == Action.LATER
    assert "fail_reason" in got.values["last_error"]
    given = ok(state="FAILED", fail_reason="TIME_OUT_CLOSED")
    done = decisions.decide(REDUCTION, row(), QUERY, given, T0, POLICY)
    assert isinstance(done, Write) and done.to == "FAILED"


def test_a_closed_bill_without_its_reason_is_asked_again() -> None:
    got = decisions.decide(BILL, bill_row(), QUERY, bill("B1", "CLOSED"), T0, POLICY)
    assert isinstance(got, Write) and got.action == Action.LATER
    given = bill("B1", "CLOSED", close_reason="USER_REJECTED")
    done = decisions.decide(BILL, bill_row(), QUERY, given, T0, POLICY)
    assert isinstance(done, Write) and done.to == "CLOSED"

"""The reconciliation rules, on SQLite and on PostgreSQL, against a scripted provider."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from tests.fixtures_db import EngineSettings, FakeClock, FakeProvider, bill, reduction
from wxrecon.domain.errors import Conflict, IllegalTransition, OrderNotFound
from wxrecon.domain.kinds import BILL, REDUCTION
from wxrecon.domain.states import BState, RState
from wxrecon.engine import operator
from wxrecon.engine.intake import IntakeResult, intake_bill, intake_reduction
from wxrecon.engine.steps import Reconciler, cas, load_row
from wxrecon.engine.sweep import Claim, claim_due
from wxrecon.store.db import Database
from wxrecon.store.models import Event, SpecialReduction
from wxrecon.store.reads import bill_events, reduction_events
from wxrecon.store.rows import BillRow, ReductionRow
from wxrecon.wechatpay import errors
from wxrecon.wechatpay.resources import SpecialReduction as ProviderReduction
from wxrecon.wechatpay.resources import SpecialReductionRequest

MCHID = "1900000109"


def make_request(no: str = "R1", **overrides: Any) -> SpecialReductionRequest:
    params: dict[str, Any] = {
        "mchid": MCHID,
        "bal_account_no": "6222000011112222",
        "out_request_no": no,
        "reduction_type": "FINANCIAL_PENALTY",
        "amount": 1234,
        "reason": "penalty for case 7",
    }
    params.update(overrides)
    return SpecialReductionRequest.create(**params)


def intake(db: Database, clock: FakeClock, no: str = "R1", **overrides: Any) -> IntakeResult:
    with db.transaction() as session:
        return intake_reduction(session, make_request(no, **overrides), now=clock())


def row_of(db: Database, order_id: int) -> ReductionRow:
    row = load_row(db, REDUCTION, order_id)
    assert row is not None
    return row


def bill_of(db: Database, order_id: int) -> BillRow:
    row = load_row(db, BILL, order_id)
    assert row is not None
    return row


def path(db: Database, order_id: int) -> list[tuple[str | None, str]]:
    with db.read() as session:
        return [(e.from_state, e.to_state) for e in reduction_events(session, order_id)]


def count(db: Database, model: Any) -> int:
    with db.read() as session:
        return int(session.execute(select(func.count()).select_from(model)).scalar_one())


@pytest.fixture
def rec(
    db: Database, provider: FakeProvider, engine_settings: EngineSettings, clock: FakeClock
) -> Reconciler:
    return Reconciler(db, provider, engine_settings, clock=clock)


def claim_now(db: Database, clock: FakeClock) -> list[Claim]:
    return claim_due(db, REDUCTION, limit=100, lease=120, now=clock())


def poll(rec: Reconciler, db: Database, clock: FakeClock, order_id: int) -> str | None:
    """Let the order's next poll come due, claim it like the sweep, and process it."""
    row = row_of(db, order_id)
    assert row.next_poll_at is not None, "the order is not scheduled"
    if row.next_poll_at > clock():
        clock.now = row.next_poll_at
    claims = [c for c in claim_now(db, clock) if c.id == order_id]
    assert claims, "the order was not claimable when due"
    return rec.process(REDUCTION, order_id, claims[0].token)


# -- intake --------------------------------------------------------------------------------------


def test_intake_writes_received_row_and_event(db: Database, clock: FakeClock) -> None:
    result = intake(db, clock)
    assert result.created and result.claimed and result.state == RState.RECEIVED
    row = row_of(db, result.order_id)
    assert (row.mchid, row.out_request_no, row.amount, row.reduction_type) == (
        MCHID,
        "R1",
        1234,
        "FINANCIAL_PENALTY",
    )
    assert row.bal_account_no == "6222000011112222"
    assert row.claim_token == result.token
    assert row.submitted_at is None
    assert path(db, result.order_id) == [(None, "RECEIVED")]
    assert "6222000011112222" not in repr(row)


def test_same_order_again_is_the_same_order(db: Database, clock: FakeClock) -> None:
    first = intake(db, clock)
    second = intake(db, clock)
    assert second.order_id == first.order_id
    assert not second.created and not second.claimed
    assert count(db, SpecialReduction) == 1
    assert count(db, Event) == 1


def test_same_number_for_another_merchant_is_another_order(db: Database, clock: FakeClock) -> None:
    a = intake(db, clock)
    b = intake(db, clock, mchid="1900000110")
    assert a.order_id != b.order_id and b.created


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"amount": 1235}, "amount"),
        ({"bal_account_no": "6222000011113333"}, "bal_account_no"),
        ({"reduction_type": "JUDICIAL_DEDUCTION"}, "reduction_type"),
        ({"reason": "another reason"}, "reason"),
        ({"reason": None}, "reason"),
    ],
)
def test_conflicting_parameters_are_refused_and_change_nothing(
    db: Database, clock: FakeClock, change: dict[str, Any], field: str
) -> None:
    first = intake(db, clock)
    before = row_of(db, first.order_id)
    with pytest.raises(Conflict) as info:
        intake(db, clock, **change)
    message = str(info.value)
    assert field in message and "\n" not in message
    assert "6222000011113333" not in message and "6222000011112222" not in message
    after = row_of(db, first.order_id)
    assert (after.version, after.amount, after.bal_account_no, after.reason) == (
        before.version,
        before.amount,
        before.bal_account_no,
        before.reason,
    )
    assert count(db, Event) == 1


# -- submit: every answer of DESIGN.md §1 ---------------------------------------------------------


def test_submit_processing_then_success(
    db: Database, rec: Reconciler, provider: FakeProvider, clock: FakeClock
) -> None:
    order = intake(db, clock)
    provider.submit_answers.append(reduction("R1", "PROCESSING", request_id="rid-post"))
    assert rec.process(REDUCTION, order.order_id, order.token or "") == RState.PROCESSING
    row = row_of(db, order.order_id)
    assert row.submitted_at == clock() and row.attempts == 1
    assert row.next_poll_at == clock.now + timedelta(seconds=5)
    assert row.claim_token is None and row.last_request_id == "rid-post"
    # The request sent is exactly the stored order.
    assert provider.submits == [make_request("R1")]

    provider.query_answers.append(reduction("R1", "SUCCESS", request_id="rid-q1"))
    assert poll(rec, db, clock, order.order_id) == RState.SUCCESS
    row = row_of(db, order.order_id)
    assert row.provider_state == "SUCCESS" and row.quota_change_no == "QR1"
    assert row.success_time is not None and row.next_poll_at is None
    assert path(db, order.order_id) == [
        (None, "RECEIVED"),
        ("RECEIVED", "SUBMITTED"),
        ("SUBMITTED", "PROCESSING"),
        ("PROCESSING", "SUCCESS"),
    ]
    with db.read() as session:
        events = reduction_events(session, order.order_id)
    assert [e.request_id for e in events] == [None, None, "rid-post", "rid-q1"]
    assert all(e.reason for e in events)


@pytest.mark.parametrize(
    ("state", "fail_reason", "expected"),
    [
        ("SUCCESS", None, RState.SUCCESS),
        ("FAILED", "TIME_OUT_CLOSED", RState.FAILED),
        ("FAILED", "RECEIPT_NOT_EXIST", RState.FAILED),
        ("FAILED", "RECEIPT_NOT_EXIST_CLOSED", RState.FAILED),
        ("FAILED", "A_REASON_NOBODY_DOCUMENTED", RState.FAILED),
    ],
)
def test_signed_final_answer_to_post_is_stored_verbatim(
    db: Database,
    rec: Reconciler,
    provider: FakeProvider,
    clock: FakeClock,
    state: str,
    fail_reason: str | None,
    expected: RState,
) -> None:
    order = intake(db, clock)
    provider.submit_answers.append(reduction("R1", state, fail_reason=fail_reason))
    assert rec.process(REDUCTION, order.order_id, order.token or "") == expected
    row = row_of(db, order.order_id)
    assert row.fail_reason == fail_reason
    assert row.next_poll_at is None and row.claim_token is None
    assert path(db, order.order_id)[-1] == ("SUBMITTED", expected)


@pytest.mark.parametrize(
    "cause",
    [
        errors.NetworkError("read timeout"),
        errors.ProviderBusy("busy", status=500, code="SYSTEM_ERROR"),
        errors.ProviderBusy("slow down", status=429, code="FREQUENCY_LIMITED"),
        errors.UnverifiedResponse("bad signature", status=200),
        errors.GarbledResponse("not json", status=200),
    ],
)
def test_unknown_outcome_is_never_failed(
    db: Database,
    rec: Reconciler,
    provider: FakeProvider,
    clock: FakeClock,
    cause: errors.WeChatPayError,
) -> None:
    order = intake(db, clock)
    provider.submit_answers.append(errors.OutcomeUnknown(cause))
    assert rec.process(REDUCTION, order.order_id, order.token or "") == RState.SUBMITTED
    row = row_of(db, order.order_id)
    assert row.attempts == 1 and row.next_poll_at is not None
    assert row.last_error and "outcome" in row.last_error
    # The query then tells the truth.
    provider.query_answers.append(reduction("R1", "SUCCESS"))
    assert poll(rec, db, clock, order.order_id) == RState.SUCCESS
    assert "FAILED" not in {to for _, to in path(db, order.order_id)}


def test_unknown_outcome_exhausts_into_review_not_failure(
    db: Database,
    rec: Reconciler,
    provider: FakeProvider,
    clock: FakeClock,
    engine_settings: EngineSettings,
) -> None:
    order = intake(db, clock)
    provider.submit_answers.append(errors.OutcomeUnknown(errors.NetworkError("reset")))
    rec.process(REDUCTION, order.order_id, order.token or "")
    for _ in range(engine_settings.poll_max_attempts - 1):
        provider.query_answers.append(errors.ProviderBusy("busy", status=503))
        poll(rec, db, clock, order.order_id)
    row = row_of(db, order.order_id)
    assert row.state == RState.NEEDS_REVIEW
    assert row.next_poll_at is None
    assert "gave up after 6 attempts" in (row.last_error or "")
    assert "FAILED" not in {to for _, to in path(db, order.order_id)}


@pytest.mark.parametrize(
    "hint",
    [
        errors.NotEnough("balance not enough", status=403, code="NOT_ENOUGH"),
        errors.AlreadyExists("exists", status=400, code="ALREADY_EXISTS"),
    ],
)
def test_unsigned_not_enough_is_confirmed_by_a_signed_query(
    db: Database,
    rec: Reconciler,
    provider: FakeProvider,
    clock: FakeClock,
    hint: errors.WeChatPayError,
) -> None:
    order = intake(db, clock)
    provider.submit_answers.append(hint)
    provider.query_answers.append(
        reduction("R1", "FAILED", fail_reason="BALANCE_NOT_ENOUGH", request_id="rid-signed")
    )
    assert rec.process(REDUCTION, order.order_id, order.token or "") == RState.FAILED
    row = row_of(db, order.order_id)
    assert row.fail_reason == "BALANCE_NOT_ENOUGH" and row.last_request_id == "rid-signed"
    assert len(provider.queries) == 1
    with db.read() as session:
        last = reduction_events(session, order.order_id)[-1]
    assert last.request_id == "rid-signed" and hint.kind in last.reason


def test_not_enough_without_confirmation_stays_unknown(
    db: Database, rec: Reconciler, provider: FakeProvider, clock: FakeClock
) -> None:
    order = intake(db, clock)
    provider.submit_answers.append(errors.NotEnough("nope", status=403, code="NOT_ENOUGH"))
    provider.query_answers.append(errors.UnverifiedResponse("bad signature"))
    assert rec.process(REDUCTION, order.order_id, order.token or "") == RState.SUBMITTED
    assert "not yet confirmed" in (row_of(db, order.order_id).last_error or "")
    # The signed query, later, may even say it went through.
    provider.query_answers.append(reduction("R1", "PROCESSING"))
    assert poll(rec, db, clock, order.order_id) == RState.PROCESSING


@pytest.mark.parametrize("code", ["PARAM_ERROR", "INVALID_REQUEST", "SIGN_ERROR", "NO_AUTH"])
def test_rejection_is_rejected_only_once_a_query_after_the_grace_finds_nothing(
    db: Database, rec: Reconciler, provider: FakeProvider, clock: FakeClock, code: str
) -> None:
    order = intake(db, clock)
    provider.submit_answers.append(
        errors.Rejected("账户号码不正确", status=400, code=code, request_id="rid-rej")
    )
    # A refusal is not proof: a signed query is asked at once; it finds nothing, too soon.
    provider.query_answers.append(errors.NotFound("no such order", status=404, code="NOT_FOUND"))
    assert rec.process(REDUCTION, order.order_id, order.token or "") == RState.SUBMITTED
    row = row_of(db, order.order_id)
    assert code in (row.refusal or "") and len(provider.queries) == 1
    # Its next look waits out the grace (30 s), when a NotFound finally proves something.
    assert row.next_poll_at == row.last_submit_at + timedelta(seconds=30)  # type: ignore[operator]
    provider.query_answers.append(
        errors.NotFound("no such order", status=404, code="NOT_FOUND", request_id="rid-nf")
    )
    assert poll(rec, db, clock, order.order_id) == RState.REJECTED
    row = row_of(db, order.order_id)
    assert code in (row.last_error or "") and "账户号码不正确" in (row.last_error or "")
    assert row.next_poll_at is None and row.last_request_id == "rid-nf"
    assert len(provider.submits) == 1  # a refused order is never re-entered
    assert path(db, order.order_id)[-1] == ("SUBMITTED", "REJECTED")
    # Terminal: the sweep never picks it up again.
    clock.advance(days=1)
    assert claim_now(db, clock) == []


def test_a_refused_retry_of_a_post_that_landed_is_not_rejected(
    db: Database, rec: Reconciler, provider: FakeProvider, clock: FakeClock
) -> None:
    """The first attempt landed, its answer was lost, the client's retry got 400: the
    provider applied the order, so only its signed word may be written."""
    order = intake(db, clock)
    provider.submit_answers.append(errors.Rejected("bad", status=400, code="PARAM_ERROR"))
    provider.query_answers.append(reduction("R1", "SUCCESS", request_id="rid-ok"))
    assert rec.process(REDUCTION, order.order_id, order.token or "") == RState.SUCCESS
    row = row_of(db, order.order_id)
    assert row.refusal is None and row.last_request_id == "rid-ok"
    assert path(db, order.order_id)[-1][1] == "SUCCESS"


def test_a_refused_order_that_exists_with_other_parameters_goes_to_review(
    db: Database, rec: Reconciler, provider: FakeProvider, clock: FakeClock
) -> None:
    order = intake(db, clock)
    provider.submit_answers.append(errors.Rejected("exists", status=400, code="INVALID_REQUEST"))
    provider.query_answers.append(reduction("R1", "SUCCESS", amount=777))
    assert rec.process(REDUCTION, order.order_id, order.token or "") == RState.NEEDS_REVIEW
    assert "differs from ours in amount" in (row_of(db, order.order_id).last_error or "")


def test_a_refusal_whose_query_fails_is_asked_again_never_rejected(
    db: Database, rec: Reconciler, provider: FakeProvider, clock: FakeClock
) -> None:
    order = intake(db, clock)
    provider.submit_answers.append(errors.Rejected("sig", status=401, code="SIGN_ERROR"))
    provider.query_answers.append(errors.ProviderBusy("busy", status=500))
    assert rec.process(REDUCTION, order.order_id, order.token or "") == RState.SUBMITTED
    provider.query_answers.append(errors.Rejected("sig", status=401, code="SIGN_ERROR"))
    assert poll(rec, db, clock, order.order_id) == RState.NEEDS_REVIEW


def test_unexpected_answer_needs_review(
    db: Database, rec: Reconciler, provider: FakeProvider, clock: FakeClock
) -> None:
    order = intake(db, clock)
    provider.submit_answers.append(errors.UnexpectedAnswer("teapot", status=418, code="TEAPOT"))
    assert rec.process(REDUCTION, order.order_id, order.token or "") == RState.NEEDS_REVIEW
    assert path(db, order.order_id)[-1] == ("SUBMITTED", "NEEDS_REVIEW")


def test_provider_copy_differing_from_ours_needs_review(
    db: Database, rec: Reconciler, provider: FakeProvider, clock: FakeClock
) -> None:
    order = intake(db, clock)
    provider.submit_answers.append(reduction("R1", "SUCCESS", amount=9999))
    assert rec.process(REDUCTION, order.order_id, order.token or "") == RState.NEEDS_REVIEW
    assert "amount" in (row_of(db, order.order_id).last_error or "")


def _sealed_answer(state: str, ledger: str, opened: list[str], **more: Any) -> ProviderReduction:
    """A provider answer whose bal_account_no decrypts (to ``ledger``) only when read."""

    def decrypt(ciphertext: str) -> str:
        opened.append(ciphertext)
        if ledger == "garbled":
            raise ValueError("does not decrypt")
        return ledger

    return ProviderReduction.parse(
        {"out_request_no": "R1", "state": state, "bal_account_no": "CIPHERTEXT", **more},
        expect_out_request_no="R1",
        decrypt=decrypt,
        request_id="rid-sealed",
    )


def test_ledger_number_is_compared_on_the_post_answer(
    db: Database, rec: Reconciler, provider: FakeProvider, clock: FakeClock
) -> None:
    order = intake(db, clock)
    opened: list[str] = []
    provider.submit_answers.append(_sealed_answer("SUCCESS", "6222000011113333", opened))
    assert rec.process(REDUCTION, order.order_id, order.token or "") == RState.NEEDS_REVIEW
    row = row_of(db, order.order_id)
    assert "bal_account_no" in (row.last_error or "") and opened == ["CIPHERTEXT"]
    assert "6222000011113333" not in (row.last_error or "")


def test_ledger_number_is_read_only_on_success(
    db: Database, rec: Reconciler, provider: FakeProvider, clock: FakeClock
) -> None:
    """An in-flight answer, the POST's or a query's, is not compared on the ledger number
    (one private-key operation an order, not one an answer); a SUCCESS moved money, so its
    ledger must match."""
    order = intake(db, clock)
    opened: list[str] = []
    provider.submit_answers.append(_sealed_answer("PROCESSING", "garbled", opened))
    assert rec.process(REDUCTION, order.order_id, order.token or "") == RState.PROCESSING
    provider.query_answers.append(_sealed_answer("PROCESSING", "garbled", opened))
    assert poll(rec, db, clock, order.order_id) == RState.PROCESSING
    assert opened == []  # both in-flight answers stayed sealed
    provider.query_answers.append(_sealed_answer("SUCCESS", "6222000011119999", opened))
    assert poll(rec, db, clock, order.order_id) == RState.NEEDS_REVIEW
    assert opened == ["CIPHERTEXT"]
    assert "bal_account_no" in (row_of(db, order.order_id).last_error or "")


def test_failed_answer_is_not_compared_on_the_ledger_number(
    db: Database, rec: Reconciler, provider: FakeProvider, clock: FakeClock
) -> None:
    order = intake(db, clock)
    opened: list[str] = []
    more = {"mchid": MCHID, "fail_reason": "BALANCE_NOT_ENOUGH"}
    provider.submit_answers.append(_sealed_answer("FAILED", "garbled", opened, **more))
    assert rec.process(REDUCTION, order.order_id, order.token or "") == RState.FAILED
    assert opened == []


def test_post_answer_whose_ledger_number_does_not_decrypt_is_an_unknown_outcome(
    db: Database, rec: Reconciler, provider: FakeProvider, clock: FakeClock
) -> None:
    order = intake(db, clock)
    provider.submit_answers.append(_sealed_answer("SUCCESS", "garbled", []))
    assert rec.process(REDUCTION, order.order_id, order.token or "") == RState.SUBMITTED
    row = row_of(db, order.order_id)
    assert row.attempts == 1 and row.next_poll_at is not None
    assert "outcome of the POST unknown" in (row.last_error or "")
    assert "bal_account_no does not decrypt" in (row.last_error or "")
    assert row.last_request_id == "rid-sealed"
    provider.query_answers.append(reduction("R1", "SUCCESS"))
    assert poll(rec, db, clock, order.order_id) == RState.SUCCESS


def test_unknown_provider_state_is_asked_again_then_reviewed(
    db: Database,
    rec: Reconciler,
    provider: FakeProvider,
    clock: FakeClock,
    engine_settings: EngineSettings,
) -> None:
    """An unknown state may be a passing one (issue 18): queried on the schedule, and only
    once the attempt budget is spent does a person look."""
    order = intake(db, clock)
    provider.submit_answers.append(reduction("R1", "REVERSED"))
    assert rec.process(REDUCTION, order.order_id, order.token or "") == RState.SUBMITTED
    assert "REVERSED" in (row_of(db, order.order_id).last_error or "")
    for _ in range(engine_settings.poll_max_attempts - 1):
        provider.query_answers.append(reduction("R1", "STATE_UNKNOWN"))
        poll(rec, db, clock, order.order_id)
    row = row_of(db, order.order_id)
    assert row.state == RState.NEEDS_REVIEW and "gave up after 6 attempts" in (row.last_error or "")


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (reduction("R1", "SUCCESS"), RState.SUCCESS),
        (reduction("R1", "FAILED", fail_reason="TIME_OUT_CLOSED"), RState.FAILED),
        (errors.UnexpectedAnswer("?", status=418), RState.NEEDS_REVIEW),
        (errors.Rejected("no auth", status=403, code="NO_AUTH"), RState.NEEDS_REVIEW),
        (reduction("R1", "PROCESSING"), RState.PROCESSING),
        (errors.NotFound("lagging replica", status=404, code="NOT_FOUND"), RState.PROCESSING),
    ],
)
def test_processing_order_answers(
    db: Database,
    rec: Reconciler,
    provider: FakeProvider,
    clock: FakeClock,
    answer: Any,
    expected: RState,
) -> None:
    order = intake(db, clock)
    provider.submit_answers.append(reduction("R1", "PROCESSING"))
    rec.process(REDUCTION, order.order_id, order.token or "")
    provider.query_answers.append(answer)
    assert poll(rec, db, clock, order.order_id) == expected
    row = row_of(db, order.order_id)
    # A query is never taken for a rejection of the order: it was accepted already.
    assert row.state != RState.REJECTED
    assert (row.next_poll_at is None) == (expected != RState.PROCESSING)
    assert len(provider.submits) == 1  # an accepted order is never re-entered


def test_processing_order_past_its_budget_needs_review(
    db: Database,
    rec: Reconciler,
    provider: FakeProvider,
    clock: FakeClock,
    engine_settings: EngineSettings,
) -> None:
    order = intake(db, clock)
    provider.submit_answers.append(reduction("R1", "PROCESSING"))
    rec.process(REDUCTION, order.order_id, order.token or "")
    for _ in range(engine_settings.poll_max_attempts - 1):
        provider.query_answers.append(reduction("R1", "PROCESSING"))
        poll(rec, db, clock, order.order_id)
    row = row_of(db, order.order_id)
    assert row.state == RState.NEEDS_REVIEW and "still PROCESSING" in (row.last_error or "")


def test_invalid_stored_order_is_rejected_before_sending(
    db: Database, rec: Reconciler, provider: FakeProvider, clock: FakeClock
) -> None:
    order = intake(db, clock)
    with db.transaction() as session:  # e.g. a row written by hand, bypassing intake
        row = session.get(SpecialReduction, order.order_id)
        assert row is not None
        row.amount = 0
    assert rec.process(REDUCTION, order.order_id, order.token or "") == RState.REJECTED
    assert provider.submits == []
    assert path(db, order.order_id)[-1] == ("RECEIVED", "REJECTED")


# -- refresh: not found, re-entry, the window ----------------------------------------------------


def test_not_found_soon_after_post_proves_nothing_then_same_post_is_reentered(
    db: Database, rec: Reconciler, provider: FakeProvider, clock: FakeClock
) -> None:
    order = intake(db, clock)
    provider.submit_answers.append(errors.OutcomeUnknown(errors.NetworkError("timeout")))
    rec.process(REDUCTION, order.order_id, order.token or "")
    first_sent = row_of(db, order.order_id).submitted_at

    provider.query_answers.append(errors.NotFound("no such order", status=404, code="NOT_FOUND"))
    assert poll(rec, db, clock, order.order_id) == RState.SUBMITTED  # 5 s later: too soon
    assert len(provider.submits) == 1

    clock.advance(60)
    provider.query_answers.append(errors.NotFound("no such order", status=404, code="NOT_FOUND"))
    provider.submit_answers.append(reduction("R1", "PROCESSING"))
    assert poll(rec, db, clock, order.order_id) == RState.PROCESSING
    assert provider.submits == [make_request("R1"), make_request("R1")]  # identical re-entry
    row = row_of(db, order.order_id)
    assert row.submitted_at == first_sent and row.last_submit_at == clock()
    with db.read() as session:
        reasons = [e.reason for e in reduction_events(session, order.order_id)]
    assert any("re-entering" in r for r in reasons)


def test_past_the_reentry_window_an_unknown_order_needs_review(
    db: Database, rec: Reconciler, provider: FakeProvider, clock: FakeClock
) -> None:
    order = intake(db, clock)
    provider.submit_answers.append(errors.OutcomeUnknown(errors.NetworkError("timeout")))
    rec.process(REDUCTION, order.order_id, order.token or "")
    clock.advance(days=32)
    provider.query_answers.append(errors.NotFound("no such order", status=404, code="NOT_FOUND"))
    assert poll(rec, db, clock, order.order_id) == RState.NEEDS_REVIEW
    assert len(provider.submits) == 1  # never re-entered past the window
    assert "31-day" in (row_of(db, order.order_id).last_error or "")


def test_throttled_call_is_deferred_without_spending_an_attempt(
    db: Database, rec: Reconciler, provider: FakeProvider, clock: FakeClock
) -> None:
    order = intake(db, clock)
    provider.submit_answers.append(reduction("R1", "PROCESSING"))
    rec.process(REDUCTION, order.order_id, order.token or "")
    before = row_of(db, order.order_id)
    events_before = path(db, order.order_id)
    provider.query_answers.append(errors.Throttled(0.75, "query_reduction:" + MCHID))
    clock.now = before.next_poll_at or clock.now
    claims = claim_now(db, clock)
    assert rec.process(REDUCTION, order.order_id, claims[0].token) == RState.PROCESSING
    after = row_of(db, order.order_id)
    assert after.attempts == before.attempts
    assert after.next_poll_at is not None
    assert abs((after.next_poll_at - clock()).total_seconds() - 0.75) < 1e-6
    assert after.claim_token is None
    assert path(db, order.order_id) == events_before


def test_throttled_submit_is_deferred_and_not_an_attempt(
    db: Database, rec: Reconciler, provider: FakeProvider, clock: FakeClock
) -> None:
    order = intake(db, clock)
    provider.submit_answers.append(errors.Throttled(1.5, "submit_reduction:" + MCHID))
    rec.process(REDUCTION, order.order_id, order.token or "")
    row = row_of(db, order.order_id)
    assert row.attempts == 0 and row.state == RState.SUBMITTED
    assert row.next_poll_at is not None and (row.next_poll_at - clock()).total_seconds() == 1.5


# -- races and stale claims ----------------------------------------------------------------------


def test_cas_loser_changes_nothing(
    db: Database, rec: Reconciler, provider: FakeProvider, clock: FakeClock
) -> None:
    order = intake(db, clock)
    provider.submit_answers.append(reduction("R1", "PROCESSING"))
    rec.process(REDUCTION, order.order_id, order.token or "")
    row = row_of(db, order.order_id)
    clock.now = row.next_poll_at or clock.now
    claim = claim_now(db, clock)[0]

    # While our query is "on the wire", another writer (here an operator) changes the row.
    def operator_acts() -> None:
        provider.hook = None
        operator.requery(db, REDUCTION, order.order_id, actor="ops:amy", why="check", now=clock())

    provider.hook = operator_acts
    provider.query_answers.append(reduction("R1", "SUCCESS"))
    rec.process(REDUCTION, order.order_id, claim.token)
    row = row_of(db, order.order_id)
    assert row.state == RState.PROCESSING  # our SUCCESS write lost the race
    assert path(db, order.order_id)[-1] == ("PROCESSING", "PROCESSING")  # only the operator's
    # The order is due again and the next poll records the truth.
    provider.query_answers.append(reduction("R1", "SUCCESS"))
    assert poll(rec, db, clock, order.order_id) == RState.SUCCESS


def test_two_writers_same_version_only_one_wins(db: Database, clock: FakeClock) -> None:
    order = intake(db, clock)
    a = row_of(db, order.order_id)
    b = row_of(db, order.order_id)
    assert cas(db, a, RState.SUBMITTED, {}, reason="writer a", now=clock())
    assert not cas(db, b, RState.SUBMITTED, {}, reason="writer b", now=clock())
    assert path(db, order.order_id) == [(None, "RECEIVED"), ("RECEIVED", "SUBMITTED")]


def test_cas_event_row_carries_every_field_and_the_loser_adds_none(
    db: Database, clock: FakeClock
) -> None:
    with db.transaction() as session:
        tracked = intake_bill(session, "B1", now=clock())
    a, b = bill_of(db, tracked.order_id), bill_of(db, tracked.order_id)
    clock.advance(1)
    assert cas(
        db,
        a,
        None,
        {"attempts": 3},
        reason="a note",
        request_id="rid-n",
        actor="ops:x",
        note=True,
        now=clock(),
    )
    assert a.version == 2 and a.attempts == 3 and a.updated_at == clock()
    # b still holds version 1: it loses, whether it moves the state or only notes.
    assert not cas(db, b, BState.NEEDS_REVIEW, {"attempts": 9}, reason="b", now=clock())
    assert not cas(db, b, None, {"attempts": 9}, reason="b", note=True, now=clock())
    stored = bill_of(db, tracked.order_id)
    assert (stored.version, stored.attempts, stored.state) == (2, 3, BState.TRACKING)
    with db.read() as session:
        events = bill_events(session, tracked.order_id)
    assert [(e.kind, e.order_id, e.from_state, e.to_state) for e in events] == [
        ("bill", tracked.order_id, None, "TRACKING"),
        ("bill", tracked.order_id, "TRACKING", "TRACKING"),
    ]
    last = events[-1]
    assert (last.reason, last.request_id, last.actor, last.at) == (
        "a note",
        "rid-n",
        "ops:x",
        clock(),
    )
    # A write without an event (a reschedule) moves only the row.
    assert cas(db, a, None, {"attempts": 4}, reason="", now=clock())
    assert bill_of(db, tracked.order_id).version == 3 and count(db, Event) == 2


def test_stale_claim_does_nothing(
    db: Database, rec: Reconciler, provider: FakeProvider, clock: FakeClock
) -> None:
    order = intake(db, clock)
    assert rec.process(REDUCTION, order.order_id, "someone-elses-token") is None
    assert provider.submits == [] and row_of(db, order.order_id).state == RState.RECEIVED


def test_missing_row_does_nothing(rec: Reconciler, provider: FakeProvider) -> None:
    assert rec.process(REDUCTION, 424242, "t") is None
    assert provider.submits == []


def test_final_states_never_change_by_the_engine(db: Database, clock: FakeClock) -> None:
    order = intake(db, clock)
    row = row_of(db, order.order_id)
    assert cas(db, row, RState.SUBMITTED, {}, reason="sending", now=clock())
    assert cas(db, row, RState.SUCCESS, {}, reason="query: SUCCESS", now=clock())
    for target in (RState.FAILED, RState.PROCESSING, RState.NEEDS_REVIEW, RState.RECEIVED):
        with pytest.raises(IllegalTransition):
            cas(db, row, target, {}, reason="no", now=clock())
    assert row_of(db, order.order_id).state == RState.SUCCESS


# -- operator actions ----------------------------------------------------------------------------


def _to_review(
    db: Database, rec: Reconciler, provider: FakeProvider, clock: FakeClock, no: str
) -> int:
    order = intake(db, clock, no)
    provider.submit_answers.append(errors.UnexpectedAnswer("?", status=418))
    rec.process(REDUCTION, order.order_id, order.token or "")
    assert row_of(db, order.order_id).state == RState.NEEDS_REVIEW
    return order.order_id


def test_operator_retry_is_recorded_and_requeries_first(
    db: Database, rec: Reconciler, provider: FakeProvider, clock: FakeClock
) -> None:
    order_id = _to_review(db, rec, provider, clock, "R1")
    clock.advance(3600)
    state = operator.retry(
        db, REDUCTION, order_id, actor="ops:li", why="provider fixed incident 42", now=clock()
    )
    assert state == RState.SUBMITTED  # it was sent: query before any re-entry
    row = row_of(db, order_id)
    assert row.attempts == 0 and row.next_poll_at == clock() and row.claim_token is None
    with db.read() as session:
        last = reduction_events(session, order_id)[-1]
    assert (last.from_state, last.to_state, last.actor) == ("NEEDS_REVIEW", "SUBMITTED", "ops:li")
    assert "provider fixed incident 42" in last.reason
    provider.query_answers.append(reduction("R1", "SUCCESS"))
    assert poll(rec, db, clock, order_id) == RState.SUCCESS


def test_operator_retry_of_never_sent_order_resubmits(
    db: Database, rec: Reconciler, provider: FakeProvider, clock: FakeClock
) -> None:
    order = intake(db, clock, amount=5)
    row = row_of(db, order.order_id)
    assert cas(db, row, RState.REJECTED, {"next_poll_at": None}, reason="x", now=clock())
    assert operator.retry(db, REDUCTION, order.order_id, actor="ops", why="w") == RState.RECEIVED


def test_final_order_needs_force_to_be_rechecked(
    db: Database, rec: Reconciler, provider: FakeProvider, clock: FakeClock
) -> None:
    order = intake(db, clock)
    provider.submit_answers.append(reduction("R1", "FAILED", fail_reason="TIME_OUT_CLOSED"))
    rec.process(REDUCTION, order.order_id, order.token or "")
    with pytest.raises(IllegalTransition, match="force"):
        operator.retry(db, REDUCTION, order.order_id, actor="ops", why="sure?")
    assert row_of(db, order.order_id).state == RState.FAILED
    assert (
        operator.retry(db, REDUCTION, order.order_id, actor="ops", why="sure?", force=True)
        == RState.SUBMITTED
    )


def test_retry_all_matching_a_filter(
    db: Database, rec: Reconciler, provider: FakeProvider, clock: FakeClock
) -> None:
    ids = [_to_review(db, rec, provider, clock, f"R{i}") for i in range(3)]
    other = intake(db, clock, "X1", mchid="1900000999")
    provider.submit_answers.append(errors.UnexpectedAnswer("?", status=418))
    rec.process(REDUCTION, other.order_id, other.token or "")
    result = operator.retry_many(
        db, REDUCTION, actor="ops:bulk", why="after outage", where={"mchid": MCHID}
    )
    assert sorted(result.retried) == sorted(ids) and result.skipped == {}
    assert row_of(db, other.order_id).state == RState.NEEDS_REVIEW
    assert {row_of(db, i).state for i in ids} == {RState.SUBMITTED}
    with db.read() as session:
        actors = {reduction_events(session, i)[-1].actor for i in ids}
    assert actors == {"ops:bulk"}


def test_requery_makes_in_flight_order_due_now_and_refuses_terminal(
    db: Database, rec: Reconciler, provider: FakeProvider, clock: FakeClock
) -> None:
    order = intake(db, clock)
    provider.submit_answers.append(reduction("R1", "PROCESSING"))
    rec.process(REDUCTION, order.order_id, order.token or "")
    assert operator.requery(db, REDUCTION, order.order_id, actor="ops", now=clock()) == "PROCESSING"
    assert [c.id for c in claim_now(db, clock)] == [order.order_id]
    done = _to_review(db, rec, provider, clock, "R2")
    with pytest.raises(IllegalTransition, match="retry"):
        operator.requery(db, REDUCTION, done, actor="ops")
    with pytest.raises(OrderNotFound):
        operator.requery(db, REDUCTION, 99999, actor="ops")


def test_operator_action_needs_an_actor(db: Database, clock: FakeClock) -> None:
    order = intake(db, clock)
    with pytest.raises(ValueError, match="actor"):
        operator.requery(db, REDUCTION, order.order_id, actor="")


# -- compensation bills --------------------------------------------------------------------------


def track(db: Database, clock: FakeClock, no: str = "B1") -> IntakeResult:
    with db.transaction() as session:
        return intake_bill(session, no, now=clock())


def poll_bill(rec: Reconciler, db: Database, clock: FakeClock, order_id: int) -> str | None:
    row = bill_of(db, order_id)
    if row.next_poll_at is not None and row.next_poll_at > clock():
        clock.now = row.next_poll_at
    claims = claim_due(db, BILL, limit=10, lease=120, now=clock())
    mine = [c for c in claims if c.id == order_id]
    assert mine
    return rec.process(BILL, order_id, mine[0].token)


def test_bill_tracked_through_its_states_to_closed(
    db: Database, rec: Reconciler, provider: FakeProvider, clock: FakeClock
) -> None:
    order = track(db, clock)
    assert track(db, clock).order_id == order.order_id  # idempotent
    provider.bill_answers.extend(
        [
            errors.NotFound("not yet", status=404, code="NOT_FOUND"),
            bill("B1", "ACCEPTED"),
            bill("B1", "ACCEPTED"),
            bill("B1", "WAIT_USER_CONFIRM"),
            bill("B1", "CLOSED", close_reason="USER_REJECTED", request_id="rid-closed"),
        ]
    )
    assert rec.process(BILL, order.order_id, order.token or "") == BState.TRACKING
    assert poll_bill(rec, db, clock, order.order_id) == BState.ACCEPTED
    assert poll_bill(rec, db, clock, order.order_id) == BState.ACCEPTED
    assert bill_of(db, order.order_id).attempts == 2
    assert poll_bill(rec, db, clock, order.order_id) == BState.WAIT_USER_CONFIRM
    assert poll_bill(rec, db, clock, order.order_id) == BState.CLOSED
    row = bill_of(db, order.order_id)
    assert row.close_reason == "USER_REJECTED" and row.close_time is not None
    assert row.amount == 500 and row.bill_id == "BB1" and row.next_poll_at is None
    with db.read() as session:
        steps = [(e.from_state, e.to_state) for e in bill_events(session, order.order_id)]
    assert steps == [
        (None, "TRACKING"),
        ("TRACKING", "ACCEPTED"),
        ("ACCEPTED", "WAIT_USER_CONFIRM"),
        ("WAIT_USER_CONFIRM", "CLOSED"),
    ]


def test_bill_cancelled_through_canceling(
    db: Database, rec: Reconciler, provider: FakeProvider, clock: FakeClock
) -> None:
    order = track(db, clock)
    provider.bill_answers.extend(
        [bill("B1", "WAIT_USER_CONFIRM"), bill("B1", "CANCELING"), bill("B1", "CANCELLED")]
    )
    assert rec.process(BILL, order.order_id, order.token or "") == BState.WAIT_USER_CONFIRM
    assert poll_bill(rec, db, clock, order.order_id) == BState.CANCELING
    assert poll_bill(rec, db, clock, order.order_id) == BState.CANCELLED
    with db.read() as session:
        steps = [(e.from_state, e.to_state) for e in bill_events(session, order.order_id)]
    assert steps[-2:] == [("WAIT_USER_CONFIRM", "CANCELING"), ("CANCELING", "CANCELLED")]


def test_bill_unknown_state_is_asked_again(
    db: Database, rec: Reconciler, provider: FakeProvider, clock: FakeClock
) -> None:
    order = track(db, clock)
    provider.bill_answers.append(bill("B1", "REFUNDED"))
    assert rec.process(BILL, order.order_id, order.token or "") == BState.TRACKING
    row = bill_of(db, order.order_id)
    assert "REFUNDED" in (row.last_error or "") and row.attempts == 1
    assert row.provider_state is None  # nothing recorded from an answer we cannot read
    provider.bill_answers.append(bill("B1", "SUCCESS"))
    assert poll_bill(rec, db, clock, order.order_id) == BState.SUCCESS


@pytest.mark.parametrize("final", ["SUCCESS", "CANCELLED"])
def test_bill_final_states(
    db: Database, rec: Reconciler, provider: FakeProvider, clock: FakeClock, final: str
) -> None:
    order = track(db, clock)
    provider.bill_answers.append(bill("B1", final))
    assert rec.process(BILL, order.order_id, order.token or "") == final
    assert claim_due(db, BILL, limit=10, lease=60, now=clock.advance(days=1)) == []


def test_bill_unexpected_answer_needs_review_and_operator_retry(
    db: Database, rec: Reconciler, provider: FakeProvider, clock: FakeClock
) -> None:
    order = track(db, clock)
    provider.bill_answers.append(errors.Rejected("no auth", status=403, code="NO_AUTH"))
    assert rec.process(BILL, order.order_id, order.token or "") == BState.NEEDS_REVIEW
    assert operator.retry(db, BILL, order.order_id, actor="ops", why="granted") == BState.TRACKING
    result = operator.retry_many(db, BILL, actor="ops", why="none left")
    assert result.retried == []
    with pytest.raises(IllegalTransition):
        operator.retry(db, BILL, order.order_id, actor="ops", why="again")  # in flight


def test_a_row_changed_outside_the_engine_loses_its_compare_and_set(
    db: Database, clock: FakeClock
) -> None:
    """The compare-and-set checks the state too, not only the version: a row whose state was
    changed without a version bump (by hand, outside the engine) is not written over."""
    order = intake(db, clock)
    row = row_of(db, order.order_id)
    with db.begin() as conn:
        conn.execute(
            update(SpecialReduction)
            .where(SpecialReduction.id == order.order_id)
            .values(state=RState.SUBMITTED)
        )
    assert not cas(db, row, RState.REJECTED, {}, reason="stale", now=clock())
    assert row_of(db, order.order_id).state == RState.SUBMITTED
    assert path(db, order.order_id) == [(None, "RECEIVED")]

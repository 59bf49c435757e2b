"""The four-eyes rules, pure (domain/resolution.py): table-driven."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.fixtures_db import bill, reduction
from wxrecon.domain import resolution as rules
from wxrecon.domain.kinds import BILL, REDUCTION
from wxrecon.domain.resolution import ResolutionRefused
from wxrecon.domain.states import BState, RState
from wxrecon.store.rows import BillRow, ReductionRow
from wxrecon.wechatpay import errors

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
EVIDENCE = "ticket OPS-1: merchant platform shows it applied"


def rrow(state: str = RState.NEEDS_REVIEW, **kw: Any) -> ReductionRow:
    base: dict[str, Any] = dict(
        id=7, state=state, version=3, attempts=0, next_poll_at=None, claimed_until=None,
        claim_token=None, last_error=None, last_request_id=None, created_at=NOW,
        updated_at=NOW, mchid="1900000001", bal_account_no="6222", out_request_no="R7",
        reduction_type="FINANCIAL_PENALTY", amount=1500, reason=None, provider_state=None,
        fail_reason=None, quota_change_no=None, success_time=None, fail_time=None,
        submitted_at=NOW, last_submit_at=NOW, refusal="PARAM_ERROR",
    )  # fmt: skip
    base.update(kw)
    return ReductionRow(**base)


def brow(state: str = BState.NEEDS_REVIEW, amount: int | None = None) -> BillRow:
    return BillRow(
        id=8, state=state, version=2, attempts=0, next_poll_at=None, claimed_until=None,
        claim_token=None, last_error=None, last_request_id=None, created_at=NOW,
        updated_at=NOW, out_bill_no="B8", provider_state=None, amount=amount, bill_id=None,
        sp_mchid=None, sponsor_mchid=None, transfer_remark=None, accept_time=None,
        success_time=None, close_reason=None, close_time=None,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "state", "expected"),
    [
        (REDUCTION, "NEEDS_REVIEW", {"SUCCESS", "FAILED"}),
        (BILL, "NEEDS_REVIEW", {"SUCCESS", "CLOSED", "CANCELLED"}),
        *[(REDUCTION, s, set()) for s in RState if s != RState.NEEDS_REVIEW],
        *[(BILL, s, set()) for s in BState if s != BState.NEEDS_REVIEW],
    ],
)
def test_targets(kind: Any, state: str, expected: set[str]) -> None:
    assert rules.targets(kind, state) == expected
    # Never an automatic transition: only the resolution path leaves review for a final state.
    assert not kind.transitions[state] & kind.final or state != kind.review


@pytest.mark.parametrize(
    ("row", "target", "evidence", "kw", "refused"),
    [
        (rrow(), "SUCCESS", EVIDENCE, {}, None),
        (rrow(), "FAILED", EVIDENCE, {}, None),
        (rrow(), "SUCCESS", EVIDENCE, {"amount": 1500, "quota_change_no": "Q1"}, None),
        (rrow(), "SUCCESS", EVIDENCE, {"amount": 1499}, "another order"),
        (rrow(), "SUCCESS", EVIDENCE, {"amount": 0}, "positive integer"),
        (rrow(), "SUCCESS", EVIDENCE, {"amount": True}, "positive integer"),
        (rrow(), "FAILED", EVIDENCE, {"amount": 1500}, "SUCCESS only"),
        (rrow(), "SUCCESS", EVIDENCE, {"quota_change_no": "x" * 65}, "quota_change_no"),
        (rrow(), "REJECTED", EVIDENCE, {}, "can be resolved to FAILED, SUCCESS"),
        (rrow(), None, EVIDENCE, {}, "not \\(none\\)"),
        (rrow("PROCESSING"), "SUCCESS", EVIDENCE, {}, "only an order in review"),
        (rrow("SUCCESS"), "FAILED", EVIDENCE, {}, "only an order in review"),
        (rrow(), "SUCCESS", "", {}, "evidence is required"),
        (rrow(), "SUCCESS", "  nine 789  ", {}, "at least 10"),
        (rrow(), "SUCCESS", None, {}, "evidence is required"),
        (rrow(), "SUCCESS", "y" * 2001, {}, "too long"),
        (brow(), "CLOSED", EVIDENCE, {}, None),
        (brow(), "FAILED", EVIDENCE, {}, "CANCELLED, CLOSED, SUCCESS"),
        (brow(), "SUCCESS", EVIDENCE, {}, "no known amount"),
        (brow(), "SUCCESS", EVIDENCE, {"amount": 300}, None),
        (brow(amount=300), "SUCCESS", EVIDENCE, {"amount": 301}, "another order"),
        (brow(), "SUCCESS", EVIDENCE, {"amount": 300, "quota_change_no": "Q"}, "no quota"),
    ],
)
def test_propose(row: Any, target: Any, evidence: Any, kw: dict[str, Any], refused: Any) -> None:
    kind = REDUCTION if isinstance(row, ReductionRow) else BILL
    if refused:
        with pytest.raises(ResolutionRefused, match=refused):
            rules.propose(kind, row, target, evidence, **kw)
        return
    p = rules.propose(kind, row, target, evidence, **kw)
    assert p.target == target and p.evidence == EVIDENCE
    if target == "SUCCESS":
        assert p.amount == (row.amount if row.amount is not None else kw["amount"])
    else:
        assert p.amount is None and p.quota_change_no is None


def test_evidence_is_one_line() -> None:
    assert rules.check_evidence("  two\nlines   of\ttext ") == "two lines of text"


@pytest.mark.parametrize(
    ("outcome", "said", "final"),
    [
        (reduction("R7", "SUCCESS", amount=1500, mchid="1900000001"), "SUCCESS", "SUCCESS"),
        (reduction("R7", "FAILED", fail_reason="OTHER", mchid="1900000001"), "FAILED", "FAILED"),
        (reduction("R7", "PROCESSING", mchid="1900000001"), "PROCESSING", None),
        (reduction("R7", "SUCCESS", amount=9, mchid="1900000001"), "differs in amount", None),
        (reduction("R7", "FAILED", mchid="1900000001"), "lacks", None),
        (errors.NotFound("no such order", request_id="rid-1"), "NotFound", None),
        (errors.UnexpectedAnswer("odd", request_id="rid-2"), "UnexpectedAnswer", None),
    ],
)
def test_verdict(outcome: Any, said: str, final: str | None) -> None:
    row = rrow()
    v = rules.verdict(REDUCTION, row, outcome)
    assert said in v.said and v.request_id
    assert (v.write.to if v.write else None) == final
    if v.write is not None:
        assert v.write.values["next_poll_at"] is None and "resolve time" in v.write.reason


def test_verdict_of_a_bill() -> None:
    v = rules.verdict(BILL, brow(amount=500), bill("B8", "CLOSED", close_reason="X"))
    assert v.write is not None and v.write.to == "CLOSED"
    assert rules.verdict(BILL, brow(), bill("B8", "ACCEPTED")).write is None


@pytest.mark.parametrize(
    "exc",
    [
        errors.NetworkError("reset"),
        errors.ProviderBusy("500", request_id="rid"),
        errors.UnverifiedResponse("bad signature", request_id="rid"),
        errors.Throttled(1.5, "query"),
        errors.OutcomeUnknown(errors.NetworkError("reset")),
        errors.NotFound("no request id"),
    ],
)
def test_no_answer_refuses(exc: Any) -> None:
    with pytest.raises(ResolutionRefused, match="could not be asked"):
        rules.verdict(REDUCTION, rrow(), exc)


@dataclass
class Res:
    id: int = 1
    status: str = "pending"
    proposed_by: str = "Alice"
    order_version: int = 3
    target_state: str = "SUCCESS"
    amount: int | None = 1500
    quota_change_no: str | None = None
    evidence: str = EVIDENCE
    query_request_id: str | None = "rid-q"
    query_said: str = "PROCESSING"


@pytest.mark.parametrize(
    ("res", "row", "approver", "refused"),
    [
        (Res(), rrow(), "bob", None),
        (Res(), rrow(), "alice", "different person"),
        (Res(), rrow(), " ALICE", "different person"),
        (Res(status="withdrawn"), rrow(), "bob", "not pending"),
        (Res(status="approved"), rrow(), "bob", "not pending"),
        (Res(order_version=2), rrow(), "bob", "superseded"),
        (Res(), rrow("SUBMITTED"), "bob", "superseded"),
    ],
)
def test_may_approve(res: Res, row: Any, approver: str, refused: str | None) -> None:
    if refused:
        with pytest.raises(ResolutionRefused, match=refused):
            rules.may_approve(REDUCTION, res, row, approver)
    else:
        rules.may_approve(REDUCTION, res, row, approver)


@pytest.mark.parametrize(
    ("res", "values"),
    [
        (Res(), {"amount": 1500}),
        (Res(quota_change_no="Q9"), {"amount": 1500, "quota_change_no": "Q9"}),
        (replace(Res(), target_state="FAILED", amount=None), {}),
    ],
)
def test_approval_write(res: Res, values: dict[str, Any]) -> None:
    write = rules.approval(REDUCTION, res, rrow(), "bob")
    assert write.to == res.target_state and write.request_id == "rid-q"
    assert {k: write.values[k] for k in values} == values
    assert "amount" in write.values or res.target_state != "SUCCESS"
    assert write.values["refusal"] is None and write.values["claim_token"] is None
    for text in ("manual resolution #1", "proposed by Alice", "approved by bob", EVIDENCE):
        assert text in write.reason

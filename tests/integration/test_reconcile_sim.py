"""The engine against the simulator (a faithful fake provider over real HTTP, signed answers,
injected faults), on SQLite and PostgreSQL: the simulator's ground truth is the referee."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from tests.fixtures_db import EngineSettings
from tests.fixtures_sim import SIM_BAL_ACCOUNT_NO, SIM_BALANCE, SIM_MCHID
from wxrecon.domain.kinds import BILL, REDUCTION
from wxrecon.engine import operator
from wxrecon.engine.intake import intake_bill, intake_reduction
from wxrecon.engine.steps import Reconciler
from wxrecon.engine.sweep import claim_due
from wxrecon.simulator import AdminClient
from wxrecon.store.db import Database
from wxrecon.store.models import CompensationBill, SpecialReduction, utcnow
from wxrecon.store.reads import reduction_events
from wxrecon.wechatpay import WeChatPayClient, errors
from wxrecon.wechatpay.resources import SpecialReductionRequest


def request(no: str, amount: int = 1000) -> SpecialReductionRequest:
    return SpecialReductionRequest.create(
        mchid=SIM_MCHID,
        bal_account_no=SIM_BAL_ACCOUNT_NO,
        out_request_no=no,
        reduction_type="FINANCIAL_PENALTY",
        amount=amount,
        reason="sim test",
    )


@pytest.fixture
def rec(db: Database, sim_client: WeChatPayClient) -> Reconciler:
    return Reconciler(db, sim_client, EngineSettings(poll_schedule=[0.05], reentry_grace=0.0))


def submit(db: Database, rec: Reconciler, no: str, amount: int = 1000) -> int:
    with db.transaction() as session:
        order = intake_reduction(session, request(no, amount))
    assert order.token is not None
    rec.process(REDUCTION, order.order_id, order.token)
    return order.order_id


def settle(
    db: Database, rec: Reconciler, model: Any = SpecialReduction, timeout: float = 15
) -> list[Any]:
    """Run sweeps (with every row due) until no order is in flight."""
    kind = REDUCTION if model is SpecialReduction else BILL
    active = kind.active
    deadline = time.monotonic() + timeout
    while True:
        with db.read() as session:
            rows = list(session.execute(select(model)).scalars())
        if all(r.state not in active for r in rows):
            return rows
        assert time.monotonic() < deadline, [(r.id, r.state, r.last_error) for r in rows]
        for c in claim_due(db, kind, limit=50, lease=30, now=utcnow() + timedelta(hours=1)):
            rec.process(kind, c.id, c.token)
        time.sleep(0.05)


def test_order_goes_through_and_is_applied_once(
    db: Database, rec: Reconciler, sim_admin: AdminClient
) -> None:
    submit(db, rec, "SIM1", 1500)
    [row] = settle(db, rec)
    truth = sim_admin.reduction("SIM1")
    assert truth is not None
    assert row.state == truth["state"] == "SUCCESS"
    assert row.quota_change_no == truth["quota_change_no"] and row.success_time is not None
    assert truth["applied_count"] == 1 and truth["mismatched_param_submits"] == 0
    assert sim_admin.balance(SIM_MCHID, SIM_BAL_ACCOUNT_NO) == SIM_BALANCE - 1500


def test_not_enough_is_confirmed_by_a_signed_query(
    db: Database, rec: Reconciler, sim_admin: AdminClient
) -> None:
    order_id = submit(db, rec, "SIMBIG", SIM_BALANCE + 1)
    [row] = settle(db, rec)
    assert row.state == "FAILED" and row.fail_reason == "BALANCE_NOT_ENOUGH"
    with db.read() as session:
        last = reduction_events(session, order_id)[-1]
    assert "NOT_ENOUGH" in last.reason and last.request_id  # the signed query's Request-ID
    assert sim_admin.stats()["requests"]["query_reduction"]
    assert sim_admin.balance(SIM_MCHID, SIM_BAL_ACCOUNT_NO) == SIM_BALANCE


@pytest.mark.parametrize(
    "fault", ["apply_then_500", "apply_then_reset", "bad_signature", "malformed_json"]
)
def test_applied_but_unanswered_post_is_reconciled_not_failed(
    db: Database, rec: Reconciler, sim_admin: AdminClient, fault: str
) -> None:
    sim_admin.add_fault(fault, endpoint="submit_reduction", times=2)  # both in-call tries
    order_id = submit(db, rec, "SIMLOST", 700)
    with db.read() as session:
        assert session.get(SpecialReduction, order_id).state == "SUBMITTED"  # type: ignore[union-attr]
    [row] = settle(db, rec)
    truth = sim_admin.reduction("SIMLOST")
    assert truth is not None and row.state == truth["state"] == "SUCCESS"
    assert truth["applied_count"] == 1 and truth["mismatched_param_submits"] == 0


def test_post_that_never_arrived_is_reentered(
    db: Database, rec: Reconciler, sim_admin: AdminClient
) -> None:
    # Both in-call attempts fail before the provider sees them: outcome unknown; the query
    # finds nothing; after the grace period the same POST is re-entered.
    sim_admin.add_fault("system_error", endpoint="submit_reduction", times=2)
    order_id = submit(db, rec, "SIMNEVER", 900)
    [row] = settle(db, rec)
    truth = sim_admin.reduction("SIMNEVER")
    assert truth is not None and row.state == truth["state"] == "SUCCESS"
    assert truth["applied_count"] == 1 and truth["submit_count"] == 1
    with db.read() as session:
        reasons = [e.reason for e in reduction_events(session, order_id)]
    assert any("re-entering" in r for r in reasons)


def test_already_exists_is_confirmed_by_a_signed_query(
    db: Database, rec: Reconciler, sim_admin: AdminClient, sim_client: WeChatPayClient
) -> None:
    # The provider already closed this order (sent before, e.g. by a lost earlier run); our
    # POST is answered 400 ALREADY_EXISTS, and only the signed query decides.
    with pytest.raises(errors.NotEnough):
        sim_client.submit_special_reduction(request("SIMCLOSED", SIM_BALANCE + 5))
    order_id = submit(db, rec, "SIMCLOSED", SIM_BALANCE + 5)
    [row] = settle(db, rec)
    assert row.state == "FAILED" and row.fail_reason == "BALANCE_NOT_ENOUGH"
    with db.read() as session:
        last = reduction_events(session, order_id)[-1]
    assert "ALREADY_EXISTS" in last.reason
    # An operator's forced re-check queries again and lands on the same answer.
    operator.retry(db, REDUCTION, order_id, actor="ops", why="double-check", force=True)
    [row] = settle(db, rec)
    assert row.state == "FAILED"
    assert sim_admin.reduction("SIMCLOSED")["mismatched_param_submits"] == 0  # type: ignore[index]


def test_many_orders_match_the_ground_truth(
    db: Database, rec: Reconciler, sim_admin: AdminClient
) -> None:
    sim_admin.set_faults("system_error=0.1", "apply_then_500=0.1", "bad_signature=0.1")
    sim_admin.seed_ledger(SIM_MCHID, SIM_BAL_ACCOUNT_NO, 20_000)
    for i in range(30):
        submit(db, rec, f"SIMMANY{i}", 1000 + i)
    rows = settle(db, rec, timeout=30)
    truth = {t["out_request_no"]: t for t in sim_admin.reductions()}
    assert {r.out_request_no: (r.state, r.fail_reason) for r in rows} == {
        k: (t["state"], t["fail_reason"]) for k, t in truth.items()
    }
    assert all(
        t["applied_count"] <= 1 and t["mismatched_param_submits"] == 0 for t in truth.values()
    )
    applied = sum(r.amount for r in rows if r.state == "SUCCESS")
    assert sim_admin.balance(SIM_MCHID, SIM_BAL_ACCOUNT_NO) == 20_000 - applied


def test_bills_reach_their_final_states(
    db: Database, rec: Reconciler, sim_admin: AdminClient
) -> None:
    sim_admin.seed_bill("SIMB1", 300, "SUCCESS")
    sim_admin.seed_bill("SIMB2", 400, "CLOSED", close_reason="USER_REJECTED")
    sim_admin.seed_bill("SIMB3", 500, "CANCELLED")
    with db.transaction() as session:
        for no in ("SIMB1", "SIMB2", "SIMB3"):
            intake_bill(session, no)
    rows = settle(db, rec, CompensationBill)
    got = {r.out_bill_no: (r.state, r.close_reason, r.amount) for r in rows}
    assert got == {
        "SIMB1": ("SUCCESS", None, 300),
        "SIMB2": ("CLOSED", "USER_REJECTED", 400),
        "SIMB3": ("CANCELLED", None, 500),
    }
    assert all(r.bill_id for r in rows)

"""Our client against the simulator: every endpoint and every business answer."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fixtures_sim import (
    SIM_BAL_ACCOUNT_NO,
    SIM_BALANCE,
    SIM_MCHID,
    make_sim_client,
    make_sim_dir,
    start_simulator,
    wait_for,
)
from tests.fixtures_sim import sim_reduction as reduction
from tests.fixtures_sim import wait_settled as settled
from wxrecon.simulator import AdminClient, LedgerSeed, SimDir, Simulator
from wxrecon.wechatpay import (
    AlreadyExists,
    BillState,
    FailReason,
    NotEnough,
    NotFound,
    ReductionState,
    Rejected,
    WeChatPayClient,
)

# -- special reductions ---------------------------------------------------------------------


def test_submit_answers_processing_with_the_account_encrypted_for_the_merchant(
    sim_client: WeChatPayClient, sim_admin: AdminClient
) -> None:
    sim_admin.set_config(settle_delay_min=3600, settle_delay_max=3600)  # stays PROCESSING
    answer = sim_client.submit_special_reduction(reduction("R1", 250))
    assert answer.state is ReductionState.PROCESSING
    assert answer.out_request_no == "R1"
    assert answer.mchid == SIM_MCHID
    assert answer.amount == 250
    assert answer.reduction_type == "FINANCIAL_PENALTY"
    assert answer.bal_account_no == SIM_BAL_ACCOUNT_NO  # decrypted with the merchant key
    assert answer.request_id
    balance = sim_client.query_balance(mchid=SIM_MCHID, bal_account_no=SIM_BAL_ACCOUNT_NO)
    assert balance.balance == SIM_BALANCE
    assert balance.in_transit_reduction_exist is True
    queried = sim_client.query_special_reduction(
        "R1", mchid=SIM_MCHID, bal_account_no=SIM_BAL_ACCOUNT_NO
    )
    assert queried.state is ReductionState.PROCESSING
    # The query page returns amount and type only on SUCCESS.
    assert queried.amount is None and queried.reduction_type is None


def test_reduction_settles_to_success_and_debits_once(
    sim_client: WeChatPayClient, sim_admin: AdminClient
) -> None:
    sim_client.submit_special_reduction(reduction("R2", 1234))
    final = settled(sim_client, "R2")
    assert final.state is ReductionState.SUCCESS
    assert final.quota_change_no
    assert final.success_time is not None and final.success_time.utcoffset() is not None
    assert final.amount == 1234 and final.reason == "case 2026-001"
    assert final.fail_reason is None
    balance = sim_client.query_balance(mchid=SIM_MCHID, bal_account_no=SIM_BAL_ACCOUNT_NO)
    assert balance.balance == SIM_BALANCE - 1234
    assert balance.in_transit_reduction_exist is False
    truth = sim_admin.reduction("R2")
    assert truth is not None
    assert (truth["state"], truth["applied_count"], truth["submit_count"]) == ("SUCCESS", 1, 1)
    assert truth["params"]["bal_account_no"] != SIM_BAL_ACCOUNT_NO  # masked


def test_reentry_with_same_parameters_returns_the_same_order_and_never_debits_twice(
    sim_client: WeChatPayClient, sim_admin: AdminClient
) -> None:
    first = sim_client.submit_special_reduction(reduction("R3", 500))
    again = sim_client.submit_special_reduction(reduction("R3", 500))
    assert again.out_request_no == first.out_request_no
    final = settled(sim_client, "R3")
    assert final.state is ReductionState.SUCCESS
    after = sim_client.submit_special_reduction(reduction("R3", 500))
    assert after.state is ReductionState.SUCCESS
    assert after.quota_change_no == final.quota_change_no
    truth = sim_admin.reduction("R3")
    assert truth is not None
    assert truth["applied_count"] == 1 and truth["submit_count"] == 3
    assert sim_admin.balance(SIM_MCHID, SIM_BAL_ACCOUNT_NO) == SIM_BALANCE - 500


@pytest.mark.parametrize(
    "change",
    [
        {"amount": 501},
        {"reduction_type": "JUDICIAL_DEDUCTION"},
        {"reason": "another"},
        {"bal_account_no": "6222000099998888"},
    ],
)
def test_reentry_with_different_parameters_is_refused(
    sim_client: WeChatPayClient, sim_admin: AdminClient, change: dict[str, Any]
) -> None:
    sim_admin.seed_ledger(SIM_MCHID, "6222000099998888", 10_000)
    sim_client.submit_special_reduction(reduction("R4", 500))
    with pytest.raises(Rejected) as caught:
        sim_client.submit_special_reduction(reduction("R4", **{"amount": 500, **change}))
    assert caught.value.status == 400 and caught.value.code == "INVALID_REQUEST"
    truth = sim_admin.reduction("R4")
    assert truth is not None
    assert truth["mismatched_param_submits"] == 1 and truth["submit_count"] == 2
    assert truth["amount"] == 500 and truth["params"]["reason"] == "case 2026-001"
    assert settled(sim_client, "R4").state is ReductionState.SUCCESS
    assert sim_admin.balance(SIM_MCHID, SIM_BAL_ACCOUNT_NO) == SIM_BALANCE - 500


def test_not_enough_closes_the_order_and_reentry_answers_already_exists(
    sim_client: WeChatPayClient, sim_admin: AdminClient
) -> None:
    with pytest.raises(NotEnough) as caught:
        sim_client.submit_special_reduction(reduction("R5", SIM_BALANCE + 1))
    assert (caught.value.status, caught.value.code) == (403, "NOT_ENOUGH")
    assert caught.value.request_id
    with pytest.raises(AlreadyExists) as again:
        sim_client.submit_special_reduction(reduction("R5", SIM_BALANCE + 1))
    assert (again.value.status, again.value.code) == (400, "ALREADY_EXISTS")
    # Even once the balance would suffice, the closed order stays closed.
    sim_admin.seed_ledger(SIM_MCHID, SIM_BAL_ACCOUNT_NO, SIM_BALANCE * 2)
    with pytest.raises(AlreadyExists):
        sim_client.submit_special_reduction(reduction("R5", SIM_BALANCE + 1))
    queried = sim_client.query_special_reduction(
        "R5", mchid=SIM_MCHID, bal_account_no=SIM_BAL_ACCOUNT_NO
    )
    assert queried.state is ReductionState.FAILED
    assert queried.fail_reason is FailReason.BALANCE_NOT_ENOUGH
    assert queried.fail_time is not None
    truth = sim_admin.reduction("R5")
    assert truth is not None
    assert truth["applied_count"] == 0 and truth["closed_at_submit"] is True
    assert sim_admin.balance(SIM_MCHID, SIM_BAL_ACCOUNT_NO) == SIM_BALANCE * 2


def test_balance_spent_while_processing_fails_the_order_at_settlement(
    sim_client: WeChatPayClient, sim_admin: AdminClient
) -> None:
    sim_admin.set_config(settle_delay_min=0.3, settle_delay_max=0.3)
    sim_client.submit_special_reduction(reduction("R6", 900))
    sim_admin.seed_ledger(SIM_MCHID, SIM_BAL_ACCOUNT_NO, 100)
    final = settled(sim_client, "R6")
    assert final.state is ReductionState.FAILED
    assert final.fail_reason is FailReason.BALANCE_NOT_ENOUGH
    assert final.quota_change_no is None
    assert sim_admin.balance(SIM_MCHID, SIM_BAL_ACCOUNT_NO) == 100
    with pytest.raises(AlreadyExists):  # a closed order is not re-opened by a re-entry
        sim_client.submit_special_reduction(reduction("R6", 900))


@pytest.mark.parametrize("reason", ["TIME_OUT_CLOSED", "RECEIPT_NOT_EXIST", "SOMETHING_NEW"])
def test_configured_failures_carry_their_fail_reason(
    sim_client: WeChatPayClient, sim_admin: AdminClient, reason: str
) -> None:
    sim_admin.set_config(fail_rate=1.0, fail_reason=reason)
    sim_client.submit_special_reduction(reduction("R7", 10))
    final = settled(sim_client, "R7")
    assert final.state is ReductionState.FAILED
    assert final.fail_reason == reason
    assert sim_admin.balance(SIM_MCHID, SIM_BAL_ACCOUNT_NO) == SIM_BALANCE


def test_in_transit_is_true_while_any_reduction_of_the_ledger_is_processing(
    sim_client: WeChatPayClient, sim_admin: AdminClient
) -> None:
    sim_admin.seed_ledger(SIM_MCHID, "6222000033334444", 1000)
    sim_admin.set_config(settle_delay_min=3600, settle_delay_max=3600)
    sim_client.submit_special_reduction(reduction("R8", 10))
    other = sim_client.query_balance(mchid=SIM_MCHID, bal_account_no="6222000033334444")
    assert other.in_transit_reduction_exist is False and other.balance == 1000
    ledger = sim_admin.ledger(SIM_MCHID, SIM_BAL_ACCOUNT_NO)
    assert ledger is not None and ledger["in_transit_reduction_exist"] is True


def test_unknown_order_and_wrong_ledger_are_not_found(
    sim_client: WeChatPayClient, sim_admin: AdminClient
) -> None:
    with pytest.raises(NotFound) as caught:
        sim_client.query_special_reduction(
            "NOSUCHORDER", mchid=SIM_MCHID, bal_account_no=SIM_BAL_ACCOUNT_NO
        )
    assert (caught.value.status, caught.value.code) == (404, "NOT_FOUND")
    sim_client.submit_special_reduction(reduction("R9", 10))
    sim_admin.seed_ledger(SIM_MCHID, "6222000055556666", 10)
    with pytest.raises(NotFound):
        sim_client.query_special_reduction("R9", mchid=SIM_MCHID, bal_account_no="6222000055556666")


def test_unknown_ledger_is_refused_on_submit_and_not_found_on_balance(
    sim_client: WeChatPayClient, sim_admin: AdminClient
) -> None:
    with pytest.raises(Rejected) as caught:
        sim_client.submit_special_reduction(reduction("R10", bal_account_no="NOLEDGER01"))
    assert caught.value.code == "PARAM_ERROR"
    assert caught.value.detail["field"] == "bal_account_no"
    assert sim_admin.reduction("R10") is None
    with pytest.raises(NotFound):
        sim_client.query_balance(mchid=SIM_MCHID, bal_account_no="NOLEDGER01")


def test_reentry_after_the_31_day_window_is_refused(
    sim_client: WeChatPayClient, sim_admin: AdminClient
) -> None:
    sim_client.submit_special_reduction(reduction("R11", 10))
    sim_client.submit_special_reduction(reduction("R11", 10))  # inside the window: fine
    sim_admin.advance_clock(31 * 86400 + 60)
    with pytest.raises(Rejected) as caught:
        sim_client.submit_special_reduction(reduction("R11", 10))
    assert caught.value.code == "INVALID_REQUEST"
    settled(sim_client, "R11")
    truth = sim_admin.reduction("R11")
    assert truth is not None and truth["applied_count"] == 1


def test_ledgers_of_other_target_merchants(tmp_path: Any) -> None:
    other = "1900000002"
    sim_dir: SimDir = make_sim_dir(
        tmp_path / "sim",
        ledgers=[LedgerSeed(SIM_MCHID, SIM_BAL_ACCOUNT_NO, 50), LedgerSeed(other, "ACC2", 70)],
    )
    sim: Simulator = start_simulator(sim_dir)
    try:
        with make_sim_client(sim) as client:
            assert client.query_balance(mchid=other, bal_account_no="ACC2").balance == 70
            # The same account number under another mchid is another (unknown) ledger.
            with pytest.raises(NotFound):
                client.query_balance(mchid=other, bal_account_no=SIM_BAL_ACCOUNT_NO)
            client.submit_special_reduction(reduction("X1", 70, mchid=other, bal_account_no="ACC2"))
            with pytest.raises(NotFound):  # orders belong to their target mchid
                client.query_special_reduction(
                    "X1", mchid=SIM_MCHID, bal_account_no=SIM_BAL_ACCOUNT_NO
                )
    finally:
        sim.stop()


# -- compensation bills ---------------------------------------------------------------------


def test_bill_moves_accepted_wait_user_confirm_success(
    sim_client: WeChatPayClient, sim_admin: AdminClient
) -> None:
    sim_admin.seed_bill(
        "B1",
        10_000,
        "SUCCESS",
        confirm_after=0.1,
        final_after=0.3,
        transfer_remark="late delivery",
        sponsor_mchid="1900000109",
    )
    seen: list[BillState] = []

    def probe() -> Any:
        bill = sim_client.query_compensation_bill("B1")
        if not seen or seen[-1] != bill.state:
            seen.append(bill.state)
        return bill

    final = wait_for(probe, lambda b: b.state.final)
    assert seen[-1] is BillState.SUCCESS
    order = ["ACCEPTED", "WAIT_USER_CONFIRM", "SUCCESS"]
    assert [order.index(s) for s in seen] == sorted(order.index(s) for s in seen)
    assert final.amount == 10_000 and final.out_bill_no == "B1"
    assert final.sp_mchid == SIM_MCHID and final.sponsor_mchid == "1900000109"
    assert final.transfer_remark == "late delivery"
    assert final.bill_id and final.accept_time is not None and final.success_time is not None
    assert final.success_time >= final.accept_time
    assert final.close_info is None


def test_bill_closed_carries_close_info(
    sim_client: WeChatPayClient, sim_admin: AdminClient
) -> None:
    sim_admin.seed_bill("B2", 300, "CLOSED", confirm_after=0, final_after=0)
    bill = sim_client.query_compensation_bill("B2")
    assert bill.state is BillState.CLOSED
    assert bill.close_info is not None and bill.close_info.close_reason == "NOT_ENOUGH"
    assert bill.close_info.close_time is not None and bill.success_time is None
    sim_admin.seed_bill(
        "B3", 300, "CLOSED", close_reason="TRANSFER_FAILED", confirm_after=0, final_after=0
    )
    other = sim_client.query_compensation_bill("B3")
    assert other.close_info is not None and other.close_info.close_reason == "TRANSFER_FAILED"


def test_bill_cancelled_and_in_flight_states(
    sim_client: WeChatPayClient, sim_admin: AdminClient
) -> None:
    sim_admin.seed_bill("B4", 300, "CANCELLED", confirm_after=0, final_after=0)
    assert sim_client.query_compensation_bill("B4").state is BillState.CANCELLED
    sim_admin.seed_bill("B5", 300, "SUCCESS", confirm_after=0, final_after=3600)
    assert sim_client.query_compensation_bill("B5").state is BillState.WAIT_USER_CONFIRM
    sim_admin.seed_bill("B6", 300, "SUCCESS", confirm_after=3600, final_after=3600)
    assert sim_client.query_compensation_bill("B6").state is BillState.ACCEPTED
    sim_admin.seed_bill("B7", 300, states=[["ACCEPTED", 0], ["CANCELING", 0]])
    assert sim_client.query_compensation_bill("B7").state is BillState.CANCELING
    truth = sim_admin.bill("B4")
    assert truth is not None and truth["final"] is True and truth["state"] == "CANCELLED"


def test_unknown_bill_is_not_found(sim_client: WeChatPayClient) -> None:
    with pytest.raises(NotFound) as caught:
        sim_client.query_compensation_bill("NOSUCHBILL")
    assert (caught.value.status, caught.value.code) == (404, "NOT_FOUND")


def test_bills_of_another_platform_merchant_are_invisible(
    sim_client: WeChatPayClient, sim_admin: AdminClient
) -> None:
    sim_admin.seed_bill("B8", 300, sp_mchid="1900000999")
    with pytest.raises(NotFound):
        sim_client.query_compensation_bill("B8")


# -- the books on their own -------------------------------------------------------------------


def test_books_survive_a_dump_and_load_mid_settlement() -> None:
    import json as _json

    from wxrecon.simulator.state import Books, BusinessConfig, ReductionParams

    books = Books(BusinessConfig(settle_delay_min=10, settle_delay_max=10), seed=1)
    books.set_ledger("1", "ACC", 100)
    params = ReductionParams("1", "ACC", "O1", "FINANCIAL_PENALTY", 60, None)
    assert books.submit(1000.0, params).state == "PROCESSING"
    books.seed_bill(1000.0, {"out_bill_no": "B1", "amount": 5, "outcome": "CLOSED"}, "1")
    restored = Books(BusinessConfig())
    restored.load(_json.loads(_json.dumps(books.dump())))
    assert restored.balance(1005.0, "1", "ACC") == {
        "in_transit_reduction_exist": True,
        "balance": 100,
    }
    assert restored.query(1011.0, "1", "ACC", "O1").state == "SUCCESS"
    assert restored.balance(1011.0, "1", "ACC") == {
        "in_transit_reduction_exist": False,
        "balance": 40,
    }
    [truth] = restored.reductions(1011.0)
    assert truth["applied_count"] == 1
    assert restored.bill(2000.0, "1", "B1")["close_info"]["close_reason"] == "NOT_ENOUGH"
    # The original, settling on its own, agrees: one debit, however often it is read.
    assert books.query(1011.0, "1", "ACC", "O1").state == "SUCCESS"
    assert books.balance(2000.0, "1", "ACC")["balance"] == 40

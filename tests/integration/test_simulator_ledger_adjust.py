"""The simulator's admin call that debits or credits a ledger outside any order."""

from __future__ import annotations

import pytest

from tests.fixtures_sim import SIM_BAL_ACCOUNT_NO
from wxrecon.simulator.admin import AdminClient, AdminError
from wxrecon.wechatpay.client import WeChatPayClient


def test_adjust_debits_and_credits_a_ledger(
    sim_admin: AdminClient, sim_client: WeChatPayClient
) -> None:
    [ledger] = sim_admin.ledgers()
    mchid, number, start = ledger["mchid"], SIM_BAL_ACCOUNT_NO, int(ledger["balance"])
    assert sim_admin.adjust_ledger(mchid, number, -300)["balance"] == start - 300
    assert sim_client.query_balance(mchid=mchid, bal_account_no=number).balance == start - 300
    sim_admin.adjust_ledger(mchid, number, 1_000)
    assert sim_admin.balance(mchid, number) == start + 700


@pytest.mark.parametrize(
    ("amount", "message"),
    [(0, "non-zero"), (True, "non-zero"), ("5", "non-zero"), (10**13, "at most")],
)
def test_adjust_refuses_bad_amounts(sim_admin: AdminClient, amount: object, message: str) -> None:
    [ledger] = sim_admin.ledgers()
    with pytest.raises(AdminError, match=message):
        sim_admin.adjust_ledger(ledger["mchid"], SIM_BAL_ACCOUNT_NO, amount)  # type: ignore[arg-type]


def test_adjust_refuses_unknown_ledgers_and_overdrafts(sim_admin: AdminClient) -> None:
    [ledger] = sim_admin.ledgers()
    with pytest.raises(AdminError, match="no such ledger"):
        sim_admin.adjust_ledger(ledger["mchid"], "6222999999999999", -1)
    with pytest.raises(AdminError, match="larger than the balance"):
        sim_admin.adjust_ledger(ledger["mchid"], SIM_BAL_ACCOUNT_NO, -(10**11))

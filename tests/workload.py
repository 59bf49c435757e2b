"""The order mix the end-to-end and chaos tests send through real processes."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from wxrecon.domain.states import BILL_FINAL, REDUCTION_FINAL
from wxrecon.store.db import Database
from wxrecon.store.models import CompensationBill, SpecialReduction

# Every fault kind the simulator has, at rates that leave most requests clean.
FAULTS = [
    "system_error=0.04",
    "rate_limited=0.04",
    "reset=0.02",
    "hang=0.02",
    "bad_signature=0.03",
    "signtest=0.02",
    "stale_timestamp=0.02",
    "malformed_json=0.02",
    "apply_then_500=0.04",
    "apply_then_reset=0.02",
    "apply_then_hang=0.02",
    # Answers shaped like the provider's pages (other states' fields, optional fields left
    # out or empty, STATE_UNKNOWN on in-flight answers, WXVALUE receivers): truth unchanged.
    "docs_literal=0.3",
]


@dataclass(frozen=True)
class Order:
    mchid: str
    bal_account_no: str
    out_request_no: str
    amount: int
    reduction_type: str
    reason: str | None

    def kwargs(self) -> dict[str, Any]:
        return {
            "mchid": self.mchid,
            "bal_account_no": self.bal_account_no,
            "out_request_no": self.out_request_no,
            "reduction_type": self.reduction_type,
            "amount": self.amount,
            "reason": self.reason,
        }


def make_orders(
    rng: random.Random,
    *,
    prefix: str,
    merchants: Sequence[str],
    account: Callable[[str], str],
    per_merchant: int,
    too_big: int,
    max_amount: int,
    fits_tenths: int,
) -> tuple[list[Order], dict[str, int]]:
    """``per_merchant`` orders per merchant, shuffled, and each merchant's ledger balance.

    The balance holds ``fits_tenths``/10 of what the normal orders ask (so some settle as
    BALANCE_NOT_ENOUGH); ``too_big`` orders per merchant exceed the whole balance (403
    NOT_ENOUGH at submit)."""
    orders: list[Order] = []
    balances: dict[str, int] = {}
    for m, mchid in enumerate(merchants):
        acct = account(mchid)
        normal = [
            Order(
                mchid,
                acct,
                f"{prefix}{m}N{i:04d}",
                rng.randint(100, max_amount),
                rng.choice(["FINANCIAL_PENALTY", "JUDICIAL_DEDUCTION"]),
                rng.choice([None, f"case {m}-{i}"]),
            )
            for i in range(per_merchant - too_big)
        ]
        balance = sum(o.amount for o in normal) * fits_tenths // 10
        big = [
            Order(mchid, acct, f"{prefix}{m}B{i:04d}", balance + 1 + i, "FINANCIAL_PENALTY", None)
            for i in range(too_big)
        ]
        balances[mchid] = balance
        orders.extend(normal + big)
    rng.shuffle(orders)
    return orders, balances


def order_states(db: Database) -> tuple[dict[str, int], dict[str, int]]:
    """How many reductions and bills are in each state."""
    with db.read() as session:
        reductions, bills = (
            dict(session.execute(select(model.state, func.count()).group_by(model.state)).all())
            for model in (SpecialReduction, CompensationBill)
        )
    return reductions, bills


def all_in(
    counts: tuple[dict[str, int], dict[str, int]],
    n_reductions: int,
    n_bills: int,
    states: tuple[frozenset[Any], frozenset[Any]] = (REDUCTION_FINAL, BILL_FINAL),
) -> bool:
    """Exactly that many reductions and bills, every one in ``states`` (default: final)."""
    (reductions, bills), (reduction_states, bill_states) = counts, states
    return (
        sum(reductions.values()) == n_reductions
        and set(reductions) <= reduction_states
        and sum(bills.values()) == n_bills
        and set(bills) <= bill_states
    )

"""The demo's workload, as pure data: ledgers to seed, reductions and bills to enqueue.

A realistic mix: most reductions land on well-funded ledgers; some hit a ledger too poor for
them (the provider closes those with ``NOT_ENOUGH``); some go to a merchant whose orders settle
slowly; the simulator's faults (switched on by the demo) hit every kind. Compensation bills
end in each of their final states. Order numbers carry a run id so that runs never collide,
even on a shared PostgreSQL.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

# Target merchants and their quota ledgers. The account numbers are made up; they still get
# the care real ones do (never logged, masked on screen), and the demo's log scan checks that.
RICH = (
    ("1900000101", "6217000010000000101", 500_000_000),
    ("1900000102", "6217000010000000102", 500_000_000),
)
SLOW = ("1900000103", "6217000010000000103", 500_000_000)
POOR = ("1900000109", "6217000010000000109", 5_000)  # ¥50.00: every order here is larger

DEMO_BAL_ACCOUNT_NOS = tuple(b for _, b, _ in (*RICH, SLOW, POOR))

NORMAL = "normal"
SLOW_SETTLE = "slow to settle"
NOT_ENOUGH = "insufficient balance"
BILL = "compensation bill"


@dataclass(frozen=True)
class Ledger:
    mchid: str
    bal_account_no: str = field(repr=False)
    balance: int


@dataclass(frozen=True)
class PlannedReduction:
    category: str
    mchid: str
    bal_account_no: str = field(repr=False)
    out_request_no: str
    reduction_type: str
    amount: int
    reason: str


@dataclass(frozen=True)
class PlannedBill:
    out_bill_no: str
    amount: int
    outcome: str  # the final state the simulator will move it to


@dataclass(frozen=True)
class Plan:
    ledgers: tuple[Ledger, ...]
    reductions: tuple[PlannedReduction, ...]
    bills: tuple[PlannedBill, ...]


REASONS = {
    "FINANCIAL_PENALTY": ("违规处罚 late delivery penalty", "虚假交易处罚 fake order penalty"),
    "JUDICIAL_DEDUCTION": ("司法扣划 court order", "司法扣划 enforcement ruling"),
}
BILL_OUTCOMES = ("SUCCESS", "SUCCESS", "CLOSED", "CANCELLED")


def split(orders: int) -> dict[str, int]:
    """How many reductions of each category: ~60% normal, ~20% slow, ~20% not enough."""
    if orders < 1:
        raise ValueError("the demo needs at least one order")
    poor = max(1, orders // 5) if orders >= 3 else 0
    slow = max(1, orders // 5) if orders >= 2 else 0
    return {NORMAL: orders - poor - slow, SLOW_SETTLE: slow, NOT_ENOUGH: poor}


def plan(orders: int, run_id: str, *, bills: int | None = None, seed: int = 7) -> Plan:
    """``orders`` reductions and (by default) one bill for every four reductions, at least 4."""
    if not run_id.isalnum() or len(run_id) > 12:
        raise ValueError("run_id must be 1 to 12 letters or digits")
    rng = random.Random(seed)
    counts = split(orders)
    targets = {
        NORMAL: list(RICH),
        SLOW_SETTLE: [SLOW],
        NOT_ENOUGH: [POOR],
    }
    reductions: list[PlannedReduction] = []
    n = 0
    for category, count in counts.items():
        for i in range(count):
            mchid, bal, balance = targets[category][i % len(targets[category])]
            kind = rng.choice(tuple(REASONS))
            if category == NOT_ENOUGH:
                amount = balance + rng.randrange(100, 500_000)
            else:
                amount = rng.randrange(100, 2_000_000)  # ¥1.00 to ¥20,000.00, in fen
            n += 1
            reductions.append(
                PlannedReduction(
                    category=category,
                    mchid=mchid,
                    bal_account_no=bal,
                    out_request_no=f"DEMO{run_id}R{n:05d}",
                    reduction_type=kind,
                    amount=amount,
                    reason=rng.choice(REASONS[kind]),
                )
            )
    rng.shuffle(reductions)
    bill_count = max(4, orders // 4) if bills is None else bills
    planned_bills = tuple(
        PlannedBill(
            out_bill_no=f"DEMO{run_id}B{i + 1:04d}",
            amount=rng.randrange(100, 100_000),
            outcome=BILL_OUTCOMES[i % len(BILL_OUTCOMES)],
        )
        for i in range(bill_count)
    )
    ledgers = tuple(Ledger(m, b, bal) for m, b, bal in (*RICH, SLOW, POOR))
    return Plan(ledgers=ledgers, reductions=tuple(reductions), bills=planned_bills)

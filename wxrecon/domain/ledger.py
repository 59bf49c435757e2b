"""The ledger check: did a quota ledger move by exactly the reductions wxrecon saw succeed?

Pure functions. Between two usable snapshots of one ledger (nothing in transit, a balance
given) taken at t0 < t1, ``balance(t1) - balance(t0)`` must equal minus the sum of the
reductions recorded SUCCESS with the provider's ``success_time`` in ``(t0, t1]``. A shortfall
is money that left without an order wxrecon knows (an unexplained debit: alert); a surplus is
money that arrived (an unexplained credit, e.g. a top-up: information).

A snapshot with a reduction in transit is kept but is not a check point: the balance may or
may not include a reduction the provider has not finished, so no difference proves anything.

The provider's ``success_time`` has whole seconds (truncated, so never later than the true
time): a reduction applied just after ``t0`` may carry a ``success_time`` in ``t0``'s second,
before ``t0``. Nothing was in transit at ``t0``, so a reduction first submitted after ``t0``
cannot be in ``t0``'s balance: it counts in the window whatever its truncated time says.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

OK = "ok"
UNEXPLAINED_DEBIT = "unexplained_debit"
UNEXPLAINED_CREDIT = "unexplained_credit"
VERDICTS = (OK, UNEXPLAINED_DEBIT, UNEXPLAINED_CREDIT)


@dataclass(frozen=True)
class Snapshot:
    id: int
    balance: int | None  # fen; None when the provider did not send it
    in_transit: bool | None  # None when the provider did not say
    taken_at: datetime


@dataclass(frozen=True)
class Reduction:
    order_id: int
    amount: int  # fen
    success_time: datetime
    submitted_at: datetime | None = None  # our first POST (database clock)


@dataclass(frozen=True)
class Check:
    verdict: str
    start: Snapshot
    end: Snapshot
    observed: int  # balance change, fen (negative: money left)
    explained: int  # minus the sum of the reductions considered, fen
    difference: int  # observed - explained: < 0 unexplained debit, > 0 unexplained credit
    order_ids: tuple[int, ...]

    @property
    def amount(self) -> int:
        """The unexplained amount in fen, positive."""
        return abs(self.difference)


def usable(s: Snapshot) -> bool:
    """A check point: a balance given and the provider said explicitly nothing is in transit
    (an absent flag is not "nothing")."""
    return s.balance is not None and s.in_transit is False


def within(r: Reduction, start: Snapshot, end: Snapshot) -> bool:
    """Applied after ``start`` and by ``end`` (see the module's note on whole seconds)."""
    after = r.success_time > start.taken_at or (
        r.submitted_at is not None and r.submitted_at > start.taken_at
    )
    return after and r.success_time <= end.taken_at


def check(start: Snapshot, end: Snapshot, reductions: Sequence[Reduction]) -> Check:
    """The verdict on the window ``(start.taken_at, end.taken_at]``; ``reductions`` may hold
    more than the window (only those inside count)."""
    if not (usable(start) and usable(end)):
        raise ValueError("both snapshots must be check points (a balance, nothing in transit)")
    if end.taken_at <= start.taken_at:
        raise ValueError("the end snapshot must be later than the start")
    inside = sorted((r for r in reductions if within(r, start, end)), key=lambda r: r.order_id)
    assert start.balance is not None and end.balance is not None
    observed = end.balance - start.balance
    explained = -sum(r.amount for r in inside)
    difference = observed - explained
    verdict = OK if difference == 0 else UNEXPLAINED_DEBIT if difference < 0 else UNEXPLAINED_CREDIT
    return Check(
        verdict, start, end, observed, explained, difference, tuple(r.order_id for r in inside)
    )


def pairs(snapshots: Sequence[Snapshot]) -> list[tuple[Snapshot, Snapshot]]:
    """Each usable snapshot with the previous usable one, in time order (snapshots in
    transit are skipped, so a window may span them)."""
    points = sorted((s for s in snapshots if usable(s)), key=lambda s: (s.taken_at, s.id))
    return list(itertools.pairwise(points))

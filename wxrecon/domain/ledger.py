"""The ledger check: did a quota ledger move by exactly the reductions wxrecon saw succeed?

Pure functions. Between two check points of one ledger, ``balance(end) - balance(start)``
must equal minus the sum of the reductions applied between them. A shortfall is money that
left without an order wxrecon knows (an unexplained debit: alert); a surplus is money that
arrived (an unexplained credit, e.g. a top-up: information).

Where a reduction falls. The provider reads a snapshot's balance at some moment q between
our asking (``asked_at``) and its answer (``taken_at``). With nothing in transit at q, every
reduction the provider had by then was settled, so a reduction is in the balance exactly
when it was applied by q. Only our own clock (the database's) places it (``position``):

- after the snapshot: its first POST left after the answer (``submitted_at > taken_at``);
- before it: wxrecon had recorded it SUCCESS before asking (``known_at < asked_at``): the
  provider applied it before answering the query that told us;
- else unsure: in flight around the snapshot, or sent and not final in our records (a
  snapshot taken after the provider settled it but before our query saw it).

The provider's ``success_time`` is not used: it has whole seconds and the provider's clock,
which may be seconds off ours. Each comparison keeps ``SKEW`` in hand for two of our hosts'
estimates of the database's clock.

A snapshot is a check point only when it is usable (a balance, the provider said nothing
is in transit) and decidable (no reduction is unsure against it). A snapshot that is not
is kept, and the next check point's window spans it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

OK = "ok"
UNEXPLAINED_DEBIT = "unexplained_debit"
UNEXPLAINED_CREDIT = "unexplained_credit"
VERDICTS = (OK, UNEXPLAINED_DEBIT, UNEXPLAINED_CREDIT)

BEFORE, AFTER, UNSURE = "before", "after", "unsure"
SKEW = timedelta(seconds=0.1)  # how far two hosts' readings of the database's clock may differ


@dataclass(frozen=True)
class Snapshot:
    id: int
    balance: int | None  # fen; None when the provider did not send it
    in_transit: bool | None  # None when the provider did not say
    taken_at: datetime  # the answer (database clock)
    asked_at: datetime | None = None  # the query left; None (stored before 0012): the answer

    @property
    def asked(self) -> datetime:
        return self.asked_at or self.taken_at


@dataclass(frozen=True)
class Reduction:
    """A reduction that may have moved the ledger: SUCCESS, or sent and not final."""

    order_id: int
    amount: int  # fen
    submitted_at: datetime | None  # our first POST was about to leave (database clock)
    known_at: datetime | None = None  # recorded SUCCESS by then (the row's last write)
    succeeded: bool = True  # False: sent, and not final in our records


@dataclass(frozen=True)
class Check:
    verdict: str
    start: Snapshot
    end: Snapshot
    observed: int  # balance change, fen (negative: money left)
    explained: int  # minus the sum of the reductions in the window, fen
    difference: int  # observed - explained - flagged: < 0 debit, > 0 credit
    order_ids: tuple[int, ...]
    flagged: int = 0  # differences already recorded for windows inside this one, fen

    @property
    def amount(self) -> int:
        """The unexplained amount in fen, positive."""
        return abs(self.difference)


def usable(s: Snapshot) -> bool:
    """A balance given and the provider said explicitly nothing is in transit (an absent
    flag is not "nothing")."""
    return s.balance is not None and s.in_transit is False


def position(r: Reduction, s: Snapshot) -> str:
    """BEFORE (in the snapshot's balance), AFTER (not in it) or UNSURE: the module's note."""
    if r.submitted_at is not None and r.submitted_at > s.taken_at + SKEW:
        return AFTER
    if r.succeeded and r.known_at is not None and r.known_at + SKEW < s.asked:
        return BEFORE
    return UNSURE


def unsure(s: Snapshot, reductions: Sequence[Reduction]) -> tuple[int, ...]:
    """The orders that keep ``s`` from being a check point (why it waits)."""
    return tuple(r.order_id for r in reductions if position(r, s) == UNSURE)


def point(s: Snapshot, reductions: Sequence[Reduction]) -> bool:
    """A check point: usable, and every reduction's side of it known."""
    return usable(s) and not unsure(s, reductions)


def check(
    start: Snapshot, end: Snapshot, reductions: Sequence[Reduction], flagged: int = 0
) -> Check:
    """The verdict on the window from ``start`` to ``end``, both check points; ``reductions``
    may hold more than the window (only those after start and before end count), and
    ``flagged`` is what windows inside this one recorded already (so it is not told twice)."""
    if not (point(start, reductions) and point(end, reductions)):
        raise ValueError("both snapshots must be check points (a balance, nothing in transit)")
    if end.taken_at <= start.taken_at:
        raise ValueError("the end snapshot must be later than the start")
    inside = sorted(
        (
            r
            for r in reductions
            if r.succeeded and position(r, start) == AFTER and position(r, end) == BEFORE
        ),
        key=lambda r: r.order_id,
    )
    assert start.balance is not None and end.balance is not None
    observed = end.balance - start.balance
    explained = -sum(r.amount for r in inside)
    difference = observed - explained - flagged
    verdict = OK if difference == 0 else UNEXPLAINED_DEBIT if difference < 0 else UNEXPLAINED_CREDIT
    ids = tuple(r.order_id for r in inside)
    return Check(verdict, start, end, observed, explained, difference, ids, flagged)


def start_of(
    end: Snapshot, points: Sequence[Snapshot], reductions: Sequence[Reduction]
) -> Snapshot | None:
    """The window's start: the latest earlier check point that is still decidable (one
    decided before a reduction's row was visible may no longer be; an older one is taken,
    and what the windows in between recorded is netted out by the caller)."""
    earlier = sorted((p for p in points if p.taken_at < end.taken_at), key=lambda p: p.taken_at)
    return next((p for p in reversed(earlier) if point(p, reductions)), None)

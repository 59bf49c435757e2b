"""domain/ledger.py: the check, table-driven."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from wxrecon.domain.ledger import (
    OK,
    UNEXPLAINED_CREDIT,
    UNEXPLAINED_DEBIT,
    Reduction,
    Snapshot,
    check,
    pairs,
    usable,
)

T0 = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def snap(i: int, balance: int | None, minutes: float, in_transit: bool | None = False) -> Snapshot:
    return Snapshot(i, balance, in_transit, at(minutes))


CASES = [
    # (name, start balance, end balance, reductions (id, fen, minute), verdict, difference, ids)
    ("unchanged, nothing done", 10_000, 10_000, [], OK, 0, ()),
    ("one reduction explains it", 10_000, 9_700, [(1, 300, 5)], OK, 0, (1,)),
    ("two reductions explain it", 10_000, 9_600, [(2, 100, 3), (1, 300, 5)], OK, 0, (1, 2)),
    ("external debit", 10_000, 9_700, [], UNEXPLAINED_DEBIT, -300, ()),
    ("debit beyond a reduction", 10_000, 9_400, [(1, 300, 5)], UNEXPLAINED_DEBIT, -300, (1,)),
    ("top-up", 10_000, 10_500, [], UNEXPLAINED_CREDIT, 500, ()),
    ("recorded but not applied", 10_000, 10_000, [(1, 300, 5)], UNEXPLAINED_CREDIT, 300, (1,)),
    # success_time on the window's edges: (t0, t1] -- the start is out, the end is in.
    ("reduction at t0 is the previous window's", 10_000, 10_000, [(1, 300, 0)], OK, 0, ()),
    ("reduction at t1 is this window's", 10_000, 9_700, [(1, 300, 10)], OK, 0, (1,)),
    ("reduction after t1 is the next window's", 10_000, 10_000, [(1, 300, 11)], OK, 0, ()),
]


@pytest.mark.parametrize(
    ("start", "end", "reductions", "verdict", "difference", "ids"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_check(
    start: int,
    end: int,
    reductions: list[tuple[int, int, float]],
    verdict: str,
    difference: int,
    ids: tuple[int, ...],
) -> None:
    found = [Reduction(i, fen, at(m)) for i, fen, m in reductions]
    result = check(snap(1, start, 0), snap(2, end, 10), found)
    assert result.verdict == verdict
    assert result.difference == difference
    assert result.amount == abs(difference)
    assert result.observed == end - start
    assert result.order_ids == ids


@pytest.mark.parametrize(
    ("snapshot", "expected"),
    [
        (snap(1, 100, 0, False), True),
        (snap(1, 100, 0, True), False),
        (snap(1, 100, 0, None), False),  # the flag not sent is not "nothing in transit"
        (snap(1, None, 0, False), False),  # no balance given
        (snap(1, 0, 0, False), True),  # an empty ledger is a balance
    ],
)
def test_usable(snapshot: Snapshot, expected: bool) -> None:
    assert usable(snapshot) is expected


def test_whole_second_success_time_counts_when_submitted_after_the_start() -> None:
    start, end = snap(1, 10_000, 0), snap(2, 9_700, 10)
    truncated = at(0) - timedelta(seconds=0.4)  # the provider's whole second, before t0
    before = Reduction(1, 300, truncated)  # no submit time: it could be in t0's balance
    assert check(start, end, [before]).verdict == UNEXPLAINED_DEBIT
    after = Reduction(1, 300, truncated, submitted_at=at(0) + timedelta(seconds=0.1))
    assert check(start, end, [after]).verdict == OK
    applied_earlier = Reduction(1, 300, truncated, submitted_at=at(-1))
    assert check(start, snap(2, 10_000, 10), [applied_earlier]).verdict == OK


def test_pairs_skip_snapshots_in_transit() -> None:
    s = [snap(1, 100, 0), snap(2, 90, 5, True), snap(3, 80, 10), snap(4, None, 12), snap(5, 70, 15)]
    assert [(a.id, b.id) for a, b in pairs(list(reversed(s)))] == [(1, 3), (3, 5)]


def test_check_refuses_non_points_and_reversed_windows() -> None:
    with pytest.raises(ValueError, match="check points"):
        check(snap(1, 100, 0), snap(2, 100, 5, True), [])
    with pytest.raises(ValueError, match="later"):
        check(snap(1, 100, 5), snap(2, 100, 0), [])

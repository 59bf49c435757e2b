"""domain/ledger.py: the check, table-driven."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from wxrecon.domain.ledger import (
    AFTER,
    BEFORE,
    OK,
    SKEW,
    UNEXPLAINED_CREDIT,
    UNEXPLAINED_DEBIT,
    UNSURE,
    Reduction,
    Snapshot,
    check,
    point,
    position,
    start_of,
    unsure,
    usable,
)

T0 = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def snap(i: int, balance: int | None, minutes: float, in_transit: bool | None = False) -> Snapshot:
    # Asked 0.2 s before the answer.
    return Snapshot(i, balance, in_transit, at(minutes), at(minutes) - timedelta(seconds=0.2))


CASES = [
    # (name, start balance, end balance, reductions (id, fen, minute), verdict, difference, ids)
    ("unchanged, nothing done", 10_000, 10_000, [], OK, 0, ()),
    ("one reduction explains it", 10_000, 9_700, [(1, 300, 5)], OK, 0, (1,)),
    ("two reductions explain it", 10_000, 9_600, [(2, 100, 3), (1, 300, 5)], OK, 0, (1, 2)),
    ("external debit", 10_000, 9_700, [], UNEXPLAINED_DEBIT, -300, ()),
    ("debit beyond a reduction", 10_000, 9_400, [(1, 300, 5)], UNEXPLAINED_DEBIT, -300, (1,)),
    ("top-up", 10_000, 10_500, [], UNEXPLAINED_CREDIT, 500, ()),
    ("recorded but not applied", 10_000, 10_000, [(1, 300, 5)], UNEXPLAINED_CREDIT, 300, (1,)),
    # Near the window's edges (each recorded SUCCESS half a minute after it was applied).
    ("applied before t0 is the previous window's", 10_000, 10_000, [(1, 300, -1)], OK, 0, ()),
    ("applied just before t1 is this window's", 10_000, 9_700, [(1, 300, 9)], OK, 0, (1,)),
    ("applied after t1 is the next window's", 10_000, 10_000, [(1, 300, 11)], OK, 0, ()),
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
    half = timedelta(seconds=30)
    found = [Reduction(i, fen, at(m) - half, at(m) + half) for i, fen, m in reductions]
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


S = timedelta(seconds=1)


@pytest.mark.parametrize(
    ("name", "reduction", "expected"),
    [
        # The snapshot at minute 10: asked at 10:00 - 0.2 s, answered at 10:00.
        ("first POST left after the answer", dict(sub=at(10) + S), AFTER),
        ("first POST within our clocks' skew of it", dict(sub=at(10) + SKEW / 2), UNSURE),
        ("sent before, not final here", dict(sub=at(9), pending=True), UNSURE),
        ("sent after, not final here: not in it", dict(sub=at(10) + S, pending=True), AFTER),
        ("recorded SUCCESS before the asking", dict(sub=at(9), known=at(10) - S), BEFORE),
        ("recorded within the skew of the asking", dict(sub=at(9), known=at(10) - S / 4), UNSURE),
        ("recorded SUCCESS after the asking", dict(sub=at(9), known=at(10) + S), UNSURE),
        ("not final, however long ago sent", dict(sub=at(0), known=at(1), pending=True), UNSURE),
    ],
)
def test_position(name: str, reduction: dict, expected: str) -> None:
    r = Reduction(
        1,
        300,
        reduction.get("sub"),
        known_at=reduction.get("known"),
        succeeded=not reduction.get("pending", False),
    )
    assert position(r, snap(2, 100, 10)) == expected


def test_snapshot_after_the_provider_settled_but_before_our_query_waits() -> None:
    """The provider applied it (the balance moved, nothing in transit) while our records
    still say PROCESSING: the snapshot is not a check point, so no false debit; the next
    one, after our query recorded SUCCESS, checks the whole span."""
    start = snap(1, 10_000, 0)
    pending = Reduction(7, 300, at(1), succeeded=False)
    between = snap(2, 9_700, 5)
    assert unsure(between, [pending]) == (7,) and not point(between, [pending])
    recorded = Reduction(7, 300, at(1), known_at=at(6))
    later = snap(3, 9_700, 10)
    assert point(later, [recorded])
    assert start_of(later, [start], [recorded]) == start
    result = check(start, later, [recorded])
    assert (result.verdict, result.order_ids) == (OK, (7,))


def test_start_walks_back_past_a_point_no_longer_decidable_and_nets_out() -> None:
    a, b, end = snap(1, 10_000, 0), snap(2, 9_700, 5), snap(3, 9_400, 10)
    # Its row became visible after b was decided: marked just before b's answer.
    late = Reduction(9, 300, at(5) - S / 2, known_at=at(6))
    assert position(late, b) == UNSURE
    assert start_of(end, [a, b], [late]) == a
    # (a, b] told a 300 fen debit already (it did not know of the order): netted out.
    result = check(a, end, [late], flagged=-300)
    assert (result.verdict, result.observed, result.explained, result.difference) == (
        OK,
        -600,
        -300,
        0,
    )
    assert start_of(a, [a, b], [late]) is None  # nothing earlier


def test_check_refuses_a_window_with_an_unsure_end() -> None:
    r = Reduction(1, 300, at(9), known_at=at(11))
    with pytest.raises(ValueError, match="check points"):
        check(snap(1, 10_000, 0), snap(2, 9_700, 10), [r])


def test_check_refuses_non_points_and_reversed_windows() -> None:
    with pytest.raises(ValueError, match="check points"):
        check(snap(1, 100, 0), snap(2, 100, 5, True), [])
    with pytest.raises(ValueError, match="later"):
        check(snap(1, 100, 5), snap(2, 100, 0), [])

"""The state machines as tables: every pair of states is either allowed or refused."""

from __future__ import annotations

import itertools

import pytest

from wxrecon.domain import states
from wxrecon.domain.states import BState, IllegalTransition, RState

R = RState
B = BState

# The complete set of automatic reduction transitions (DESIGN.md §2); anything else is refused.
REDUCTION_ALLOWED = {
    (R.RECEIVED, R.SUBMITTED),
    (R.RECEIVED, R.REJECTED),
    (R.RECEIVED, R.NEEDS_REVIEW),  # its sealed ledger number does not open
    (R.SUBMITTED, R.PROCESSING),
    (R.SUBMITTED, R.SUCCESS),
    (R.SUBMITTED, R.FAILED),
    (R.SUBMITTED, R.REJECTED),
    (R.SUBMITTED, R.NEEDS_REVIEW),
    (R.PROCESSING, R.SUCCESS),
    (R.PROCESSING, R.FAILED),
    (R.PROCESSING, R.NEEDS_REVIEW),
}


@pytest.mark.parametrize(("src", "dst"), list(itertools.product(RState, RState)))
def test_reduction_transition_table(src: RState, dst: RState) -> None:
    expected = (src, dst) in REDUCTION_ALLOWED
    assert states.reduction_allowed(src, dst) is expected
    if expected:
        states.check_reduction(src, dst)
    else:
        with pytest.raises(IllegalTransition):
            states.check_reduction(src, dst)


def test_no_way_back_to_unknown_or_out_of_final() -> None:
    for final in (R.SUCCESS, R.FAILED, R.REJECTED, R.NEEDS_REVIEW):
        assert not any(states.reduction_allowed(final, d) for d in RState)
    # Nothing the provider says moves an order back to "maybe not sent".
    assert not any(states.reduction_allowed(s, R.RECEIVED) for s in RState)
    assert not states.reduction_allowed(R.PROCESSING, R.SUBMITTED)
    # Only SUBMITTED/RECEIVED can be REJECTED: an accepted order was accepted.
    assert not states.reduction_allowed(R.PROCESSING, R.REJECTED)


@pytest.mark.parametrize(("src", "dst"), list(itertools.product(BState, BState)))
def test_bill_transition_table(src: BState, dst: BState) -> None:
    in_flight = {B.TRACKING, B.ACCEPTED, B.WAIT_USER_CONFIRM, B.CANCELING}
    expected = src in in_flight and dst != src and dst != B.TRACKING
    assert states.bill_allowed(src, dst) is expected


@pytest.mark.parametrize(
    ("provider", "local"),
    [
        ("PROCESSING", R.PROCESSING),
        ("SUCCESS", R.SUCCESS),
        ("FAILED", R.FAILED),
        ("REVERSED", None),
        ("", None),
    ],
)
def test_reduction_provider_mapping(provider: str, local: RState | None) -> None:
    assert states.reduction_from_provider(provider) == local


@pytest.mark.parametrize(
    ("provider", "local"),
    [
        ("ACCEPTED", B.ACCEPTED),
        ("WAIT_USER_CONFIRM", B.WAIT_USER_CONFIRM),
        ("CANCELING", B.CANCELING),
        ("SUCCESS", B.SUCCESS),
        ("CLOSED", B.CLOSED),
        ("CANCELLED", B.CANCELLED),
        ("TRACKING", None),  # ours, never the provider's
        ("NEEDS_REVIEW", None),
        ("SOMETHING_NEW", None),
    ],
)
def test_bill_provider_mapping(provider: str, local: BState | None) -> None:
    assert states.bill_from_provider(provider) == local


@pytest.mark.parametrize(
    ("state", "ever_sent", "force", "target"),
    [
        (R.NEEDS_REVIEW, True, False, R.SUBMITTED),
        (R.NEEDS_REVIEW, False, False, R.RECEIVED),
        (R.REJECTED, True, False, R.SUBMITTED),
        (R.REJECTED, False, False, R.RECEIVED),
        (R.FAILED, True, True, R.SUBMITTED),
        (R.SUCCESS, True, True, R.SUBMITTED),
        (R.FAILED, True, False, None),
        (R.SUCCESS, True, False, None),
        (R.PROCESSING, True, True, None),
        (R.SUBMITTED, True, True, None),
        (R.RECEIVED, False, True, None),
    ],
)
def test_reduction_retry_targets(
    state: RState, ever_sent: bool, force: bool, target: RState | None
) -> None:
    if target is None:
        with pytest.raises(IllegalTransition):
            states.reduction_retry_target(state, ever_sent=ever_sent, force=force)
    else:
        assert states.reduction_retry_target(state, ever_sent=ever_sent, force=force) == target


@pytest.mark.parametrize(
    ("state", "force", "ok"),
    [
        (B.NEEDS_REVIEW, False, True),
        (B.CLOSED, False, False),
        (B.CLOSED, True, True),
        (B.ACCEPTED, True, False),
        (B.TRACKING, True, False),
    ],
)
def test_bill_retry_targets(state: BState, force: bool, ok: bool) -> None:
    if ok:
        assert states.bill_retry_target(state, force=force) == B.TRACKING
    else:
        with pytest.raises(IllegalTransition):
            states.bill_retry_target(state, force=force)


def test_active_and_terminal_partition_the_states() -> None:
    assert set(RState) == states.REDUCTION_ACTIVE | states.REDUCTION_TERMINAL
    assert not states.REDUCTION_ACTIVE & states.REDUCTION_TERMINAL
    assert set(BState) == states.BILL_ACTIVE | states.BILL_TERMINAL
    assert not states.BILL_ACTIVE & states.BILL_TERMINAL

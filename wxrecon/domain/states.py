"""Local state machines of special reductions and compensation bills, as pure data.

The tables say which local transitions are allowed and what a provider's answer maps to;
:mod:`wxrecon.reconcile` consults them before every compare-and-set. Operator actions
(retry, force) are the only way out of a terminal state and are listed separately.
"""

from __future__ import annotations

from enum import StrEnum

from wxrecon.domain.errors import IllegalTransition
from wxrecon.wechatpay.resources import BillState, ReductionState


class Kind(StrEnum):
    """The ``kind`` of an order in the events table and in metrics."""

    REDUCTION = "reduction"
    BILL = "bill"


class RState(StrEnum):
    """Local state of a special reduction."""

    RECEIVED = "RECEIVED"  # row written, nothing sent yet
    SUBMITTED = "SUBMITTED"  # a POST is being or has been sent; outcome unknown until queried
    PROCESSING = "PROCESSING"  # the provider accepted it and is working on it
    SUCCESS = "SUCCESS"  # final: applied
    FAILED = "FAILED"  # final: the provider closed it (fail_reason says why)
    REJECTED = "REJECTED"  # never accepted (PARAM_ERROR, NO_AUTH, …): a person must look
    NEEDS_REVIEW = "NEEDS_REVIEW"  # gave up reconciling it: a person must look


class BState(StrEnum):
    """Local state of a compensation bill: the provider's states plus two of our own."""

    TRACKING = "TRACKING"  # registered, no answer from the provider yet
    ACCEPTED = "ACCEPTED"
    WAIT_USER_CONFIRM = "WAIT_USER_CONFIRM"
    CANCELING = "CANCELING"
    SUCCESS = "SUCCESS"
    CLOSED = "CLOSED"
    CANCELLED = "CANCELLED"
    NEEDS_REVIEW = "NEEDS_REVIEW"


# States the sweep keeps polling; everything else waits for a person or is final.
REDUCTION_ACTIVE = frozenset({RState.RECEIVED, RState.SUBMITTED, RState.PROCESSING})
REDUCTION_FINAL = frozenset({RState.SUCCESS, RState.FAILED})
REDUCTION_TERMINAL = frozenset(set(RState) - REDUCTION_ACTIVE)
# Sent (or maybe sent) but never confirmed accepted: bounded by the 31-day re-entry window.
REDUCTION_UNCONFIRMED = frozenset({RState.RECEIVED, RState.SUBMITTED})

BILL_ACTIVE = frozenset(
    {BState.TRACKING, BState.ACCEPTED, BState.WAIT_USER_CONFIRM, BState.CANCELING}
)
BILL_FINAL = frozenset({BState.SUCCESS, BState.CLOSED, BState.CANCELLED})
BILL_TERMINAL = frozenset(set(BState) - BILL_ACTIVE)

# Allowed automatic transitions (the engine's own). Staying in a state is not a transition.
REDUCTION_TRANSITIONS: dict[RState, frozenset[RState]] = {
    # Nothing was sent: the ways out are sending it, refusing it before sending, or a person
    # (its stored ledger number does not open: altered, or copied from another row).
    RState.RECEIVED: frozenset({RState.SUBMITTED, RState.REJECTED, RState.NEEDS_REVIEW}),
    RState.SUBMITTED: frozenset(
        {
            RState.PROCESSING,
            RState.SUCCESS,
            RState.FAILED,
            RState.REJECTED,
            RState.NEEDS_REVIEW,
        }
    ),
    RState.PROCESSING: frozenset({RState.SUCCESS, RState.FAILED, RState.NEEDS_REVIEW}),
    RState.SUCCESS: frozenset(),
    RState.FAILED: frozenset(),
    RState.REJECTED: frozenset(),
    RState.NEEDS_REVIEW: frozenset(),
}

BILL_TRANSITIONS: dict[BState, frozenset[BState]] = {
    **{s: frozenset(set(BState) - {BState.TRACKING, s}) for s in BILL_ACTIVE},
    **{s: frozenset() for s in BILL_TERMINAL},
}

# Operator retry: from which states, and (for reductions) where to.
REDUCTION_RETRYABLE = frozenset({RState.NEEDS_REVIEW, RState.REJECTED})
# With force=True an operator may also re-check a final order (it is only re-queried).
REDUCTION_FORCE_RETRYABLE = REDUCTION_RETRYABLE | REDUCTION_FINAL
BILL_RETRYABLE = frozenset({BState.NEEDS_REVIEW})
BILL_FORCE_RETRYABLE = BILL_RETRYABLE | BILL_FINAL

# Manual resolution (four-eyes, ``domain/resolution.py``): the only way from review to a
# final state. Not in the automatic tables above, so the engine can never take it itself.
REDUCTION_RESOLUTIONS: dict[RState, frozenset[RState]] = {
    RState.NEEDS_REVIEW: frozenset({RState.SUCCESS, RState.FAILED}),
}
BILL_RESOLUTIONS: dict[BState, frozenset[BState]] = {BState.NEEDS_REVIEW: BILL_FINAL}


def reduction_allowed(src: RState | str, dst: RState | str) -> bool:
    return RState(dst) in REDUCTION_TRANSITIONS[RState(src)]


def bill_allowed(src: BState | str, dst: BState | str) -> bool:
    return BState(dst) in BILL_TRANSITIONS[BState(src)]


def check_reduction(src: RState | str, dst: RState | str) -> None:
    if not reduction_allowed(src, dst):
        raise IllegalTransition(f"reduction: {src} -> {dst} is not allowed")


def check_bill(src: BState | str, dst: BState | str) -> None:
    if not bill_allowed(src, dst):
        raise IllegalTransition(f"bill: {src} -> {dst} is not allowed")


def reduction_from_provider(state: ReductionState | str) -> RState | None:
    """The local state a provider's (signed) reduction state maps to; None if unknown."""
    return {
        "PROCESSING": RState.PROCESSING,
        "SUCCESS": RState.SUCCESS,
        "FAILED": RState.FAILED,
    }.get(str(state))


def bill_from_provider(state: BillState | str) -> BState | None:
    """The local state a provider's bill state maps to; None if unknown."""
    try:
        local = BState(str(state))
    except ValueError:
        return None
    return None if local in (BState.TRACKING, BState.NEEDS_REVIEW) else local


def reduction_retry_target(state: RState | str, *, ever_sent: bool, force: bool = False) -> RState:
    """Where an operator retry puts a reduction; raises IllegalTransition when not allowed.

    A never-sent order goes back to RECEIVED (it will be submitted); one that may have been
    sent goes to SUBMITTED, so it is queried first and re-entered only if the provider has
    no trace of it (re-entry with the same parameters is idempotent).
    """
    state = RState(state)
    allowed = REDUCTION_FORCE_RETRYABLE if force else REDUCTION_RETRYABLE
    if state not in allowed:
        hint = " (use force to re-check a final order)" if state in REDUCTION_FINAL else ""
        raise IllegalTransition(f"cannot retry a reduction in state {state}{hint}")
    return RState.SUBMITTED if ever_sent else RState.RECEIVED


def bill_retry_target(state: BState | str, *, force: bool = False) -> BState:
    state = BState(state)
    allowed = BILL_FORCE_RETRYABLE if force else BILL_RETRYABLE
    if state not in allowed:
        hint = " (use force to re-check a final bill)" if state in BILL_FINAL else ""
        raise IllegalTransition(f"cannot retry a bill in state {state}{hint}")
    return BState.TRACKING

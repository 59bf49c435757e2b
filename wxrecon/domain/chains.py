"""An order's event chain against its row: the history must explain the state.

The first event goes from nothing to the kind's initial state, each next one starts where
the one before ended, and the last ends in the row's state. A row changed outside the engine
(a hand-written UPDATE, a restored backup) breaks the last rule; a deleted row or event
breaks the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

Step = tuple[str | None, str]  # (from_state, to_state) of one event, in id order


def chain_problem(initial: str, steps: Sequence[Step], state: str | None) -> str | None:
    """Why ``steps`` do not lead to ``state`` (None: the row is missing), or None if they do."""
    if state is None:
        return "its row is missing (deleted outside the engine)"
    if not steps:
        return f"it is {state} but has no events"
    first_src, first_dst = steps[0]
    if first_src is not None or first_dst != initial:
        return f"its first event is {first_src} -> {first_dst}, not from nothing to {initial}"
    for n, ((_, before), (src, dst)) in enumerate(pairwise(steps), start=2):
        if src != before:
            return f"event {n} ({src} -> {dst}) does not start where event {n - 1} ended ({before})"
    if steps[-1][1] != state:
        return (
            f"its row is {state} but its events end at {steps[-1][1]}: "
            "the row was changed outside the engine"
        )
    return None

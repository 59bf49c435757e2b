"""The polling backoff schedule: plain data and pure functions.

``settings.poll_schedule`` lists the delays (seconds) before the 1st, 2nd, … re-query of an
order; the last step repeats until ``poll_max_attempts`` is spent, after which the order goes
to NEEDS_REVIEW. Each delay is spread by ±``poll_jitter`` so orders submitted together do not
come back together.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Protocol


class ScheduleSettings(Protocol):
    @property
    def poll_schedule(self) -> list[float]: ...
    @property
    def poll_jitter(self) -> float: ...
    @property
    def poll_max_attempts(self) -> int: ...


def base_delay(attempt: int, steps: Sequence[float]) -> float:
    """The un-jittered delay after ``attempt`` (1-based) attempts; the last step repeats."""
    if attempt < 1:
        raise ValueError("attempt numbers start at 1")
    if not steps:
        raise ValueError("the schedule has no steps")
    return float(steps[min(attempt, len(steps)) - 1])


def next_delay(
    attempt: int, settings: ScheduleSettings, rng: random.Random | None = None
) -> float | None:
    """Seconds to wait before the next try after ``attempt`` attempts, or None: give up.

    None means the attempt budget is spent and the order goes to NEEDS_REVIEW.
    """
    if attempt >= settings.poll_max_attempts:
        return None
    delay = base_delay(attempt, settings.poll_schedule)
    jitter = settings.poll_jitter
    if jitter > 0:
        delay *= 1 + (rng or random).uniform(-jitter, jitter)
    return max(0.0, delay)


def reentry_deadline(first_sent: datetime, window: timedelta) -> datetime:
    """The last moment a special reduction may be re-entered idempotently (``window``: the
    provider's 31 days less wxrecon's safety margin)."""
    return first_sent + window


def past_reentry_window(first_sent: datetime | None, now: datetime, window: timedelta) -> bool:
    """True once an order first sent at ``first_sent`` can no longer be safely re-entered."""
    return first_sent is not None and now >= reentry_deadline(first_sent, window)

"""The backoff schedule is data plus a pure function; table-driven."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from wxrecon.config import Settings
from wxrecon.domain.schedule import base_delay, next_delay, past_reentry_window, reentry_deadline


@dataclass
class S:
    poll_schedule: list[float] = field(default_factory=lambda: [5, 15, 60, 300, 1800, 7200])
    poll_jitter: float = 0.0
    poll_max_attempts: int = 10


@pytest.mark.parametrize(
    ("attempt", "delay"),
    [(1, 5), (2, 15), (3, 60), (4, 300), (5, 1800), (6, 7200), (7, 7200), (9, 7200), (10, None)],
)
def test_schedule_table(attempt: int, delay: float | None) -> None:
    assert next_delay(attempt, S()) == delay


def test_budget_ends_the_schedule() -> None:
    s = S(poll_max_attempts=3)
    assert [next_delay(a, s) for a in (1, 2, 3, 4)] == [5, 15, None, None]


def test_default_settings_schedule() -> None:
    settings = Settings.model_validate({})
    assert settings.poll_schedule == [5, 15, 60, 300, 1800, 7200]
    assert next_delay(1, settings, random.Random(1)) is not None
    assert next_delay(settings.poll_max_attempts, settings) is None


@pytest.mark.parametrize("attempt", [1, 2, 3, 6, 8])
def test_jitter_stays_within_bounds(attempt: int) -> None:
    s = S(poll_jitter=0.2)
    rng = random.Random(attempt)
    base = base_delay(attempt, s.poll_schedule)
    delays = [next_delay(attempt, s, rng) for _ in range(500)]
    assert all(d is not None and base * 0.8 <= d <= base * 1.2 for d in delays)
    assert len(set(delays)) > 100  # it does spread


def test_jitter_is_deterministic_for_a_seeded_rng() -> None:
    s = S(poll_jitter=0.5)
    assert next_delay(3, s, random.Random(7)) == next_delay(3, s, random.Random(7))


def test_bad_inputs() -> None:
    with pytest.raises(ValueError):
        base_delay(0, [1.0])
    with pytest.raises(ValueError):
        base_delay(1, [])


@pytest.mark.parametrize(
    ("age", "past"),
    [
        (timedelta(0), False),
        (timedelta(days=30, hours=23, minutes=59), False),
        (timedelta(days=31), True),
        (timedelta(days=40), True),
    ],
)
def test_reentry_window(age: timedelta, past: bool) -> None:
    sent = datetime(2026, 1, 1, tzinfo=UTC)
    assert past_reentry_window(sent, sent + age, timedelta(days=31)) is past
    assert reentry_deadline(sent, timedelta(days=31)) == sent + timedelta(days=31)


def test_never_sent_is_never_past_the_window() -> None:
    assert not past_reentry_window(None, datetime(2030, 1, 1, tzinfo=UTC), timedelta(days=31))

"""Two LeaderSchedulers on one real Redis: only the lock holder sends; a standby takes over."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import redis

from wxrecon.beat import LOCK_KEY, LeaderScheduler, Leadership, RedisLock
from wxrecon.config import Settings
from wxrecon.worker import make_app

pytestmark = pytest.mark.redis

TTL = 1.0


class Recording(LeaderScheduler):
    """Records what it would send instead of publishing it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.sent: list[str] = []
        super().__init__(*args, **kwargs)

    def apply_entry(self, entry: Any, producer: Any = None) -> None:
        self.sent.append(entry.name)
        entry.last_run_at = self.app.now()


def _scheduler(redis_db: str, tmp_path: Path, name: str) -> Recording:
    app = make_app(Settings(broker_url=redis_db, data_dir=str(tmp_path / "data")))
    # always due: each tick of a leader sends it, so what is sent says who leads
    app.conf.beat_schedule = {"tick": {"task": "wxrecon.sweep_bills", "schedule": 0.001}}
    lock = RedisLock(redis_db, name, TTL)
    return Recording(
        app, schedule_filename=str(tmp_path / f"{name}-schedule"), leadership=Leadership(lock, TTL)
    )


def test_only_the_holder_sends_and_a_standby_takes_over(redis_db: str, tmp_path: Path) -> None:
    a, b = _scheduler(redis_db, tmp_path, "a"), _scheduler(redis_db, tmp_path, "b")
    try:
        for _ in range(5):
            a.tick()
            b.tick()
        assert a.sent and not b.sent
        assert redis.Redis.from_url(redis_db).get(LOCK_KEY) == b"a"
        # a dies without a word: its key expires after the TTL and b takes it
        deadline = time.monotonic() + 30  # a bound for a stuck test, not a timed assertion
        while not b.sent and time.monotonic() < deadline:
            b.tick()
            time.sleep(TTL / 10)
        assert b.sent, "the standby never took over"
        assert redis.Redis.from_url(redis_db).get(LOCK_KEY) == b"b"
        before = len(a.sent)
        a.leadership.renewed_at = None  # type: ignore[union-attr]  # a comes back
        a.tick()
        assert len(a.sent) == before  # ... as the standby
    finally:
        a.close()
        b.close()


def test_a_clean_stop_hands_over_at_once(redis_db: str, tmp_path: Path) -> None:
    a, b = _scheduler(redis_db, tmp_path, "a"), _scheduler(redis_db, tmp_path, "b")
    a.tick()
    b.tick()
    assert a.sent and not b.sent
    a.close()  # releases the key
    b.tick()
    assert b.sent
    b.close()
    assert redis.Redis.from_url(redis_db).get(LOCK_KEY) is None


def test_the_app_uses_the_leader_scheduler() -> None:
    from wxrecon.worker import celery_config

    assert celery_config(Settings())["beat_scheduler"] == "wxrecon.beat:LeaderScheduler"

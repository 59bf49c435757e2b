"""Beat leader lock: run two beats (or more); only the one holding the lock sends tasks.

The lock is one Redis key on the broker (``SET NX PX``), renewed by its holder every third of
``WXRECON_BEAT_LOCK_TTL``. When the active beat dies its key expires and a standby, which looks
every third of the TTL, takes it: sweeps resume within TTL + TTL/3. A beat that cannot renew
stops sending after two thirds of the TTL, before anyone else can hold the key.

Sending twice would be harmless anyway (a sweep claims rows under a lease; a second sweep
finds them claimed): the lock only keeps the broker from carrying every task once per beat.
Why not celery-redbeat (another dependency, and it moves the schedule itself into Redis) or
a PostgreSQL advisory lock (SQLite is the default database): docs/design.md.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis
from celery.beat import PersistentScheduler

log = logging.getLogger(__name__)

LOCK_KEY = "wxrecon:beat:leader"

# Extend the key's expiry only while we still hold it (another beat may have taken it).
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Action(enum.Enum):
    ACQUIRE = "acquire"  # nobody holds the lock: try to take it
    RENEW = "renew"  # we hold it and a third of the TTL has passed since we last renewed
    KEEP = "keep"  # we hold it, renewed recently
    STANDBY = "standby"  # another beat holds it


def decide(
    *, me: str, holder: str | None, now: float, renewed_at: float | None, ttl: float
) -> Action:
    """What this beat does next, from who holds the lock and when we last renewed it."""
    if holder is None:
        return Action.ACQUIRE
    if holder != me:
        return Action.STANDBY
    if renewed_at is None or now - renewed_at >= ttl / 3:
        return Action.RENEW
    return Action.KEEP


def leads(*, now: float, renewed_at: float | None, ttl: float) -> bool:
    """We may send while our last successful renewal is younger than two thirds of the TTL:
    the key outlives that by a third, so no other beat can hold it meanwhile."""
    return renewed_at is not None and now - renewed_at < ttl * 2 / 3


class RedisLock:
    """The lock's three operations on one key; every value is this beat's id."""

    def __init__(self, url: str, me: str, ttl: float, key: str = LOCK_KEY) -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=max(0.5, ttl / 6))
        self.me, self.key, self.ttl_ms = me, key, max(1, int(ttl * 1000))

    def holder(self) -> str | None:
        value = self.client.get(self.key)
        return value.decode() if isinstance(value, bytes) else value

    def acquire(self) -> bool:
        return bool(self.client.set(self.key, self.me, nx=True, px=self.ttl_ms))

    def renew(self) -> bool:
        return bool(self.client.eval(_RENEW, 1, self.key, self.me, self.ttl_ms))

    def release(self) -> None:
        self.client.eval(_RELEASE, 1, self.key, self.me)


class Leadership:
    """The decision applied to a lock; ``check()`` says whether this beat may send now."""

    def __init__(
        self, lock: RedisLock, ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.lock, self.ttl, self.clock = lock, ttl, clock
        self.renewed_at: float | None = None
        self._was_leader: bool | None = None  # logs the first state too

    def check(self) -> bool:
        now = self.clock()
        try:
            action = decide(
                me=self.lock.me,
                holder=self.lock.holder(),
                now=now,
                renewed_at=self.renewed_at,
                ttl=self.ttl,
            )
            if action is Action.ACQUIRE and self.lock.acquire():
                self.renewed_at = now
            elif action is Action.RENEW:
                self.renewed_at = now if self.lock.renew() else None
            elif action is Action.STANDBY:
                self.renewed_at = None
        except redis.RedisError as exc:  # keep what we had; leads() runs it out
            log.warning("beat: cannot reach the leader lock: %s", type(exc).__name__)
        leader = leads(now=now, renewed_at=self.renewed_at, ttl=self.ttl)
        if leader != self._was_leader:
            log.info("beat: %s (%s)", "active" if leader else "standby", self.lock.me)
            self._was_leader = leader
        return leader


def beat_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class LeaderScheduler(PersistentScheduler):
    """Celery's file-backed scheduler whose tick sends due entries only while it leads.

    Set as ``beat_scheduler`` in wxrecon.worker. On a broker that is not Redis (the
    filesystem or SQL transports of a single-machine set-up) there is nothing to lock on:
    it behaves as Celery's own scheduler, and one beat is the rule there."""

    def __init__(self, *args: Any, leadership: Leadership | None = None, **kwargs: Any) -> None:
        self.leadership = leadership or _from_settings()
        super().__init__(*args, **kwargs)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        if self.leadership is None:
            return float(super().tick(*args, **kwargs))
        wake = self.leadership.ttl / 3  # renew (or look for a dead leader) this often
        if not self.leadership.check():
            return wake
        return min(float(super().tick(*args, **kwargs)), wake)

    def close(self) -> None:
        if self.leadership is not None and self.leadership.renewed_at is not None:
            # a clean stop hands over at once instead of after the TTL
            with contextlib.suppress(redis.RedisError):
                self.leadership.lock.release()
        super().close()


def _from_settings() -> Leadership | None:
    from wxrecon.config import REDIS_SCHEMES, get_settings

    settings = get_settings()
    if not settings.broker_url.startswith(REDIS_SCHEMES):
        log.warning("beat: the broker is not Redis, so there is no leader lock: run one beat")
        return None
    ttl = settings.beat_lock_ttl
    return Leadership(RedisLock(settings.broker_url, beat_id(), ttl), ttl)

"""The intake queue, read so that a message sent by name is never lost.

A by-name ``wxrecon.submit_special_reduction`` is the order's only copy until its row is
committed. kombu's Redis transport pops a message (BRPOP) and records it as unacknowledged in a
second round trip; a worker killed in between loses it (measured with a plain Celery app: 6 of
1,200 messages gone after 20 SIGKILLs at 32 messages/s, none of them ever run). So on a Redis
broker no Celery consumer reads ``wxrecon.intake``: each worker starts this pump instead, a
process of its own (no thread in a parent that forks), which

- moves each message atomically (BRPOPLPUSH) into its own in-flight list,
- writes the order's row through the same takers as the tasks (``takers.TAKERS``), waiting out
  a database that does not answer for as long as it takes (the message stays in flight),
- publishes the new order's first poll to ``wxrecon.poll`` after the commit, and only then
  removes the message from its in-flight list.

A pump that dies leaves its in-flight list behind and its liveness key expires; every pump
puts such orphans back on the queue. A message taken twice that way is harmless: intake is
idempotent by order number, and the claim token comes from the message id. Other messages
on the queue (internal tasks, foreign or unreadable ones) are moved, as they are, to the
poll queue for Celery to run or refuse, in the same atomic step.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import redis

log = logging.getLogger(__name__)

INFLIGHT = "wxrecon.intake.inflight."  # + pump id: the messages a pump holds
ALIVE = "wxrecon.intake.alive."  # + pump id: set with a TTL while the pump runs
DEAD = "wxrecon.intake.dead"  # an intake that failed for another reason than the database
ALIVE_TTL = 10  # seconds a silent pump's messages stay its own (it beats every second)
RECOVER_EVERY = 5.0
MAX_MESSAGE = 1 << 20  # bytes; larger is nobody's order: moved on for Celery to refuse
# kombu's Redis keys for a queue's priority steps: the name, then name + "\x06\x16" + step.
PRIORITY_SEP = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)
# Shorter than ALIVE_TTL: a pump waiting out an outage beats between its tries and keeps what
# it holds (one connection attempt every few seconds costs nothing).
DB_WAIT_MAX = 5.0


# -- the rules (pure) --------------------------------------------------------------------------


@dataclass(frozen=True)
class Intake:
    """An intake task found in a message: what the takers need."""

    task: str
    id: str | None
    args: Sequence[Any]
    kwargs: dict[str, Any]


def queue_keys(queue: str) -> list[str]:
    """The Redis lists kombu writes ``queue``'s messages to, highest priority first."""
    return [queue if p == 0 else f"{queue}{PRIORITY_SEP}{p}" for p in PRIORITY_STEPS]


def read_intake(raw: bytes, tasks: Sequence[str]) -> Intake | None:
    """The intake task in a kombu JSON envelope (Celery protocol 2 or 1), or None when it is
    anything else: another task, another serializer, or not readable (Celery refuses those)."""
    if len(raw) > MAX_MESSAGE:
        return None
    try:
        envelope = json.loads(raw)
        headers = envelope.get("headers") or {}
        if envelope.get("content-type") != "application/json":
            return None
        body = envelope["body"]
        if (envelope.get("properties") or {}).get("body_encoding") == "base64":
            body = base64.b64decode(body, validate=True)
        payload = json.loads(body)
    except (ValueError, TypeError, KeyError, AttributeError, binascii.Error):
        return None
    if isinstance(headers, dict) and "task" in headers:  # protocol 2: [args, kwargs, embed]
        task, task_id = headers.get("task"), headers.get("id")
        if not (isinstance(payload, list) and len(payload) >= 2):
            return None
        args, kwargs = payload[0], payload[1]
    elif isinstance(payload, dict):  # protocol 1: everything in the body
        task, task_id = payload.get("task"), payload.get("id")
        args, kwargs = payload.get("args") or [], payload.get("kwargs") or {}
    else:
        return None
    if task not in tasks or not isinstance(args, list) or not isinstance(kwargs, dict):
        return None
    return Intake(str(task), str(task_id)[:64] if task_id else None, args, kwargs)


def db_wait(attempt: int) -> float:
    """Seconds before taking a message again while the database does not answer: doubling
    from 0.5 s, capped (an outage of any length only waits)."""
    return float(min(DB_WAIT_MAX, 0.5 * 2 ** min(attempt, 16)))


NAMED = ("out_request_no", "out_bill_no", "mchid", "caller")  # what a listing may show


def describe(raw: bytes, tasks: Sequence[str]) -> dict[str, Any]:
    """A message as an operator may see it: its id, task and order numbers, never its other
    values (``bal_account_no`` above all)."""
    found = read_intake(raw, tasks)
    if found is None:
        try:
            headers = json.loads(raw).get("headers") or {}
        except (ValueError, AttributeError):
            headers = {}
        task = headers.get("task") if isinstance(headers, dict) else None
        ident = headers.get("id") if isinstance(headers, dict) else None
        return {"id": str(ident)[:64] if ident else None, "task": str(task)[:80] if task else None}
    shown = {k: str(found.kwargs[k])[:64] for k in NAMED if k in found.kwargs}
    return {"id": found.id, "task": found.task, **shown}


# -- the queue (Redis) -------------------------------------------------------------------------


class Inbox:
    """One pump's view of the intake queue on Redis: take, finish, move on, recover."""

    def __init__(self, client: Any, queue: str, forward_to: str, pump_id: str) -> None:
        self.client = client
        self.keys = queue_keys(queue)
        self.forward_to = forward_to
        self.id = pump_id
        self.inflight = INFLIGHT + pump_id
        self.alive = ALIVE + pump_id

    def beat(self) -> None:
        self.client.set(self.alive, str(os.getpid()), ex=ALIVE_TTL)

    def take(self, block: float) -> bytes | None:
        """The next message, moved into this pump's in-flight list (the higher priorities
        first; blocking at most ``block`` seconds on the usual one)."""
        for key in self.keys[1:]:
            raw = self.client.rpoplpush(key, self.inflight)
            if raw is not None:
                return bytes(raw)
        raw = self.client.brpoplpush(self.keys[0], self.inflight, timeout=max(1, round(block)))
        return None if raw is None else bytes(raw)

    def done(self, raw: bytes) -> None:
        self.client.lrem(self.inflight, 1, raw)

    def forward(self, raw: bytes) -> None:
        """Move a message that is not an intake to Celery's queue."""
        self._move(raw, self.forward_to)

    def bury(self, raw: bytes) -> None:
        """Set aside a message the takers failed on (a bug, not an outage)."""
        self._move(raw, DEAD)

    def _move(self, raw: bytes, to: str) -> None:
        pipe = self.client.pipeline(transaction=True)  # in one step: never in both, or none
        pipe.lpush(to, raw).lrem(self.inflight, 1, raw).execute()

    def recover(self) -> int:
        """Put back the in-flight messages of pumps that stopped beating; how many."""
        moved = 0
        for key, owner in _held(self.client):
            if owner == self.id or self.client.exists(ALIVE + owner):
                continue
            while self.client.rpoplpush(key, self.keys[0]) is not None:
                moved += 1
        return moved

    def waiting(self) -> int:
        """Messages on the queue and in every pump's hands."""
        held = sum(self.client.llen(key) for key, _ in _held(self.client))
        return held + sum(self.client.llen(k) for k in self.keys)

    def close(self) -> None:
        self.client.delete(self.alive)  # another pump may recover what is left at once


def _keyed(client: Any, prefix: str) -> Iterator[tuple[Any, str]]:
    """Each key under ``prefix`` with the pump id it names."""
    for key in client.scan_iter(match=prefix + "*", count=100):
        yield key, (key.decode() if isinstance(key, bytes) else key)[len(prefix) :]


def _held(client: Any) -> Iterator[tuple[Any, str]]:
    """Every pump's in-flight list, with its owner."""
    return _keyed(client, INFLIGHT)


def look(client: Any, queue: str) -> dict[str, Any]:
    """What waits: on the queue, in each pump's hands (and whether that pump is alive), and
    set aside on the dead list."""
    pumps: dict[str, dict[str, Any]] = {}
    for key, owner in _held(client):
        pumps[owner] = {"held": client.llen(key), "alive": bool(client.exists(ALIVE + owner))}
    for _key, owner in _keyed(client, ALIVE):
        pumps.setdefault(owner, {"held": 0, "alive": True})
    queued = sum(client.llen(k) for k in queue_keys(queue))
    return {"queued": queued, "pumps": pumps, "dead": client.llen(DEAD)}


def dead_messages(client: Any, limit: int) -> list[bytes]:
    """The set-aside messages, oldest first (they are pushed on the left)."""
    return [bytes(m) for m in reversed(client.lrange(DEAD, -limit, -1))]


# Move one message from the dead list to the queue's next place, only if it is still there.
_REPLAY = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('RPUSH', KEYS[2], ARGV[1])
  return 1
end
return 0
"""


def replay(client: Any, queue: str, raws: Sequence[bytes]) -> int:
    """Put set-aside messages back on the queue, each atomically; how many moved (one another
    operator replayed first is not moved twice)."""
    script = client.register_script(_REPLAY)
    return sum(int(script(keys=[DEAD, queue_keys(queue)[0]], args=[raw])) for raw in raws)


# -- the loop ----------------------------------------------------------------------------------


class Pump:
    """Takes intake messages one at a time until ``stopped()``.

    ``take(intake)`` writes the row (raises one of ``db_down`` while the database does not
    answer) and returns what to publish after it, or None; ``publish`` sends that.
    """

    def __init__(
        self,
        inbox: Inbox,
        tasks: Sequence[str],
        take: Callable[[Intake], Any],
        publish: Callable[[Any], None],
        db_down: tuple[type[BaseException], ...],
        stopped: Callable[[], bool],
        on_waiting: Callable[[int], None] = lambda n: None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.inbox, self.tasks, self.take, self.publish = inbox, tasks, take, publish
        self.db_down, self.stopped = db_down, stopped
        self.on_waiting, self.sleep = on_waiting, sleep
        self.next_recover = 0.0
        self.taken = 0

    def run(self) -> None:
        broken = 0
        while not self.stopped():
            try:
                self.once()
                broken = 0
            except redis.RedisError as exc:  # the broker restarting: nothing held is lost
                log.warning("intake pump: broker not answering (%s); waiting", type(exc).__name__)
                self.sleep(db_wait(broken))
                broken += 1
        with contextlib.suppress(redis.RedisError):  # else its liveness key expires
            self.inbox.close()

    def once(self, block: float = 1.0) -> None:
        self.inbox.beat()
        if time.monotonic() >= self.next_recover:
            self.next_recover = time.monotonic() + RECOVER_EVERY
            moved = self.inbox.recover()
            if moved:
                log.warning("intake pump: %d message(s) of a stopped pump put back", moved)
            self.on_waiting(self.inbox.waiting())
        raw = self.inbox.take(block)
        if raw is not None:
            self.handle(raw)

    def handle(self, raw: bytes) -> None:
        intake = read_intake(raw, self.tasks)
        if intake is None:
            self._until_sent(lambda: self.inbox.forward(raw))
            return
        attempt = 0
        while True:
            try:
                follow = self.take(intake)
                break
            except self.db_down as exc:
                wait = db_wait(attempt)
                log.warning(
                    "intake %s waits for the database (%s); again in %.1fs",
                    intake.id,
                    type(exc).__name__,
                    wait,
                )
                self.inbox.beat()
                self.sleep(wait)  # ends early when the pump is stopped
                attempt += 1
                if self.stopped():
                    return  # still in flight: recovered once this pump is gone
            except Exception as exc:  # not an outage: retrying would block every intake
                # The type only: an exception's text may quote the message's values.
                log.error(
                    "intake %s failed (%s); set aside on %s", intake.id, type(exc).__name__, DEAD
                )
                self._until_sent(lambda: self.inbox.bury(raw))
                return
        if follow is not None:
            try:
                self.publish(follow)
            except Exception as exc:  # the order is claimed: its lease expires, a sweep takes it
                log.warning("intake %s: first poll not sent (%s)", intake.id, type(exc).__name__)
        self._until_sent(lambda: self.inbox.done(raw))
        self.taken += 1

    def _until_sent(self, send: Callable[[], None]) -> None:
        """The message is in memory and in flight: keep trying until Redis answers."""
        attempt = 0
        while True:
            try:
                send()
                return
            except redis.RedisError:
                if self.stopped():
                    raise
                self.sleep(db_wait(attempt))
                attempt += 1

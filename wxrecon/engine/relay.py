"""The relay: claims undelivered outcome events, sends each to every configured target, and
records the verdict: delivered, retried later (the backoff schedule, as data), or dead after
the attempt limit.

At least once: an event is marked delivered only after every target took it, so a relay
killed between sending and recording sends it again when its lease runs out; receivers
deduplicate by ``event_id``. Verdicts are recorded ``RECORD_EVERY`` at a time, in one
transaction (a commit per event was most of the relay's CPU), so such a kill sends at most
that many again. A target that took an event is not sent it again on a later
attempt. Each order's events go out in order (``store.outbox.claim``), and the relay runs
on its own queue and connections, so it never slows the engine's own work.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from wxrecon import metrics
from wxrecon.outbound import DeliveryFailed
from wxrecon.store import outbox
from wxrecon.store.db import Database
from wxrecon.store.models import utcnow

log = logging.getLogger(__name__)

RECORD_EVERY = 20  # verdicts written per transaction, at most


class Target(Protocol):
    name: str  # "task" or "webhook": its ``<name>_sent_at`` column

    def send(self, event: Any, body: bytes) -> None: ...  # raises DeliveryFailed

    def close(self) -> None: ...


def retry_delay(schedule: Sequence[float], attempts: int) -> float:
    """Seconds before attempt ``attempts + 1`` (after ``attempts`` failed): the schedule's
    step, the last one repeating."""
    return float(schedule[min(max(attempts, 1), len(schedule)) - 1])


def verdict(
    *,
    attempts: int,
    failed: str | None,
    sent: dict[str, datetime],
    schedule: Sequence[float],
    max_attempts: int,
    now: datetime,
) -> dict[str, Any]:
    """The row values after an attempt: delivered when no target failed, else retried with
    backoff, or dead once ``max_attempts`` attempts have failed."""
    values: dict[str, Any] = {f"{name}_sent_at": at for name, at in sent.items()}
    values["claim_token"] = None
    if failed is None:
        return {**values, "delivery": outbox.DELIVERED, "delivered_at": now, "last_error": None}
    tried = attempts + 1
    values.update(attempts=tried, last_error=failed[:256])
    if tried >= max_attempts:
        return {**values, "delivery": outbox.DEAD}
    return {**values, "next_attempt_at": now + timedelta(seconds=retry_delay(schedule, tried))}


@dataclass(frozen=True)
class Verdict:
    """One attempt, sent and not yet recorded."""

    event: outbox.Claimed
    values: dict[str, Any]
    failed: str | None


@dataclass
class RelayResult:
    delivered: int = 0
    retried: int = 0
    dead: int = 0
    released: int = 0

    @property
    def attempted(self) -> int:
        return self.delivered + self.retried + self.dead


@dataclass
class Relay:
    db: Database
    targets: Sequence[Target]
    schedule: Sequence[float]
    max_attempts: int
    lease: float
    batch: int = 100
    clock: Callable[[], datetime] = utcnow
    monotonic: Callable[[], float] = time.monotonic
    token: str = field(default_factory=lambda: f"relay-{uuid.uuid4().hex}")

    def run_once(self, budget: float | None = None) -> RelayResult:
        """One claimed batch, attempted in order until ``budget`` seconds are spent; the
        ones not attempted are released at once. Its claim and verdicts share one pooled
        connection (one checkout and pre-ping a batch, not one a transaction)."""
        if not self.targets:
            return RelayResult()
        with self.db.pinned():
            return self._batch(budget)

    def _batch(self, budget: float | None) -> RelayResult:
        result = RelayResult()
        start = self.monotonic()
        claimed = outbox.claim(
            self.db, self.token, limit=self.batch, lease=self.lease, now=self.clock()
        )
        verdicts: list[Verdict] = []
        for i, event in enumerate(claimed):
            if budget is not None and self.monotonic() - start > budget:
                self._record(verdicts, result)
                outbox.release(self.db, [e.id for e in claimed[i:]], self.token, self.clock())
                result.released = len(claimed) - i
                return result
            verdicts.append(self._attempt(event))
            if len(verdicts) >= RECORD_EVERY:
                self._record(verdicts, result)
        self._record(verdicts, result)
        return result

    def run(self, budget: float) -> RelayResult:
        """Batches until none is full or ``budget`` seconds are spent, on one connection."""
        with self.db.pinned():
            return self._batches(budget)

    def _batches(self, budget: float) -> RelayResult:
        total = RelayResult()
        start = self.monotonic()
        while True:
            left = budget - (self.monotonic() - start)
            if left <= 0:
                return total
            one = self.run_once(left)
            for name in ("delivered", "retried", "dead", "released"):
                setattr(total, name, getattr(total, name) + getattr(one, name))
            if one.attempted < self.batch or one.released:
                return total

    def _attempt(self, event: outbox.Claimed) -> Verdict:
        """Send ``event`` to each target that has not taken it; its verdict, to record."""
        body = event.payload.encode()
        data = json.loads(event.payload)
        sent: dict[str, datetime] = {}
        failed: str | None = None
        for target in self.targets:
            if target.name in event.sent:
                continue
            try:
                target.send(data, body)
            except DeliveryFailed as exc:
                failed = str(exc)
                metrics.count_outcome_delivery(target.name, "failed")
                break  # the next attempt starts with this target again
            sent[target.name] = self.clock()
            metrics.count_outcome_delivery(target.name, "delivered")
        values = verdict(
            attempts=event.attempts,
            failed=failed,
            sent=sent,
            schedule=self.schedule,
            max_attempts=self.max_attempts,
            now=self.clock(),
        )
        return Verdict(event, values, failed)

    def _record(self, verdicts: list[Verdict], result: RelayResult) -> None:
        """Write the verdicts held in one transaction (then forget them); count, log each."""
        if not verdicts:
            return
        won = outbox.record_many(self.db, self.token, [(v.event, v.values) for v in verdicts])
        for v, ok in zip(verdicts, won, strict=True):
            if not ok:
                log.info(
                    "outcome %s: claim lost before recording; sent again later", v.event.event_id
                )
                continue
            delivery = v.values.get("delivery")
            if delivery == outbox.DELIVERED:
                result.delivered += 1
            elif delivery == outbox.DEAD:
                result.dead += 1
                metrics.count_outcome_delivery("all", "dead")
                log.error(
                    "outcome %s is dead after %d attempts (%s); `wxrecon outcomes redeliver` "
                    "sends it again",
                    v.event.event_id,
                    v.values["attempts"],
                    v.failed,
                )
            else:
                result.retried += 1
                log.warning(
                    "outcome %s not delivered (%s); attempt %d, next at %s",
                    v.event.event_id,
                    v.failed,
                    v.values["attempts"],
                    v.values["next_attempt_at"].isoformat(timespec="seconds"),
                )
        verdicts.clear()

    def close(self) -> None:
        for target in self.targets:
            target.close()


def targets_from(settings: Any, celery_app: Any | None = None) -> list[Target]:
    """The configured targets, task first (its broker rarely refuses, so a failing webhook
    does not hold it back on later attempts)."""
    from wxrecon.outbound.task import TaskTarget
    from wxrecon.outbound.webhook import WebhookTarget

    targets: list[Target] = []
    if settings.outcome_task:
        app = celery_app
        if settings.outcome_broker_url or app is None:
            from celery import Celery

            app = Celery(
                "wxrecon-outcomes", broker=settings.outcome_broker_url or settings.broker_url
            )
            app.conf.update(task_serializer="json", accept_content=["json"])
        targets.append(TaskTarget(app, settings.outcome_task, settings.outcome_queue))
    if settings.webhook_url:
        secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else ""
        targets.append(
            WebhookTarget(
                settings.webhook_url,
                secret,
                timeout=settings.webhook_timeout,
                allow_http=settings.webhook_allow_http,
            )
        )
    return targets


def relay_from(db: Database, settings: Any, celery_app: Any | None = None) -> Relay:
    return Relay(
        db,
        targets_from(settings, celery_app),
        schedule=settings.outcome_retry_schedule,
        max_attempts=settings.outcome_max_attempts,
        lease=settings.claim_lease,
        batch=settings.outcome_batch,
    )

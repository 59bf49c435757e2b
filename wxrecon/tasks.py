"""Thin Celery tasks: parse JSON kwargs, call :mod:`wxrecon.engine`, nothing else.

Public, stable names (business apps send them by name, JSON kwargs only):

- ``wxrecon.submit_special_reduction(mchid, bal_account_no, out_request_no, reduction_type,
  amount, reason=None, caller=None)`` on queue ``wxrecon.intake``
- ``wxrecon.track_compensation_bill(out_bill_no, caller=None)`` on queue ``wxrecon.intake``

``caller`` names the merchant profile that signs the order's calls (wxrecon/callers.py;
default: WXRECON_REDUCTION_CALLER / WXRECON_BILL_CALLER); an unknown one is refused before
anything is written.

Internal (beat and the engine send them): ``wxrecon.sweep_reductions``, ``wxrecon.sweep_bills``,
``wxrecon.poll_reduction(id, token)``, ``wxrecon.poll_bill(id, token)`` (one order, e.g. just
written by the intake helper) and ``wxrecon.poll_reductions(ids, token)``,
``wxrecon.poll_bills(ids, token)`` (a chunk of one sweep's claims, or of one bulk intake's
new orders).

Positional arguments are refused in one line that does not show them (a positional value
has no name to redact it by, and Celery's own lines would print it); messages wxrecon sends
carry a redacted ``kwargsrepr``, so Celery's lines about them never show a ledger number.

Invalid input is logged as one line and the task ends (never retried). Only a database that
does not answer is retried, with backoff, because until the row is written the order exists
nowhere else.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import closing
from typing import Any

from celery import Task, signals
from celery.exceptions import Reject, SoftTimeLimitExceeded

from wxrecon import metrics, runtime
from wxrecon.domain.kinds import BILL, REDUCTION, OrderKind
from wxrecon.engine.intake import IntakeResult
from wxrecon.engine.steps import MAX_CHUNK
from wxrecon.engine.sweep import Claim, sweep
from wxrecon.engine.turns import Hold, Later, Publish, Steps, Waiting
from wxrecon.logs import safe_reprs
from wxrecon.ratelimit import RateLimiter, booked_groups
from wxrecon.takers import DB_DOWN, Refused, refuse_positional, take_bill, take_reduction
from wxrecon.worker import (
    DUE_QUEUE,
    INTAKE_QUEUE,
    OUTCOME_QUEUE,
    POLL_QUEUE,
    RETRY_BACKOFF_MAX,
    SWEEP_QUEUE,
    app,
)

log = logging.getLogger(__name__)

# Only a database that does not answer is retried (with backoff); nothing else is.
RETRY_WHILE_DB_DOWN: dict[str, Any] = {
    "autoretry_for": DB_DOWN,
    "retry_backoff": 2,
    "retry_backoff_max": RETRY_BACKOFF_MAX,
    "max_retries": 30,
}
# Intake never gives up: until its row is written the order exists nowhere else, and an
# outage of any length must lose nothing (a poll that gives up only waits for its lease).
INTAKE_RETRY: dict[str, Any] = {**RETRY_WHILE_DB_DOWN, "max_retries": None}
INTAKE_TASKS = ("wxrecon.submit_special_reduction", "wxrecon.track_compensation_bill")


@signals.task_retry.connect
def _count_intake_retry(request: Any = None, **_: Any) -> None:
    name = getattr(request, "task", None)
    if name in INTAKE_TASKS:
        metrics.INTAKE_DB_RETRIES.labels(name).inc()


class WxreconTask(Task):
    """Every wxrecon task: keyword arguments only, and redacted reprs on what it sends."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if args:
            return dict(refuse_positional(self.name, len(args)))
        return super().__call__(**kwargs)

    def apply_async(self, args: Any = None, kwargs: Any = None, *more: Any, **options: Any) -> Any:
        # Also reached by Celery's own retry, which re-sends the request's arguments.
        for name, value in safe_reprs(args, kwargs).items():
            options.setdefault(name, value)
        return super().apply_async(args, kwargs, *more, **options)


class IntakeTask(WxreconTask):
    """An intake task: its message is the order's only copy until the row is committed."""

    def retry(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().retry(*args, **kwargs)
        except Reject as exc:
            # Celery could not publish the retry (the broker restarting while the database is
            # down) and would drop the message (requeue=False): put it back instead. If even
            # that cannot reach the broker, it stays unacknowledged and comes back after the
            # visibility timeout.
            raise Reject(getattr(exc, "reason", None), requeue=True) from None


def _taken(kind: OrderKind, taken: IntakeResult | Refused) -> dict[str, Any]:
    """Run the new order's first step here (the task's own process) and say where it is."""
    if isinstance(taken, Refused):
        return dict(taken)
    state: str | None = taken.state
    if taken.token is not None:
        state = runtime.get().reconciler().process(kind, taken.order_id, taken.token) or state
    return {"id": taken.order_id, "created": taken.created, "state": state}


# On a Redis broker the worker's intake pump (wxrecon/inbox.py) reads wxrecon.intake and
# calls the takers itself; these tasks run on other brokers and when called directly.
@app.task(
    name="wxrecon.submit_special_reduction",
    bind=True,
    base=IntakeTask,
    queue=INTAKE_QUEUE,
    **INTAKE_RETRY,
)
def submit_special_reduction(self: Task, **kwargs: Any) -> dict[str, Any]:
    return _taken(REDUCTION, take_reduction(self.request.id, **kwargs))


@app.task(
    name="wxrecon.track_compensation_bill",
    bind=True,
    base=IntakeTask,
    queue=INTAKE_QUEUE,
    **INTAKE_RETRY,
)
def track_compensation_bill(self: Task, **kwargs: Any) -> dict[str, Any]:
    return _taken(BILL, take_bill(self.request.id, **kwargs))


def _claim_args(id: Any, token: Any) -> tuple[int, str] | None:
    if isinstance(id, bool) or not isinstance(id, int) or not isinstance(token, str) or not token:
        log.error("poll task with bad arguments (id=%r); dropped", str(id)[:40])
        return None
    return id, token


def _ids(ids: Any) -> bool:
    return (
        isinstance(ids, list)
        and len(ids) <= MAX_CHUNK
        and all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
    )


def _chunk_args(
    ids: Any, token: Any, unsent: Any = None
) -> tuple[list[int], str, dict[int, int]] | None:
    """``unsent`` (a handed-back chunk's): [id, row version] pairs, ids among ``ids``, of
    the orders whose first POST never left."""
    pairs = [] if unsent is None else unsent
    ok = (
        _ids(ids)
        and len(ids) > 0
        and isinstance(token, str)
        and token
        and isinstance(pairs, list)
        and all(isinstance(p, list) and len(p) == 2 and _ids(p) for p in pairs)
        and {p[0] for p in pairs} <= set(ids)
    )
    if not ok:
        log.error("poll task with bad arguments; dropped")
        return None
    return ids, token, {p[0]: p[1] for p in pairs}


def hand_back_groups(
    waiting: Sequence[Waiting], limiter: RateLimiter | None, horizon: float
) -> list[tuple[float, list[int], bool]]:
    """The messages a chunk's waiting orders go back in: (seconds until due, ids, booked).
    Each budget's orders are booked on the shared limiter's line and go in groups due as
    their windows start (``ratelimit.booked_groups``): every process's handed-back orders
    take turns, instead of all waking for the next grant and all but one trying again.
    Those whose turn would begin past ``horizon`` go together, due then, to be booked again
    (a message waits in a worker, and a claim is held, for a bounded time). Without a
    limiter (orders of a booked group that still found their grant taken: their group came
    late, or others took it), or with no budget known, a budget's orders go together, due
    when the first may have its grant: a late group keeps its place, once, instead of
    going to the end of the line."""
    by_key: dict[str, list[Waiting]] = {}
    for w in waiting:
        by_key.setdefault(w.key, []).append(w)
    groups: list[tuple[float, list[int], bool]] = []
    for key, group in by_key.items():
        after = min(w.delay for w in group)
        if not key or limiter is None:
            groups.append((min(after, horizon), [w.id for w in group], False))
            continue
        booking = limiter.book(key, len(group), after, horizon)
        for due, turns in booked_groups(booking, limiter.rate):
            groups.append((due, [group[i].id for i in turns], True))
        if booking.count < len(group):
            groups.append((horizon, [w.id for w in group[booking.count :]], False))
    return sorted(groups, key=lambda g: g[0])


def _hand_back(
    task: Task, token: str, limiter: RateLimiter | None = None, horizon: float = 60.0
) -> Publish:
    """The chunk's waiting orders as new messages on the due queue, each run once its orders'
    turn comes (held by a worker meanwhile, not by a process: engine/turns.turns). Each
    message's orders have their claim held past its due time first (``hold``), so the
    sweep does not take them again while they wait."""

    def publish(waiting: list[Waiting], unsent: dict[int, int], hold: Hold) -> list[int]:
        published: list[int] = []
        for delay, ids, booked in hand_back_groups(waiting, limiter, horizon):
            first = [[i, unsent[i]] for i in ids if i in unsent]
            kwargs = {"ids": ids, "token": token, "unsent": first, "booked": booked}
            try:
                if not hold(ids, delay):
                    break  # the database refused: the chunk keeps the rest and waits
                task.apply_async(kwargs=kwargs, queue=DUE_QUEUE, countdown=round(delay, 3))
            except Exception as exc:  # the broker is away: the chunk keeps the rest and waits
                log.warning(
                    "could not hand back %d waiting orders (%s)", len(ids), type(exc).__name__
                )
                break
            published += ids
        return published

    return publish


def _process_chunk(steps: Steps, ids: list[int]) -> int:
    done = 0
    with closing(steps):  # ends the chunk's pinned connection even when out of time
        for order_id, step in steps:
            try:
                if isinstance(step(), Later):
                    continue  # put back: it comes again
            except SoftTimeLimitExceeded:
                # Out of time: the rest keep their lease and come back with the next sweep.
                log.warning("poll chunk out of time after %d of %d orders", done, len(ids))
                raise
            except Exception:
                log.exception(
                    "polling order %s failed; its lease will expire and return it", order_id
                )
            done += 1
    return done


class _Dispatcher:
    """Buffers claims and publishes them in chunks of one token each, on one producer."""

    def __init__(self, task: Task, chunk: int, producer: Any) -> None:
        self.task = task
        self.chunk = max(1, chunk)
        self.producer = producer
        self.pending: list[Claim] = []

    def __call__(self, claim: Claim) -> None:
        if self.pending and self.pending[0].token != claim.token:
            self.flush()
        self.pending.append(claim)
        if len(self.pending) >= self.chunk:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            kwargs = {"ids": [c.id for c in self.pending], "token": self.pending[0].token}
            self.task.apply_async(kwargs=kwargs, queue=DUE_QUEUE, producer=self.producer)
            self.pending = []


def _poll_tasks(kind: OrderKind, one: str, chunk: str, sweeper: str) -> tuple[Task, Task, Task]:
    """The three internal tasks of a kind: poll one claimed order, poll a chunk of them
    (one sweep's claims, or one bulk intake's new orders), and the beat's sweep."""

    @app.task(name=one, base=WxreconTask, queue=POLL_QUEUE, **RETRY_WHILE_DB_DOWN)
    def poll_one(id: Any = None, token: Any = None) -> str | None:
        args = _claim_args(id, token)
        if args is None:
            return None
        return runtime.get().reconciler().process(kind, *args)

    @app.task(name=chunk, base=WxreconTask, queue=POLL_QUEUE)
    def poll_chunk(
        ids: Any = None, token: Any = None, unsent: Any = None, booked: Any = False
    ) -> int:
        args = _chunk_args(ids, token, unsent)
        if args is None:
            return 0
        ids, token, unsent = args
        rt = runtime.get()
        limiter = None if booked is True else rt.limiter
        # Turns at most a lease ahead: a countdown well inside the broker's visibility
        # timeout (three leases, worker.visibility_timeout).
        back = _hand_back(poll_chunk, token, limiter, horizon=rt.settings.claim_lease)
        steps = rt.reconciler().steps(kind, ids, token, unsent, hand_back=back)
        return _process_chunk(steps, ids)

    @app.task(name=sweeper, base=WxreconTask, queue=SWEEP_QUEUE)
    def sweep_due() -> int:
        """Claim due orders (each batch committed first) and enqueue their polls in chunks."""
        rt = runtime.get()
        with app.producer_or_acquire() as producer:
            dispatch = _Dispatcher(poll_chunk, rt.settings.poll_chunk, producer)
            count = sweep(rt.db, kind, rt.settings, dispatch)
            dispatch.flush()
        metrics.mark_sweep(kind.name)
        return count

    return poll_one, poll_chunk, sweep_due


poll_reduction, poll_reductions, sweep_reductions = _poll_tasks(
    REDUCTION, "wxrecon.poll_reduction", "wxrecon.poll_reductions", "wxrecon.sweep_reductions"
)
poll_bill, poll_bills, sweep_bills = _poll_tasks(
    BILL, "wxrecon.poll_bill", "wxrecon.poll_bills", "wxrecon.sweep_bills"
)
# The poll an intake pump sends for the order it just wrote and claimed, by kind.
FIRST_POLL: dict[str, Task] = {REDUCTION.name: poll_reduction, BILL.name: poll_bill}


@app.task(name="wxrecon.relay_outcomes", queue=OUTCOME_QUEUE)
def relay_outcomes() -> int:
    """Deliver pending outcome events (beat sends this when delivery is configured; a
    worker on ``wxrecon.outcomes`` runs it, apart from the engine's queues)."""
    from wxrecon.worker import time_limits

    rt = runtime.get()
    settings = rt.settings
    if not settings.delivers_outcomes:
        return 0
    relay = _relay(rt)
    soft, _hard = time_limits(settings)
    # Stop starting sends while one more may still take its whole timeout.
    budget = max(1.0, soft - settings.webhook_timeout - 1.0)
    return relay.run(budget).attempted


_RELAYS: dict[int, Any] = {}


def _relay(rt: Any) -> Any:
    """One relay (its HTTP client and targets) per runtime, reused by every beat tick."""
    from wxrecon.engine.relay import relay_from

    relay = _RELAYS.get(id(rt))
    if relay is None:
        _RELAYS.clear()
        relay = _RELAYS[id(rt)] = relay_from(rt.db, rt.settings, app)
    return relay


@app.task(name="wxrecon.snapshot_ledgers", base=WxreconTask, queue=SWEEP_QUEUE)
def snapshot_ledgers(mchid: Any = None) -> dict[str, int]:
    """Beat: snapshot and check the ledgers with recent activity (engine/ledger.py); at most
    engine.ledger.MAX_PER_ROUND ledgers a tick, on the balance endpoint's own rate key."""
    from wxrecon.engine import ledger
    from wxrecon.store.sealed import SealError

    if mchid is not None and (not isinstance(mchid, str) or not mchid.isdigit() or len(mchid) > 32):
        log.error("snapshot_ledgers refused: mchid must be digits (at most 32)")
        return {"taken": 0}
    rt = runtime.get()
    try:
        # the balance query is an ordinary merchant's: the reductions' default caller signs
        client: Any = rt.client(rt.settings.reduction_caller)
        done = ledger.run(rt.db, client, rt.settings, mchid)
    except SealError as exc:
        log.warning("ledger snapshots skipped: %s", exc)
        return {"taken": 0}
    return {
        "taken": done.taken,
        "failed": done.failed,
        "deferred": done.deferred,
        "discrepancies": len(done.discrepancies),
    }

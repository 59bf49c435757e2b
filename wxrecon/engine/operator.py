"""Operator actions: retry, re-query, in bulk. Each is one transaction that locks and
re-reads the order, checks the action against the state table, writes it and records who
and why: final states change only here, and never silently.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from wxrecon.domain.errors import IllegalTransition, OrderNotFound
from wxrecon.domain.kinds import OrderKind
from wxrecon.engine.resolution import supersede
from wxrecon.engine.steps import moved
from wxrecon.store import sql, unit
from wxrecon.store.db import Database
from wxrecon.store.rows import Row, row_from

log = logging.getLogger(__name__)


def _operator_write(
    db: Database,
    kind: OrderKind,
    order_id: int,
    target: Callable[[Row], str],
    values: Mapping[str, Any],
    *,
    actor: str,
    reason: str,
    now: datetime,
) -> str:
    """Lock, re-read, decide, write and record an operator action in one transaction."""
    if not actor:
        raise ValueError("an operator action needs an actor")
    with db.begin() as conn:
        found = sql.lock_row(conn, kind.model, order_id)
        if found is None:
            raise OrderNotFound(f"no {kind} #{order_id}")
        row = row_from(kind.row, found)
        dst = target(row)  # raises IllegalTransition when not allowed
        write = unit.prepare(
            db, kind.model, row, dst, values, reason=reason, now=now, actor=actor, note=True
        )
        if not write.run(conn):
            raise IllegalTransition(f"{kind} #{order_id} changed meanwhile; try again")
        if row.state == kind.review and dst != row.state:
            supersede(conn, kind, row, dst, actor, now)  # a pending resolution is moot now
    moved(write)
    log.info("%s #%s %s -> %s by %s: %s", kind, order_id, row.state, dst, actor, reason)
    return dst


def _restart(now: datetime) -> dict[str, Any]:
    return {
        "attempts": 0,
        "next_poll_at": now,
        "claimed_until": None,
        "claim_token": None,
    }


def retry(
    db: Database,
    kind: OrderKind,
    order_id: int,
    *,
    actor: str,
    why: str,
    force: bool = False,
    now: datetime | None = None,
) -> str:
    """Put an order in review (or REJECTED; with ``force``, a final one) back to work: a
    reduction to RECEIVED if it was never sent, else SUBMITTED (queried first, re-entered
    only if the provider has no trace); a bill to TRACKING. Returns the new state."""
    now = now or db.now()
    values = _restart(now)
    if kind.request is not None:
        values["refusal"] = None  # the operator asks for a fresh look, not the old verdict
    return _operator_write(
        db,
        kind,
        order_id,
        lambda row: kind.retry_target(row, force),
        values,
        actor=actor,
        reason=f"operator retry: {why}" if why else "operator retry",
        now=now,
    )


def requery(
    db: Database,
    kind: OrderKind,
    order_id: int,
    *,
    actor: str,
    why: str = "",
    now: datetime | None = None,
) -> str:
    """Make an in-flight order due now (dropping any claim); recorded as an event."""

    def target(row: Row) -> str:
        if row.state not in kind.active:
            raise IllegalTransition(f"order is {row.state}, not in flight: use retry instead")
        return row.state

    now = now or db.now()
    return _operator_write(
        db,
        kind,
        order_id,
        target,
        {"next_poll_at": now, "claimed_until": None, "claim_token": None},
        actor=actor,
        reason=f"operator re-query: {why}" if why else "operator re-query",
        now=now,
    )


@dataclass
class BulkResult:
    retried: list[int] = field(default_factory=list)
    skipped: dict[int, str] = field(default_factory=dict)  # id -> why not
    stopped: bool = False  # interrupted before the end


def retry_each(
    db: Database,
    kind: OrderKind,
    ids: Sequence[int],
    *,
    actor: str,
    why: str,
    force: bool = False,
    now: datetime | None = None,
    done: Callable[[int], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> BulkResult:
    """Retry each of ``ids`` in its own recorded transaction; an order that changed meanwhile
    (or is gone) is skipped with why, and the rest go on. ``done(id)`` after each; when
    ``stop()`` turns true the loop ends before the next order (each one done stays done,
    so running it again retries only what is still in the state)."""
    result = BulkResult()
    for order_id in ids:
        if stop is not None and stop():
            result.stopped = True
            break
        try:
            retry(db, kind, order_id, actor=actor, why=why, force=force, now=now)
        except (IllegalTransition, OrderNotFound) as exc:
            result.skipped[order_id] = str(exc)
        else:
            result.retried.append(order_id)
        if done is not None:
            done(order_id)
    return result


def retry_many(
    db: Database,
    kind: OrderKind,
    *,
    actor: str,
    why: str,
    states: Sequence[str] | None = None,
    where: Mapping[str, Any] | None = None,
    force: bool = False,
    limit: int | None = None,
    now: datetime | None = None,
) -> BulkResult:
    """Retry every order matching the filter (by default: in review)."""
    ids = sql.ids_in_states(db, kind.model, states or [kind.review], where or {}, limit)
    return retry_each(db, kind, ids, actor=actor, why=why, force=force, now=now)

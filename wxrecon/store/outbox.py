"""The outbox's statements: a refusal's own row, the relay's claim and its verdicts, and the
operators' reads and re-deliveries. (An order's outcome row is written by ``store.unit`` in
the transaction of its compare-and-set.)

The claim works like the sweeps' (a lease that is also the next due time, SKIP LOCKED on
PostgreSQL) and keeps each order's events in order: an event is claimable only when no
older event of its order is still pending.

Written for PostgreSQL's planner, whose statistics see the pending index as nearly empty
(its live entries are few) when it holds thousands of dead ones between two vacuums (every
delivered event leaves two). The claim's predicate on ``delivery`` is the partial indexes'
literal text, so even a prepared statement's generic plan can use them
(``models.active_predicate``, for the same reason); the older-event check cannot be served
by the pending index, which would be scanned whole for every candidate, so it looks its
order up in ``ix_outcomes_order_key_id``; verdicts find their rows by primary key and claim
token only (docs/benchmarks.md has what the other plans cost).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, and_, delete, exists, func, select, text, update
from sqlalchemy.orm import aliased

from wxrecon.store import sql
from wxrecon.store.db import Database
from wxrecon.store.models import Outcome
from wxrecon.store.sql import upsert

T = cast(Table, Outcome.__table__)
PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"
DELIVERIES = (PENDING, DELIVERED, DEAD)
# The partial indexes' predicates, as text (see the module's docstring).
IS_PENDING = text(f"outcomes.delivery = '{PENDING}'")
UNDELIVERED = text(f"outcomes.delivery <> '{DELIVERED}'")


@dataclass(frozen=True)
class Claimed:
    """One claimed event: what to send, and which targets already have it."""

    id: int
    event_id: str
    payload: str
    attempts: int
    sent: frozenset[str]  # target names already delivered to ("task", "webhook")


def insert_refusal(db: Database, row: Mapping[str, Any]) -> bool:
    """A refused intake's row in its own transaction; False when this refusal (same event
    id: the same message redelivered) is recorded already."""
    with db.begin() as conn:
        stmt = (
            upsert(conn, Outcome)
            .values(dict(row))
            .on_conflict_do_nothing(index_elements=["event_id"])
        )
        return bool(conn.execute(stmt.returning(T.c.id)).first())


def _claimable(now: datetime) -> Any:
    older = aliased(Outcome)
    blocked = exists().where(
        and_(
            older.order_key == T.c.order_key,
            older.id < T.c.id,
            # Not the partial predicate's text on purpose: only the order's own index fits.
            func.coalesce(older.delivery, "") == PENDING,
        )
    )
    # Most overdue first, in the pending index's order: the scan stops at the limit.
    return (
        select(T.c.id)
        .where(IS_PENDING, T.c.next_attempt_at <= now, ~blocked)
        .order_by(T.c.next_attempt_at, T.c.id)
    )


def claim_statement(db: Database, token: str, *, limit: int, lease: float, now: datetime) -> Any:
    """The claim's ``UPDATE … RETURNING`` (apart, so a test can read PostgreSQL's plan)."""
    due = _claimable(now).limit(limit)
    values = {"next_attempt_at": now + timedelta(seconds=lease), "claim_token": token}
    if db.is_postgresql:
        cte = due.with_for_update(skip_locked=True, of=T).cte("due")
        stmt = update(T).where(T.c.id == cte.c.id)
    else:
        stmt = update(T).where(T.c.id.in_(due.scalar_subquery()))
    cols = (T.c.id, T.c.event_id, T.c.payload, T.c.attempts, T.c.task_sent_at, T.c.webhook_sent_at)
    return stmt.values(**values).returning(*cols)


def claim(db: Database, token: str, *, limit: int, lease: float, now: datetime) -> list[Claimed]:
    """Lease up to ``limit`` due events (the oldest pending one of each order) under
    ``token``, committed; a dead relay's claims come back when the lease runs out."""
    with db.begin() as conn:
        rows = conn.execute(claim_statement(db, token, limit=limit, lease=lease, now=now)).all()
    out = [
        Claimed(
            r.id,
            r.event_id,
            r.payload,
            r.attempts,
            frozenset(
                name
                for name, at in (("task", r.task_sent_at), ("webhook", r.webhook_sent_at))
                if at is not None
            ),
        )
        for r in rows
    ]
    return sorted(out, key=lambda c: c.id)


def record(db: Database, event: Claimed, token: str, values: Mapping[str, Any]) -> bool:
    """Write a delivery attempt's verdict, if the claim is still ours."""
    return record_many(db, token, [(event, values)])[0]


def record_many(
    db: Database, token: str, verdicts: Sequence[tuple[Claimed, Mapping[str, Any]]]
) -> list[bool]:
    """Write several attempts' verdicts in one transaction (one commit, not one per event);
    for each, whether the claim was still ours. On PostgreSQL the verdicts of one shape
    (delivered, retried, dead: the same columns) go as one statement.

    A row is found by id and claim token alone: a token is set only on a pending row (the
    claim) and cleared by every write of ``delivery`` (verdicts, ``redeliver``), so it still
    says "pending, and ours"."""
    with db.begin() as conn:
        if not db.is_postgresql:
            won = []
            for event, values in verdicts:
                stmt = (
                    update(T).where(T.c.id == event.id, T.c.claim_token == token).values(**values)
                )
                won.append(conn.execute(stmt).rowcount == 1)
            return won
        shapes: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for event, values in verdicts:
            shapes.setdefault(tuple(sorted(values)), []).append({"id": event.id, **values})
        where = (("claim_token", token),)
        updated: set[int] = set()
        for keys, params in shapes.items():
            updated |= sql.update_many(conn, T.name, keys, params, where)
    return [event.id in updated for event, _ in verdicts]


def release(db: Database, ids: Sequence[int], token: str, now: datetime) -> None:
    """Give back claims not attempted (out of time): due again at once."""
    if not ids:
        return
    stmt = (
        update(T)
        .where(T.c.id.in_(list(ids)), T.c.claim_token == token)  # still pending and ours
        .values(next_attempt_at=now, claim_token=None)
    )
    with db.begin() as conn:
        conn.execute(stmt)


def redeliver(
    db: Database,
    *,
    ids: Sequence[int] = (),
    dead_since: datetime | None = None,
    dead: bool = False,
    now: datetime,
) -> list[int]:
    """Make events pending again, due now, to every target (a receiver deduplicates by
    ``event_id``). By id (any state) or every dead one (since ``dead_since``)."""
    stmt = update(T)
    if dead:
        stmt = stmt.where(T.c.delivery == DEAD)
        if dead_since is not None:
            stmt = stmt.where(T.c.occurred_at >= dead_since)
    else:
        stmt = stmt.where(T.c.id.in_(list(ids)))
    stmt = stmt.values(
        delivery=PENDING,
        attempts=0,
        next_attempt_at=now,
        claim_token=None,
        task_sent_at=None,
        webhook_sent_at=None,
        delivered_at=None,
        last_error=None,
    )
    with db.begin() as conn:
        return sorted(conn.execute(stmt.returning(T.c.id)).scalars())


def prune(db: Database, *, delivered_before: datetime, batch: int) -> int:
    """Delete one committed batch of events delivered before ``delivered_before``; how many.
    Pending and dead events are never pruned (they are still owed to an app)."""
    doomed = (
        select(T.c.id)
        .where(T.c.delivery == DELIVERED, T.c.delivered_at < delivered_before)
        .order_by(T.c.id)
        .limit(batch)
    )
    with db.begin() as conn:
        return int(conn.execute(delete(T).where(T.c.id.in_(doomed.scalar_subquery()))).rowcount)


def find(db: Database, ref: str) -> Any:
    """One event by its numeric id or its ``event_id``; None when there is none."""
    where = T.c.id == int(ref) if ref.isdigit() else T.c.event_id == ref
    with db.connect() as conn:
        return conn.execute(select(T).where(where)).mappings().one_or_none()


def listing(
    db: Database,
    *,
    delivery: str | None = None,
    since: datetime | None = None,
    after: int | None = None,
    limit: int = 100,
) -> list[Any]:
    """Events oldest first, filtered by delivery state, time, or a cursor (``after`` id)."""
    stmt = select(T).order_by(T.c.id).limit(limit)
    if delivery is not None:
        stmt = stmt.where(T.c.delivery == delivery)
    if since is not None:
        stmt = stmt.where(T.c.occurred_at >= since)
    if after is not None:
        stmt = stmt.where(T.c.id > after)
    with db.connect() as conn:
        return list(conn.execute(stmt).mappings())


@dataclass(frozen=True)
class Backlog:
    counts: Mapping[str, int]  # pending and dead (delivered ones are not counted)
    oldest_pending: datetime | None


def backlog(db: Database) -> Backlog:
    """Undelivered counts and the oldest pending event's time (for metrics), read through
    the partial index of undelivered rows."""
    with db.connect() as conn:
        counts = {PENDING: 0, DEAD: 0}
        for k, v in conn.execute(
            select(T.c.delivery, func.count()).where(UNDELIVERED).group_by(T.c.delivery)
        ):
            counts[str(k)] = int(v)
        oldest = conn.execute(
            select(func.min(T.c.occurred_at)).where(IS_PENDING)
        ).scalar_one_or_none()
    if isinstance(oldest, str):  # SQLite: an aggregate loses the column's type
        oldest = datetime.fromisoformat(oldest)
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=UTC)
    return Backlog(counts, oldest)

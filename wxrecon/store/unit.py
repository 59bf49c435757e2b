"""The engine's one write path: a compare-and-set on ``(id, version, state)`` plus, when the
state changes (or ``note``), an event row, in one transaction; and the explicit unit of work
a chunk of orders writes through.

On PostgreSQL the UPDATE and the event INSERT are one statement (the INSERT selects from the
UPDATE's RETURNING, so it adds a row only if the compare-and-set won); on SQLite they are
two, under the write lock BEGIN IMMEDIATE takes. A writer that loses the race changes
nothing and is told so. On PostgreSQL, the writes of one commit that share a shape (a chunk's
marks, its held outcomes) go as one statement, their outcome rows as one more
(``sql.cas_many``): per-statement overhead, not the compare-and-set, was the cost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from wxrecon.domain import outcomes
from wxrecon.domain.kinds import kind_of
from wxrecon.domain.outcomes import ENGINE_ACTOR
from wxrecon.store.db import Database
from wxrecon.store.rows import Row, update_row
from wxrecon.store.sql import (
    EVENT_INSERT,
    OUTCOME_INSERT,
    cas_many,
    cas_statement,
    event_params,
)

log = logging.getLogger(__name__)

__all__ = ["ENGINE_ACTOR", "Cas", "Unit", "commit", "prepare"]

# (kind, src, dst) after a won transition: metrics and logs are the caller's business.
OnMoved = Callable[["Cas"], None]


@dataclass(frozen=True)
class Cas:
    """One prepared compare-and-set, ready to run in a transaction."""

    row: Row
    kind: str
    src: str
    to: str | None  # None or ``src``: the state stays
    new_values: dict[str, Any]
    params: dict[str, Any]
    statement: Any
    one_statement: bool  # PostgreSQL: the UPDATE and its event in one statement
    event: bool
    reason: str
    request_id: str | None
    table: str = ""
    keys: tuple[str, ...] = ()  # the columns set, sorted: with the table and event, the shape
    # The outbox row of a write the app is told about (a final or review state, an
    # operator's state change): inserted in the same transaction, only when the write wins.
    outcome: dict[str, Any] | None = None

    @property
    def changed(self) -> bool:
        return self.to is not None and self.to != self.src

    def run(self, conn: Connection) -> bool:
        """Execute on ``conn`` (inside its transaction); True when the compare-and-set won."""
        won = self.apply(conn)
        if won and self.outcome is not None:
            conn.execute(OUTCOME_INSERT, self.outcome)
        return won

    def apply(self, conn: Connection) -> bool:
        """The compare-and-set and its event, without the outcome row."""
        if self.one_statement:
            won = conn.execute(self.statement, self.params).first() is not None
        else:
            won = conn.execute(self.statement, self.params).rowcount == 1
            if won and self.event:
                conn.execute(EVENT_INSERT, self.params)
        return won


def prepare(
    db: Database,
    model: type[Any],
    row: Row,
    to: str | None,
    values: Mapping[str, Any],
    *,
    reason: str,
    now: datetime,
    request_id: str | None = None,
    actor: str = ENGINE_ACTOR,
    note: bool = False,
) -> Cas:
    """Build the statement and parameters of one compare-and-set (the transition itself is
    checked by the caller, who knows the kind's table)."""
    src = row.state
    changed = to is not None and to != src
    new_values = {**values, "version": row.version + 1, "updated_at": now}
    if changed:
        new_values["state"] = to
    params = {f"v_{k}": v for k, v in new_values.items()}
    params.update(cas_id=row.id, cas_version=row.version, cas_state=src)
    event = changed or note
    if event:
        dst = src if to is None else str(to)
        params.update(event_params(row.KIND, row.id, src, dst, reason, actor, now, request_id))
    one_statement = event and db.is_postgresql
    keys = tuple(sorted(new_values))
    return Cas(
        row=row,
        kind=row.KIND,
        src=src,
        to=to,
        new_values=new_values,
        params=params,
        statement=cas_statement(model.__tablename__, keys, one_statement),
        one_statement=one_statement,
        event=event,
        reason=reason,
        request_id=request_id,
        table=model.__tablename__,
        keys=keys,
        outcome=_outcome(row, to, new_values, reason, actor, request_id, now),
    )


def _outcome(
    row: Row,
    to: str | None,
    new_values: dict[str, Any],
    reason: str,
    actor: str,
    request_id: str | None,
    now: datetime,
) -> dict[str, Any] | None:
    kind = kind_of(row)
    type_ = outcomes.outcome_type(kind, row.state, to, actor)
    if type_ is None:
        return None
    event = outcomes.order_event(
        kind,
        row,
        new_values,
        type_=type_,
        reason=reason,
        actor=actor,
        request_id=request_id,
        now=now,
    )
    return outcomes.outbox_row(event, now)


def commit(db: Database, writes: Sequence[Cas], on_moved: OnMoved | None = None) -> list[bool]:
    """Run ``writes`` in one transaction (one commit); then each won write updates its row
    and is reported. Returns, per write, whether it won."""
    with db.begin() as conn:
        won = _run_all(conn, writes) if db.is_postgresql else [w.run(conn) for w in writes]
    for w, ok in zip(writes, won, strict=True):
        if not ok:
            log.info("lost a race on %s #%s; leaving it to the winner", w.kind, w.row.id)
            continue
        update_row(w.row, w.new_values)
        if on_moved is not None:
            on_moved(w)
    return won


def _run_all(conn: Connection, writes: Sequence[Cas]) -> list[bool]:
    """PostgreSQL: ``writes`` grouped by shape, each group of two or more one ``cas_many``
    statement, then every won write's outcome row in one executemany. Writes that touch one
    row twice keep their order, one statement each (the second sees the first's version)."""
    if len(writes) < 2 or len({(w.table, w.row.id) for w in writes}) < len(writes):
        return [w.run(conn) for w in writes]
    groups: dict[tuple[str, tuple[str, ...], bool], list[int]] = {}
    for i, w in enumerate(writes):
        groups.setdefault((w.table, w.keys, w.event), []).append(i)
    won = [False] * len(writes)
    for (table, keys, event), members in groups.items():
        if len(members) == 1:
            won[members[0]] = writes[members[0]].apply(conn)
            continue
        ids = cas_many(conn, table, keys, event, [writes[i].params for i in members])
        for i in members:
            won[i] = writes[i].row.id in ids
    outcomes = [w.outcome for w, ok in zip(writes, won, strict=True) if ok and w.outcome]
    if outcomes:
        conn.execute(OUTCOME_INSERT, outcomes)
    return won


@dataclass
class Unit:
    """The writes of one chunk of orders. An outcome write is held and committed with the
    chunk's next write (one transaction), or at the end of the chunk; a write ``ahead`` (the
    mark made before a POST leaves) always commits before returning. A held outcome that is
    lost (the worker dies first) only leaves its order as it was, claimed, so its lease runs
    out and the sweep asks the provider again."""

    db: Database
    on_moved: OnMoved | None = None
    hold: bool = True  # False: every write commits at once (a single order's step)
    # What to write instead of a write the database refuses (e.g. an answer's field too long
    # for its column): an attempt spent and the claim released, so the order can never stall
    # on one bad answer; None: nothing (its lease returns it).
    fallback: Callable[[Cas], Cas | None] | None = None
    pending: list[Cas] = field(default_factory=list)

    def put(self, write: Cas, *, ahead: bool = False) -> bool:
        """Hold ``write``, or commit it with what is held; True unless it lost a race."""
        if self.hold and not ahead:
            self.pending.append(write)
            return True
        writes, self.pending = [*self.pending, write], []
        try:
            return commit(self.db, writes, self.on_moved)[-1]
        except DBAPIError:
            if ahead:  # a mark before a POST: nothing is sent unless it commits
                self._each(writes[:-1])
                raise
            # One bad write must not take the others with it: each on its own.
            self._each(writes)
            return True

    def state_of(self, row: Row) -> str:
        """The row's state once its held outcome (if any) is committed."""
        for write in reversed(self.pending):
            if write.row is row:
                return str(write.to or write.src)
        return row.state

    def flush(self) -> None:
        """Commit the held writes (the end of the chunk); any later write commits at once."""
        writes, self.pending, self.hold = self.pending, [], False
        if not writes:
            return
        try:
            commit(self.db, writes, self.on_moved)
        except DBAPIError:
            self._each(writes)

    def _each(self, writes: Sequence[Cas]) -> None:
        for w in writes:
            try:
                commit(self.db, [w], self.on_moved)
            except DBAPIError as exc:
                cause = type(exc.orig).__name__ if exc.orig is not None else type(exc).__name__
                log.error("writing the outcome of %s #%s failed (%s)", w.kind, w.row.id, cause)
                instead = self.fallback(w) if self.fallback is not None else None
                if instead is None:
                    continue
                try:
                    commit(self.db, [instead], self.on_moved)
                except DBAPIError:
                    log.error("%s #%s: its lease will return it", w.kind, w.row.id)

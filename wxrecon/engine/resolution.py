"""Four-eyes resolution of an order in review: propose (after a fresh signed query), approve
by a different person, withdraw, list. The rules are ``domain/resolution.py``; this module
does the I/O, each action in one transaction that locks and re-reads the order.

Roles are the caller's: the CLI passes free-text names, the web layer its token's name after
checking the token's role (operator proposes and withdraws, approver approves). These
functions enforce only what does not depend on roles: evidence, the fresh query, the order
still in review at the same version, and that the approver is not the proposer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from wxrecon.domain import resolution as rules
from wxrecon.domain.errors import OrderNotFound
from wxrecon.domain.kinds import OrderKind
from wxrecon.domain.resolution import ResolutionRefused, Status
from wxrecon.engine.steps import Provider, moved
from wxrecon.logs import redact
from wxrecon.store import resolutions as stored
from wxrecon.store import sql, unit
from wxrecon.store.db import Database
from wxrecon.store.rows import Row, row_from
from wxrecon.wechatpay import errors

log = logging.getLogger(__name__)

__all__ = [
    "Resolution",
    "ResolutionRefused",
    "approve",
    "pending",
    "resolutions",
    "resolve",
    "supersede",
    "withdraw",
]


@dataclass(frozen=True)
class Resolution:
    """A stored resolution; ``order_state`` is the order's state after the action."""

    id: int
    kind: str
    order_id: int
    order_version: int
    status: str
    target_state: str
    evidence: str
    amount: int | None
    quota_change_no: str | None
    proposed_by: str
    proposed_at: datetime
    query_request_id: str | None
    query_said: str
    decided_by: str | None
    decided_at: datetime | None
    order_state: str | None = None

    @property
    def settled(self) -> bool:
        """The resolve-time query gave the final answer: no approval is needed."""
        return self.status == Status.SETTLED

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for key in ("proposed_at", "decided_at"):
            out[key] = out[key].isoformat() if out[key] is not None else None
        return out


def _view(mapping: Any, order_state: str | None = None) -> Resolution:
    names = [f.name for f in fields(Resolution) if f.name != "order_state"]
    return Resolution(**{n: mapping[n] for n in names}, order_state=order_state)


def _locked(conn: Connection, kind: OrderKind, order_id: int) -> Row:
    found = sql.lock_row(conn, kind.model, order_id)
    if found is None:
        raise OrderNotFound(f"no {kind} #{order_id}")
    return row_from(kind.row, found)


def _note(
    conn: Connection,
    kind: OrderKind,
    row: Row,
    reason: str,
    actor: str,
    now: datetime,
    request_id: str | None = None,
) -> None:
    """An event about the order that changes nothing of it (no version bump: a pending
    approval's compare-and-set key stays valid)."""
    state = row.state
    params = sql.event_params(str(kind.name), row.id, state, state, reason, actor, now, request_id)
    conn.execute(sql.EVENT_INSERT, params)


def resolve(
    db: Database,
    client: Provider,
    kind: OrderKind,
    order_id: int,
    *,
    state: str,
    evidence: str,
    actor: str,
    amount: int | None = None,
    quota_change_no: str | None = None,
    now: datetime | None = None,
) -> Resolution:
    """Propose to resolve an order in review to ``state``, after a fresh query.

    If the query gives a final answer that agrees and is complete, it is recorded as the sweep
    would (the returned resolution is ``settled``; its ``order_state`` is the provider's);
    else the proposal is stored ``pending`` and the order does not change. Raises
    ResolutionRefused (bad evidence or state, not in review, one already pending, no answer
    from the provider, the order changed meanwhile) and OrderNotFound."""
    actor = rules.check_actor(actor)
    evidence = redact(rules.check_evidence(evidence))
    rows = sql.load_rows(db, kind.model, kind.row, (order_id,))
    row = rows.get(order_id)
    if row is None:
        raise OrderNotFound(f"no {kind} #{order_id}")
    proposal = rules.propose(
        kind, row, state, evidence, amount=amount, quota_change_no=quota_change_no
    )
    with db.connect() as conn:
        already = stored.pending_of(conn, str(kind.name), order_id)
    if already is not None:
        raise _already(kind, already)
    try:
        outcome: Any = kind.query(client, row)
    except errors.WeChatPayError as exc:
        outcome = exc
    verdict = rules.verdict(kind, row, outcome)  # raises when the provider gave no answer
    now = now or db.now()
    status = Status.PENDING if verdict.write is None else Status.SETTLED
    write: unit.Cas | None = None
    try:
        with db.begin() as conn:
            locked = _locked(conn, kind, order_id)
            if locked.state != row.state or locked.version != row.version:
                raise ResolutionRefused(f"{kind} #{order_id} changed meanwhile; look again")
            values = rules.row_values(kind, locked, proposal, verdict, actor, now, status)
            resolution_id = stored.add(conn, values)
            view = _view({"id": resolution_id, **values}, locked.state)
            if verdict.write is None:
                reason = rules.status_reason(view, Status.PENDING, actor)
                _note(conn, kind, locked, reason, actor, now, verdict.request_id)
            else:
                final = verdict.write
                assert final.to is not None and final.to in rules.targets(kind, locked.state)
                reason = (
                    f"{final.reason}; resolution #{resolution_id} to {proposal.target} by "
                    f"{actor} recorded as settled; evidence: {evidence}"
                )
                write = unit.prepare(
                    db,
                    kind.model,
                    locked,
                    final.to,
                    final.values,
                    reason=reason,
                    now=now,
                    request_id=final.request_id,
                    actor=actor,
                )
                if not write.run(conn):
                    raise ResolutionRefused(f"{kind} #{order_id} changed meanwhile; look again")
                view = _view({"id": resolution_id, **values}, str(final.to))
    except IntegrityError:  # another proposal won the race to the pending slot
        with db.connect() as conn:
            already = stored.pending_of(conn, str(kind.name), order_id)
        if already is None:
            raise
        raise _already(kind, already) from None
    if write is not None:
        moved(write)
        log.info("%s #%s settled by the resolve-time query: %s", kind, order_id, view.order_state)
    else:
        log.info("%s #%s: resolution #%s to %s pending", kind, order_id, view.id, view.target_state)
    return view


def _already(kind: OrderKind, pending_row: Any) -> ResolutionRefused:
    return ResolutionRefused(
        f"resolution #{pending_row['id']} of {kind} #{pending_row['order_id']} is already "
        f"pending (by {pending_row['proposed_by']}): approve or withdraw it first"
    )


def _pending_for(
    conn: Connection, kind: OrderKind, order_id: int, resolution_id: int | None
) -> Any:
    if resolution_id is None:
        found = stored.pending_of(conn, str(kind.name), order_id)
        if found is None:
            raise ResolutionRefused(f"{kind} #{order_id} has no pending resolution")
        return found
    found = stored.get(conn, resolution_id)
    if found is None or found["kind"] != str(kind.name) or found["order_id"] != order_id:
        raise ResolutionRefused(f"{kind} #{order_id} has no resolution #{resolution_id}")
    return found


def approve(
    db: Database,
    kind: OrderKind,
    order_id: int,
    *,
    actor: str,
    resolution_id: int | None = None,
    now: datetime | None = None,
) -> Resolution:
    """A different person confirms the order's pending resolution (or ``resolution_id``,
    which must be that one): the final state is written by compare-and-set with its event
    (naming proposer, approver and the evidence) and its outcome. An order no longer in review
    at the proposal's version supersedes it (recorded) and the approval is refused."""
    actor = rules.check_actor(actor)
    now = now or db.now()
    stale = ""
    with db.begin() as conn:
        row = _locked(conn, kind, order_id)
        res = _view(_pending_for(conn, kind, order_id, resolution_id))
        rules.check_open(res)
        if rules.moved(kind, res, row):
            stale = f"the order is now {row.state} at version {row.version}"
            if stored.decide(conn, res.id, Status.SUPERSEDED, actor, now):
                reason = rules.status_reason(res, Status.SUPERSEDED, actor, stale)
                _note(conn, kind, row, reason, actor, now)
        else:
            rules.may_approve(kind, res, row, actor)
            final = rules.approval(kind, res, row, actor)
            assert final.to is not None and final.to in rules.targets(kind, row.state)
            write = unit.prepare(
                db,
                kind.model,
                row,
                final.to,
                final.values,
                reason=final.reason,
                now=now,
                request_id=final.request_id,
                actor=actor,
            )
            if not write.run(conn) or not stored.decide(conn, res.id, Status.APPROVED, actor, now):
                raise ResolutionRefused(f"{kind} #{order_id} changed meanwhile; look again")
    if stale:  # raised only now: the superseding is committed
        raise ResolutionRefused(
            f"{kind} #{order_id} changed since resolution #{res.id} was proposed ({stale}): "
            "it is superseded; propose again if it is still needed"
        )
    moved(write)
    log.info(
        "%s #%s resolved %s: proposed by %s, approved by %s",
        kind,
        order_id,
        res.target_state,
        res.proposed_by,
        actor,
    )
    return _view(
        {
            **res.as_dict(),
            "proposed_at": res.proposed_at,
            "status": Status.APPROVED,
            "decided_by": actor,
            "decided_at": now,
        },
        str(final.to),
    )


def withdraw(
    db: Database,
    kind: OrderKind,
    order_id: int,
    *,
    actor: str,
    why: str = "",
    resolution_id: int | None = None,
    now: datetime | None = None,
) -> Resolution:
    """Take back the order's pending resolution (anyone the caller lets act); the order stays
    as it is, and the withdrawal is an event."""
    actor = rules.check_actor(actor)
    why = redact(" ".join(str(why or "").split()))[: rules.MAX_EVIDENCE]
    now = now or db.now()
    with db.begin() as conn:
        row = _locked(conn, kind, order_id)
        res = _view(_pending_for(conn, kind, order_id, resolution_id), row.state)
        rules.check_open(res)
        if not stored.decide(conn, res.id, Status.WITHDRAWN, actor, now):
            raise ResolutionRefused(f"resolution #{res.id} changed meanwhile; look again")
        _note(conn, kind, row, rules.status_reason(res, Status.WITHDRAWN, actor, why), actor, now)
    log.info("%s #%s: resolution #%s withdrawn by %s", kind, order_id, res.id, actor)
    return _view(
        {
            **res.as_dict(),
            "proposed_at": res.proposed_at,
            "status": Status.WITHDRAWN,
            "decided_by": actor,
            "decided_at": now,
        },
        row.state,
    )


def supersede(
    conn: Connection, kind: OrderKind, row: Row, to: str, actor: str, now: datetime
) -> None:
    """In an operator's transaction that takes ``row`` out of review to ``to``: its pending
    resolution is superseded (and says so in an event)."""
    for res_id in stored.supersede_pending(conn, str(kind.name), row.id, actor, now):
        reason = f"resolution #{res_id} superseded by {actor}: the order left review for {to}"
        params = sql.event_params(str(kind.name), row.id, to, to, reason, actor, now)
        conn.execute(sql.EVENT_INSERT, params)


def resolutions(
    db: Database,
    kind: OrderKind,
    *,
    order_id: int | None = None,
    status: str | None = None,
    limit: int = 100,
) -> list[Resolution]:
    """Resolutions of ``kind`` (of one order, in one status), newest first."""
    if status is not None and status not in set(Status):
        raise ResolutionRefused(f"status: one of {', '.join(Status)}")
    with db.connect() as conn:
        found = stored.listed(conn, str(kind.name), order_id=order_id, status=status, limit=limit)
    return [_view(m) for m in found]


def pending(
    db: Database, kind: OrderKind, *, order_id: int | None = None, limit: int = 100
) -> list[Resolution]:
    """The pending resolutions of ``kind`` (the approvers' queue), newest first."""
    return resolutions(db, kind, order_id=order_id, status=Status.PENDING, limit=limit)

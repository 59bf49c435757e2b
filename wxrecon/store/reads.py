"""The read side for the CLI and apps: get and list orders, their events, and stats.

Plain functions over a SQLAlchemy session (use ``Database.read()``). ``*_dict`` helpers give
JSON-ready dicts with ``bal_account_no`` masked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from wxrecon.domain.errors import Ambiguous, OrderNotFound
from wxrecon.domain.states import BILL_ACTIVE, REDUCTION_ACTIVE, Kind
from wxrecon.store import sealed
from wxrecon.store.models import CompensationBill, Event, SpecialReduction, utcnow
from wxrecon.wechatpay.keys import mask


def get_reduction(
    session: Session,
    *,
    id: int | None = None,
    out_request_no: str | None = None,
    mchid: str | None = None,
) -> SpecialReduction:
    """One reduction by id, or by out_request_no (plus mchid when it is ambiguous)."""
    stmt = select(SpecialReduction)
    if id is not None:
        stmt = stmt.where(SpecialReduction.id == id)
    elif out_request_no is not None:
        stmt = stmt.where(SpecialReduction.out_request_no == out_request_no)
        if mchid is not None:
            stmt = stmt.where(SpecialReduction.mchid == mchid)
    else:
        raise ValueError("give an id or an out_request_no")
    rows = list(session.execute(stmt.limit(2)).scalars())
    what = (
        f"#{id}"
        if id is not None
        else f"{out_request_no}" + (f" for mchid {mchid}" if mchid else "")
    )
    if not rows:
        raise OrderNotFound(f"no reduction {what}")
    if len(rows) > 1:
        raise Ambiguous(f"reduction {what} exists for several merchants: give --mchid")
    return rows[0]


def get_bill(
    session: Session,
    *,
    id: int | None = None,
    out_bill_no: str | None = None,
) -> CompensationBill:
    stmt = select(CompensationBill)
    if id is not None:
        stmt = stmt.where(CompensationBill.id == id)
    elif out_bill_no is not None:
        stmt = stmt.where(CompensationBill.out_bill_no == out_bill_no)
    else:
        raise ValueError("give an id or an out_bill_no")
    row = session.execute(stmt).scalar_one_or_none()
    if row is None:
        raise OrderNotFound(f"no bill {'#' + str(id) if id is not None else out_bill_no}")
    return row


def list_reductions(
    session: Session,
    *,
    states: Sequence[str] | None = None,
    mchid: str | None = None,
    limit: int = 100,
    offset: int = 0,
    oldest_first: bool = False,
) -> list[SpecialReduction]:
    stmt = select(SpecialReduction)
    if states:
        stmt = stmt.where(SpecialReduction.state.in_([str(s) for s in states]))
    if mchid is not None:
        stmt = stmt.where(SpecialReduction.mchid == mchid)
    order = SpecialReduction.id.asc() if oldest_first else SpecialReduction.id.desc()
    return list(session.execute(stmt.order_by(order).limit(limit).offset(offset)).scalars())


def list_bills(
    session: Session,
    *,
    states: Sequence[str] | None = None,
    limit: int = 100,
    offset: int = 0,
    oldest_first: bool = False,
) -> list[CompensationBill]:
    stmt = select(CompensationBill)
    if states:
        stmt = stmt.where(CompensationBill.state.in_([str(s) for s in states]))
    order = CompensationBill.id.asc() if oldest_first else CompensationBill.id.desc()
    return list(session.execute(stmt.order_by(order).limit(limit).offset(offset)).scalars())


def events_of(session: Session, kind: Kind | str, order_id: int) -> list[Event]:
    """An order's history, oldest first."""
    stmt = (
        select(Event).where(Event.kind == str(kind), Event.order_id == order_id).order_by(Event.id)
    )
    return list(session.execute(stmt).scalars())


def reduction_events(session: Session, order_id: int) -> list[Event]:
    return events_of(session, Kind.REDUCTION, order_id)


def bill_events(session: Session, order_id: int) -> list[Event]:
    return events_of(session, Kind.BILL, order_id)


@dataclass
class Stats:
    reductions: dict[str, int] = field(default_factory=dict)  # state -> count
    reduction_amounts: dict[str, int] = field(default_factory=dict)  # state -> fen
    bills: dict[str, int] = field(default_factory=dict)
    reductions_due: int = 0  # in flight and due now
    bills_due: int = 0
    oldest_due: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "reductions": self.reductions,
            "reduction_amounts": self.reduction_amounts,
            "bills": self.bills,
            "reductions_due": self.reductions_due,
            "bills_due": self.bills_due,
            "oldest_due": _iso(self.oldest_due),
        }


def stats(session: Session, *, now: datetime | None = None) -> Stats:
    now = now or utcnow()
    out = Stats()
    for state, count, amount in session.execute(
        select(
            SpecialReduction.state,
            func.count(),
            func.coalesce(func.sum(SpecialReduction.amount), 0),
        ).group_by(SpecialReduction.state)
    ):
        out.reductions[state] = count
        out.reduction_amounts[state] = int(amount)
    for state, count in session.execute(
        select(CompensationBill.state, func.count()).group_by(CompensationBill.state)
    ):
        out.bills[state] = count
    due_r = select(func.count(), func.min(SpecialReduction.next_poll_at)).where(
        SpecialReduction.state.in_(sorted(REDUCTION_ACTIVE)), SpecialReduction.next_poll_at <= now
    )
    out.reductions_due, oldest_r = session.execute(due_r).one()
    due_b = select(func.count(), func.min(CompensationBill.next_poll_at)).where(
        CompensationBill.state.in_(sorted(BILL_ACTIVE)), CompensationBill.next_poll_at <= now
    )
    out.bills_due, oldest_b = session.execute(due_b).one()
    candidates = [t for t in (oldest_r, oldest_b) if t is not None]
    out.oldest_due = min(candidates) if candidates else None
    return out


def reductions_by_merchant(session: Session) -> dict[str, dict[str, int]]:
    """``mchid -> state -> count``."""
    out: dict[str, dict[str, int]] = {}
    for mchid, state, count in session.execute(
        select(SpecialReduction.mchid, SpecialReduction.state, func.count()).group_by(
            SpecialReduction.mchid, SpecialReduction.state
        )
    ):
        out.setdefault(mchid, {})[state] = count
    return out


def orders_by_caller(session: Session) -> dict[str, dict[str, int]]:
    """``caller -> kind -> count`` (which merchant profile signs how many orders)."""
    out: dict[str, dict[str, int]] = {}
    for kind, model in (("reduction", SpecialReduction), ("bill", CompensationBill)):
        for caller, count in session.execute(
            select(model.caller, func.count()).group_by(model.caller)
        ):
            out.setdefault(caller, {})[kind] = count
    return out


def oldest_overdue(session: Session, now: datetime) -> dict[str, Any] | None:
    """The in-flight order of any kind whose next query is the most overdue, or None."""
    from wxrecon.domain.kinds import KINDS

    oldest: dict[str, Any] | None = None
    for name, kind in KINDS.items():
        model = kind.model
        row = session.execute(
            select(model)
            .where(model.state.in_(sorted(kind.active)), model.next_poll_at <= now)
            .order_by(model.next_poll_at)
            .limit(1)
        ).scalar_one_or_none()
        if row is None:
            continue
        overdue = (now - row.next_poll_at).total_seconds()
        if oldest is None or overdue > oldest["overdue_seconds"]:
            oldest = {
                "kind": name,
                "id": row.id,
                "number": kind.number(row).split("/")[-1],
                "state": row.state,
                "overdue_seconds": overdue,
            }
    return oldest


def finalised_since(session: Session, since: datetime) -> dict[str, int]:
    """``kind -> orders that reached a final state since ``since`` (by their events)."""
    from wxrecon.domain.kinds import KINDS

    finals = sorted({s for kind in KINDS.values() for s in kind.final})
    rows = session.execute(
        select(Event.kind, func.count())
        .where(Event.at >= since, Event.to_state.in_(finals))
        .group_by(Event.kind)
    ).all()
    return {k: int(v) for k, v in rows}


# -- JSON-ready views ---------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def shown_ledger(row: Any) -> str:
    """The ledger number as the CLI shows it: opened (the process's keys) only to be
    masked to ``6222…1234``; one that does not open says so, never its sealed text."""
    if row.bal_account_hash is None:  # stored before sealing (``wxrecon db seal``)
        return mask(row.bal_account_no)
    try:
        return mask(sealed.current().open(row.bal_account_no, row.mchid, row.out_request_no))
    except sealed.SealError:
        return "(sealed; does not open)"


def reduction_dict(row: SpecialReduction) -> dict[str, Any]:
    return {
        "id": row.id,
        "mchid": row.mchid,
        "caller": row.caller,
        "bal_account_no": shown_ledger(row),
        "out_request_no": row.out_request_no,
        "reduction_type": row.reduction_type,
        "amount": row.amount,
        "reason": row.reason,
        "state": row.state,
        "provider_state": row.provider_state,
        "fail_reason": row.fail_reason,
        "quota_change_no": row.quota_change_no,
        "success_time": _iso(row.success_time),
        "fail_time": _iso(row.fail_time),
        "attempts": row.attempts,
        "next_poll_at": _iso(row.next_poll_at),
        "last_error": row.last_error,
        "last_request_id": row.last_request_id,
        "submitted_at": _iso(row.submitted_at),
        "created_at": _iso(row.created_at),
        "updated_at": _iso(row.updated_at),
    }


def bill_dict(row: CompensationBill) -> dict[str, Any]:
    return {
        "id": row.id,
        "out_bill_no": row.out_bill_no,
        "caller": row.caller,
        "state": row.state,
        "provider_state": row.provider_state,
        "amount": row.amount,
        "bill_id": row.bill_id,
        "sp_mchid": row.sp_mchid,
        "sponsor_mchid": row.sponsor_mchid,
        "transfer_remark": row.transfer_remark,
        "accept_time": _iso(row.accept_time),
        "success_time": _iso(row.success_time),
        "close_reason": row.close_reason,
        "close_time": _iso(row.close_time),
        "receiver_detail": row.receiver_detail,
        "attempts": row.attempts,
        "next_poll_at": _iso(row.next_poll_at),
        "last_error": row.last_error,
        "last_request_id": row.last_request_id,
        "created_at": _iso(row.created_at),
        "updated_at": _iso(row.updated_at),
    }


def event_dict(event: Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "kind": event.kind,
        "order_id": event.order_id,
        "from_state": event.from_state,
        "to_state": event.to_state,
        "reason": event.reason,
        "request_id": event.request_id,
        "actor": event.actor,
        "at": _iso(event.at),
    }


# -- the web console's reads (any kind: the kind is data) ----------------------------------------


def _mchid_column(model: Any) -> Any:
    return model.mchid if hasattr(model, "mchid") else model.sp_mchid


def list_orders(
    session: Session,
    kind: Any,
    *,
    states: Sequence[str] | None = None,
    mchid: str | None = None,
    since: datetime | None = None,
    search: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[Any], int]:
    """One page of ``kind``'s orders (newest first) and the total that match. ``search`` is
    a prefix of the order's number (out_request_no / out_bill_no)."""
    model = kind.model
    where = []
    if states:
        where.append(model.state.in_([str(s) for s in states]))
    if mchid is not None:
        where.append(_mchid_column(model) == mchid)
    if since is not None:
        where.append(model.created_at >= since)
    if search:
        column = getattr(model, kind.number_fields[-1])
        escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        where.append(column.like(escaped + "%", escape="\\"))
    total = session.execute(select(func.count()).select_from(model).where(*where)).scalar_one()
    rows = session.execute(
        select(model).where(*where).order_by(model.id.desc()).limit(limit).offset(offset)
    ).scalars()
    return list(rows), int(total)


def get_order(session: Session, kind: Any, order_id: int) -> Any:
    row = session.get(kind.model, order_id)
    if row is None:
        raise OrderNotFound(f"no {kind} #{order_id}")
    return row


def order_dict(kind: Any, row: Any) -> dict[str, Any]:
    return reduction_dict(row) if str(kind) == str(Kind.REDUCTION) else bill_dict(row)


def hourly(session: Session, now: datetime, hours: int = 12) -> list[dict[str, Any]]:
    """Per hour over the last ``hours``: orders finalised and error events (an event into a
    review state, or whose reason names an error), from the events table, oldest first."""
    from wxrecon.domain.kinds import KINDS

    finals = {s for k in KINDS.values() for s in k.final}
    reviews = {k.review for k in KINDS.values()}
    start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours - 1)
    buckets: list[dict[str, Any]] = [
        {"hour": (start + timedelta(hours=i)).isoformat(), "finalised": 0, "errors": 0}
        for i in range(hours)
    ]
    rows = session.execute(
        select(Event.at, Event.to_state, Event.reason).where(Event.at >= start)
    ).all()
    for at, to_state, reason in rows:
        at = at if at.tzinfo else at.replace(tzinfo=UTC)
        i = int((at - start).total_seconds() // 3600)
        if not 0 <= i < hours:
            continue
        if to_state in finals:
            buckets[i]["finalised"] += 1
        if to_state in reviews or "error" in (reason or "").lower():
            buckets[i]["errors"] += 1
    return buckets


def provider_errors(session: Session) -> dict[str, int]:
    """The last provider error of orders still open, by its first word (its code)."""
    from wxrecon.domain.kinds import KINDS

    out: dict[str, int] = {}
    for kind in KINDS.values():
        open_states = sorted(set(kind.active) | {kind.review})
        for (err,) in session.execute(
            select(kind.model.last_error).where(
                kind.model.state.in_(open_states), kind.model.last_error.is_not(None)
            )
        ):
            code = (str(err).split() or ["?"])[0].rstrip(":")[:40]
            out[code] = out.get(code, 0) + 1
    return out

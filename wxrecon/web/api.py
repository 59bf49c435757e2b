"""The JSON API, /api/v1: reads over store/reads.py, actions through the engine.

One route set parametrised by the order kind (domain/kinds.py), never a copy per kind.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel, Field

from wxrecon.domain.errors import IllegalTransition, OrderNotFound
from wxrecon.domain.kinds import KINDS, OrderKind
from wxrecon.store import reads, web_tokens
from wxrecon.store.web_tokens import Holder
from wxrecon.web import actions
from wxrecon.web.auth import holder_of

KindName = StrEnum("KindName", {k: k for k in KINDS})  # type: ignore[misc]
Who = Annotated[Holder, Depends(holder_of)]
# An order id as the database holds it (BIGINT): larger is no such order, not an overflow.
OrderId = Annotated[int, Path(ge=1, le=2**63 - 1)]


class Problem(BaseModel):
    detail: Any


_PROBLEMS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "no live token"},
    403: {"model": Problem, "description": "the token's role may not do this, or cross-site"},
    404: {"model": Problem, "description": "no such order"},
    409: {"model": Problem, "description": "the action is not allowed in the order's state"},
}
router = APIRouter(prefix="/api/v1", responses=_PROBLEMS)


class Order(BaseModel):
    kind: str
    id: int
    number: str
    state: str
    fields: dict[str, Any]


class Page(BaseModel):
    total: int
    limit: int
    offset: int
    orders: list[Order]


class Event(BaseModel):
    id: int
    from_state: str | None
    to_state: str
    reason: str
    request_id: str | None
    actor: str
    at: str | None


class OrderDetail(BaseModel):
    order: Order
    events: list[Event]
    resolutions: list[dict[str, Any]]


class Stats(BaseModel):
    by_state: dict[str, dict[str, int]]
    oldest_due: dict[str, Any] | None
    provider_errors: dict[str, int]
    hourly: list[dict[str, Any]]


class Outcome(BaseModel):
    id: int
    event_id: str
    type: str
    kind: str
    order_id: int | None
    order_no: str | None
    state: str
    delivery: str
    attempts: int
    last_error: str | None
    occurred_at: str | None


class Why(BaseModel):
    why: str = Field("", max_length=500)
    force: bool = False


class Resolve(BaseModel):
    state: str = Field(..., pattern="^(SUCCESS|FAILED|CLOSED|CANCELLED)$", max_length=16)
    evidence: str = Field(..., min_length=1, max_length=2000)
    amount: int | None = Field(None, ge=1, le=10**12)
    quota_change_no: str | None = Field(None, max_length=64)


class Done(BaseModel):
    kind: str
    id: int
    state: str
    actor: str
    resolution: dict[str, Any] | None = None


class Me(BaseModel):
    name: str
    role: str


def kind_of(kind: KindName) -> OrderKind:
    return KINDS[str(kind.value)]


def order_model(kind: OrderKind, row: Any) -> Order:
    return Order(
        kind=str(kind),
        id=row.id,
        number=kind.number(row),
        state=row.state,
        fields=reads.order_dict(kind, row),
    )


@router.get("/me", response_model=Me)
def me(who: Who) -> Me:
    return Me(name=who.name, role=who.role)


@router.get("/orders/{kind}", response_model=Page)
def list_orders(
    request: Request,
    who: Who,
    kind: KindName,
    state: Annotated[list[str] | None, Query(max_length=20)] = None,
    mchid: Annotated[str | None, Query(max_length=32)] = None,
    since: datetime | None = None,
    q: Annotated[str | None, Query(max_length=64, description="number prefix")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> Page:
    k = kind_of(kind)
    if since is not None and since.tzinfo is None:
        raise HTTPException(422, "since needs a time zone (e.g. 2026-01-05T08:00:00Z)")
    with request.app.state.runtime.db.read() as s:
        rows, total = reads.list_orders(
            s, k, states=state, mchid=mchid, since=since, search=q, limit=limit, offset=offset
        )
        orders = [order_model(k, r) for r in rows]
    return Page(total=total, limit=limit, offset=offset, orders=orders)


@router.get("/orders/{kind}/{order_id}", response_model=OrderDetail)
def get_order(request: Request, who: Who, kind: KindName, order_id: OrderId) -> OrderDetail:
    k = kind_of(kind)
    db = request.app.state.runtime.db
    with db.read() as s:
        try:
            row = reads.get_order(s, k, order_id)
        except OrderNotFound as exc:
            raise HTTPException(404, str(exc)) from None
        order = order_model(k, row)
        events = [Event(**reads.event_dict(e)) for e in reads.events_of(s, k.name, order_id)]
    return OrderDetail(order=order, events=events, resolutions=actions.resolutions(db, k, order_id))


@router.get("/stats", response_model=Stats)
def stats(request: Request, who: Who) -> Stats:
    return Stats(**actions.overview(request.app.state.runtime.db))


@router.get("/outcomes", response_model=list[Outcome])
def outcomes(
    request: Request,
    who: Who,
    delivery: Annotated[str | None, Query(pattern="^(pending|delivered|dead)$")] = None,
    after: Annotated[int | None, Query(ge=0, le=2**62)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[Outcome]:
    from wxrecon.store import outbox

    rows = outbox.listing(request.app.state.runtime.db, delivery=delivery, after=after, limit=limit)
    return [
        Outcome(
            **{f: r[f] for f in Outcome.model_fields if f != "occurred_at"},
            occurred_at=reads._iso(r["occurred_at"]),
        )
        for r in rows
    ]


class Ledger(BaseModel):
    mchid: str
    ledger: str  # a prefix of the ledger's keyed hash, never its number
    snapshots: int
    balance: int | None
    in_transit: bool | None
    taken_at: str | None
    unexplained_debits: int
    unexplained_debit_fen: int


class Discrepancy(BaseModel):
    id: int
    mchid: str
    ledger: str
    kind: str
    amount: int
    observed: int
    explained: int
    window_start: str | None
    window_end: str | None
    order_ids: list[int]


@router.get("/ledgers", response_model=list[Ledger])
def ledger_list(
    request: Request, who: Who, mchid: Annotated[str | None, Query(max_length=32)] = None
) -> list[Ledger]:
    """Each ledger's latest snapshot and its unexplained debits (`wxrecon ledger list`)."""
    from wxrecon.domain.outcomes import ledger_label
    from wxrecon.store import ledgers

    return [
        Ledger(
            **{f: r[f] for f in Ledger.model_fields if f not in ("ledger", "taken_at")},
            ledger=ledger_label(r["ledger_hash"]),
            taken_at=reads._iso(r["taken_at"]),
        )
        for r in ledgers.ledgers(request.app.state.runtime.db, mchid)
    ]


@router.get("/ledgers/discrepancies", response_model=list[Discrepancy])
def ledger_discrepancies(
    request: Request,
    who: Who,
    mchid: Annotated[str | None, Query(max_length=32)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[Discrepancy]:
    """The ledger checks' findings, newest first (`wxrecon ledger show`)."""
    from wxrecon.domain.outcomes import ledger_label
    from wxrecon.store import ledgers

    rows = ledgers.discrepancies(request.app.state.runtime.db, mchid=mchid, limit=limit)
    return [
        Discrepancy(
            **{f: r[f] for f in Discrepancy.model_fields if f not in _DERIVED},
            ledger=ledger_label(r["ledger_hash"]),
            window_start=reads._iso(r["window_start"]),
            window_end=reads._iso(r["window_end"]),
        )
        for r in rows
    ]


_DERIVED = ("ledger", "window_start", "window_end")


def _act(fn: Any, *args: Any, **kw: Any) -> Any:
    try:
        return fn(*args, **kw)
    except OrderNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except (IllegalTransition, ValueError) as exc:
        raise HTTPException(409, str(exc)) from None


@router.post("/orders/{kind}/{order_id}/retry", response_model=Done)
def retry(request: Request, who: Who, kind: KindName, order_id: OrderId, body: Why) -> Done:
    k = kind_of(kind)
    state = _act(actions.retry, request.app.state.runtime, who, k, order_id, body.why, body.force)
    return Done(kind=str(k), id=order_id, state=state, actor=who.name)


@router.post("/orders/{kind}/{order_id}/requery", response_model=Done)
def requery(request: Request, who: Who, kind: KindName, order_id: OrderId, body: Why) -> Done:
    k = kind_of(kind)
    state = _act(actions.requery, request.app.state.runtime, who, k, order_id, body.why)
    return Done(kind=str(k), id=order_id, state=state, actor=who.name)


@router.post("/orders/{kind}/{order_id}/resolve", response_model=Done)
def resolve(request: Request, who: Who, kind: KindName, order_id: OrderId, body: Resolve) -> Done:
    k = kind_of(kind)
    res = _act(actions.resolve, request.app.state.runtime, who, k, order_id, body)
    return Done(kind=str(k), id=order_id, state=res["order_state"], actor=who.name, resolution=res)


@router.post("/orders/{kind}/{order_id}/approve", response_model=Done)
def approve(request: Request, who: Who, kind: KindName, order_id: OrderId) -> Done:
    k = kind_of(kind)
    res = _act(actions.approve, request.app.state.runtime, who, k, order_id)
    return Done(kind=str(k), id=order_id, state=res["order_state"], actor=who.name, resolution=res)


@router.post("/orders/{kind}/{order_id}/withdraw", response_model=Done)
def withdraw(request: Request, who: Who, kind: KindName, order_id: OrderId, body: Why) -> Done:
    """Take back the pending resolution (an operator's, or an approver's); ``force`` is
    ignored."""
    k = kind_of(kind)
    res = _act(actions.withdraw, request.app.state.runtime, who, k, order_id, body.why)
    return Done(kind=str(k), id=order_id, state=res["order_state"], actor=who.name, resolution=res)


__all__ = ["router", "web_tokens"]

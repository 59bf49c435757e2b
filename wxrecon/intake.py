"""The Python helper for apps that import wxrecon: write the order in *your* transaction and
enqueue its task only after that transaction commits.

    with Session(engine) as session, session.begin():
        ... your own writes ...
        wxrecon.intake.submit_reduction(session, mchid=..., bal_account_no=..., ...)
    # committed: the task is now on the broker; rolled back: nothing was enqueued.

``submit_reductions`` does the same for many orders, with one message per ``poll_chunk`` of them.

Apps that do not import wxrecon send the public Celery tasks by name instead
(``wxrecon.submit_special_reduction``, ``wxrecon.track_compensation_bill``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy.orm import Session

from wxrecon import callers
from wxrecon.config import get_settings
from wxrecon.domain.kinds import BILL, REDUCTION
from wxrecon.engine.intake import (
    IntakeResult,
    intake_bill,
    intake_reduction,
    intake_reductions,
    new_token,
)
from wxrecon.engine.steps import MAX_CHUNK
from wxrecon.store.db import on_commit
from wxrecon.wechatpay.errors import InvalidRequest
from wxrecon.wechatpay.resources import SpecialReductionRequest

# (task name, kwargs) -> None; the default sends through wxrecon's Celery app.
Enqueue = Callable[[str, dict[str, Any]], None]


def default_enqueue(name: str, kwargs: dict[str, Any]) -> None:
    from wxrecon.logs import safe_reprs
    from wxrecon.worker import POLL_QUEUE, app

    # Polls of orders whose rows exist (nothing is lost if one is: the sweep finds the row);
    # wxrecon.intake is for orders sent by name, read by the worker's intake pump.
    # Celery logs the reprs (never the values) of what it runs: the ledger number masked.
    reprs = safe_reprs((), kwargs)
    app.send_task(
        name,
        kwargs=kwargs,
        queue=POLL_QUEUE,
        argsrepr=reprs["argsrepr"],
        kwargsrepr=reprs["kwargsrepr"],
    )


def _caller(kind: object, caller: object) -> str:
    """``caller`` or the kind's default, a known profile (InvalidRequest: nothing written)."""
    settings = get_settings()
    return callers.resolve(kind, caller, callers.profiles_of(settings), settings)


def reduction_caller(caller: object = None) -> str:
    """``caller`` (or WXRECON_REDUCTION_CALLER) checked to be a known profile."""
    return _caller(REDUCTION, caller)


def submit_reduction(
    session: Session,
    *,
    mchid: object,
    bal_account_no: object,
    out_request_no: object,
    reduction_type: object,
    amount: object,
    reason: object = None,
    caller: object = None,
    enqueue: Enqueue | None = None,
    lease: float | None = None,
    actor: str = "intake",
) -> IntakeResult:
    """Validate (InvalidRequest: nothing written), write the order in ``session`` (Conflict
    when it exists with other parameters), and enqueue its submission after commit.
    ``actor`` is recorded on its first event (who handed it in). ``caller`` names the
    profile that signs its calls (default WXRECON_REDUCTION_CALLER).

    The same order again with the same parameters returns the existing one and enqueues
    nothing new.
    """
    request = SpecialReductionRequest.create(
        mchid=mchid,
        bal_account_no=bal_account_no,
        out_request_no=out_request_no,
        reduction_type=reduction_type,
        amount=amount,
        reason=reason,
    )
    signer = _caller(REDUCTION, caller)
    result = intake_reduction(
        session,
        request,
        lease=get_settings().claim_lease if lease is None else lease,
        actor=actor,
        caller=signer,
    )
    if result.token is not None:
        send = default_enqueue if enqueue is None else enqueue
        kwargs = {"id": result.order_id, "token": result.token}
        on_commit(session, lambda: send("wxrecon.poll_reduction", kwargs))
    return result


ORDER_FIELDS = frozenset(
    ("mchid", "bal_account_no", "out_request_no", "reduction_type", "amount", "reason")
)


def _request(position: int, order: Mapping[str, object]) -> SpecialReductionRequest:
    unknown = sorted(str(k)[:40] for k in order if k not in ORDER_FIELDS)
    try:
        if unknown:
            raise InvalidRequest(f"unknown field(s): {', '.join(unknown[:5])}")
        return SpecialReductionRequest.create(**{name: order.get(name) for name in ORDER_FIELDS})
    except InvalidRequest as exc:
        raise InvalidRequest(f"order #{position}: {exc}") from None


def submit_reductions(
    session: Session,
    orders: Iterable[Mapping[str, object]],
    *,
    enqueue: Enqueue | None = None,
    lease: float | None = None,
    chunk: int | None = None,
    caller: object = None,
) -> list[IntakeResult]:
    """Many orders in ``session``'s transaction, published as few messages.

    Every order is validated before anything is written (InvalidRequest naming the first bad
    one's position). The new rows share one claim token and, after commit, are enqueued as
    ``wxrecon.poll_reductions`` messages of ``chunk`` orders (default ``poll_chunk``), the
    same messages a sweep sends, instead of one message per order. A Conflict (an order that
    exists with other parameters) propagates: roll the transaction back, as for one order.
    Orders that already exist, or repeat within ``orders``, are returned and not enqueued.
    All are signed by ``caller`` (default WXRECON_REDUCTION_CALLER).
    """
    requests = [_request(i, order) for i, order in enumerate(orders)]
    return submit_requests(
        session,
        requests,
        enqueue=enqueue,
        lease=lease,
        chunk=chunk,
        caller=_caller(REDUCTION, caller),
    )


def submit_requests(
    session: Session,
    requests: Sequence[SpecialReductionRequest],
    *,
    enqueue: Enqueue | None = None,
    lease: float | None = None,
    chunk: int | None = None,
    actor: str = "intake",
    caller: str = callers.DEFAULT,
) -> list[IntakeResult]:
    """:func:`submit_reductions` for requests already validated (the CSV import's batches),
    signed by ``caller`` (a known profile: see :func:`reduction_caller`)."""
    settings = get_settings()
    token = new_token()
    lease = settings.claim_lease if lease is None else lease
    results = intake_reductions(
        session, requests, token=token, lease=lease, actor=actor, caller=caller
    )
    # An order repeated in the batch is sent once: an ordered set of the claimed ids.
    claimed = dict.fromkeys(r.order_id for r in results if r.token is not None)
    if claimed:
        send = default_enqueue if enqueue is None else enqueue
        size = min(max(1, chunk or settings.poll_chunk), MAX_CHUNK)
        ids = list(claimed)
        messages = [{"ids": ids[i : i + size], "token": token} for i in range(0, len(ids), size)]
        for message in messages:  # one callback each: a failed send does not stop the rest
            on_commit(session, functools.partial(send, "wxrecon.poll_reductions", message))
    return results


def track_bill(
    session: Session,
    out_bill_no: object,
    *,
    enqueue: Enqueue | None = None,
    lease: float | None = None,
    caller: object = None,
) -> IntakeResult:
    """Start tracking a compensation bill in ``session``, queried as ``caller`` (default
    WXRECON_BILL_CALLER); its first query is enqueued after commit. Tracking an already
    tracked bill returns it and enqueues nothing."""
    signer = _caller(BILL, caller)
    result = intake_bill(
        session,
        out_bill_no,
        lease=get_settings().claim_lease if lease is None else lease,
        caller=signer,
    )
    if result.token is not None:
        send = default_enqueue if enqueue is None else enqueue
        kwargs = {"id": result.order_id, "token": result.token}
        on_commit(session, lambda: send("wxrecon.poll_bill", kwargs))
    return result

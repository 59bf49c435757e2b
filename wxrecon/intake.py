"""The Python helper for apps that import wxrecon: write the order in *your* transaction and
enqueue its task only after that transaction commits.

    with Session(engine) as session, session.begin():
        ... your own writes ...
        wxrecon.intake.submit_reduction(session, mchid=..., bal_account_no=..., ...)
    # committed: the task is now on the broker; rolled back: nothing was enqueued.

Apps that do not import wxrecon send the public Celery tasks by name instead
(``wxrecon.submit_special_reduction``, ``wxrecon.track_compensation_bill``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from wxrecon.config import get_settings
from wxrecon.db import on_commit
from wxrecon.reconcile import IntakeResult, intake_bill, intake_reduction
from wxrecon.wechatpay.resources import SpecialReductionRequest

# (task name, kwargs) -> None; the default sends through wxrecon's Celery app.
Enqueue = Callable[[str, dict[str, Any]], None]


def default_enqueue(name: str, kwargs: dict[str, Any]) -> None:
    from wxrecon.worker import INTAKE_QUEUE, app

    app.send_task(name, kwargs=kwargs, queue=INTAKE_QUEUE)


def submit_reduction(
    session: Session,
    *,
    mchid: object,
    bal_account_no: object,
    out_request_no: object,
    reduction_type: object,
    amount: object,
    reason: object = None,
    enqueue: Enqueue | None = None,
    lease: float | None = None,
) -> IntakeResult:
    """Validate (InvalidRequest: nothing written), write the order in ``session`` (Conflict
    when it exists with other parameters), and enqueue its submission after commit.

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
    result = intake_reduction(
        session, request, lease=get_settings().claim_lease if lease is None else lease
    )
    if result.token is not None:
        send = default_enqueue if enqueue is None else enqueue
        kwargs = {"id": result.order_id, "token": result.token}
        on_commit(session, lambda: send("wxrecon.poll_reduction", kwargs))
    return result


def track_bill(
    session: Session,
    out_bill_no: object,
    *,
    enqueue: Enqueue | None = None,
    lease: float | None = None,
) -> IntakeResult:
    """Start tracking a compensation bill in ``session``; its first query is enqueued after
    commit. Tracking an already tracked bill returns it and enqueues nothing."""
    result = intake_bill(
        session,
        out_bill_no,
        lease=get_settings().claim_lease if lease is None else lease,
    )
    if result.token is not None:
        send = default_enqueue if enqueue is None else enqueue
        kwargs = {"id": result.order_id, "token": result.token}
        on_commit(session, lambda: send("wxrecon.poll_bill", kwargs))
    return result

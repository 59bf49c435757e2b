"""Thin Celery tasks: parse JSON kwargs, call :mod:`wxrecon.reconcile`, nothing else.

Public, stable names (business apps send them by name, JSON kwargs only):

- ``wxrecon.submit_special_reduction(mchid, bal_account_no, out_request_no, reduction_type,
  amount, reason=None)`` on queue ``wxrecon.intake``
- ``wxrecon.track_compensation_bill(out_bill_no)`` on queue ``wxrecon.intake``

Internal (beat and the engine send them): ``wxrecon.sweep_reductions``, ``wxrecon.sweep_bills``,
``wxrecon.poll_reduction(id, token)``, ``wxrecon.poll_bill(id, token)``.

Invalid input is logged as one line and the task ends (never retried). Only a database that
does not answer is retried, with backoff, because until the row is written the order exists
nowhere else.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from sqlalchemy.exc import InterfaceError, OperationalError

from wxrecon import runtime
from wxrecon.reconcile import Claim, Conflict, intake_bill, intake_reduction
from wxrecon.wechatpay.errors import InvalidRequest
from wxrecon.wechatpay.resources import SpecialReductionRequest, check_order_no
from wxrecon.worker import INTAKE_QUEUE, POLL_QUEUE, app

log = logging.getLogger(__name__)

DB_DOWN = (OperationalError, InterfaceError)


def _token(task: Task) -> str | None:
    # Deterministic per message: a redelivered intake recognises the claim it made before.
    task_id = task.request.id
    return f"intake-{task_id}" if task_id else None


@app.task(
    name="wxrecon.submit_special_reduction",
    bind=True,
    queue=INTAKE_QUEUE,
    autoretry_for=DB_DOWN,
    retry_backoff=2,
    retry_backoff_max=60,
    max_retries=30,
)
def submit_special_reduction(
    self: Task,
    mchid: Any = None,
    bal_account_no: Any = None,
    out_request_no: Any = None,
    reduction_type: Any = None,
    amount: Any = None,
    reason: Any = None,
) -> dict[str, Any]:
    context = {"out_request_no": str(out_request_no)[:40], "mchid": str(mchid)[:40]}
    try:
        request = SpecialReductionRequest.create(
            mchid=mchid,
            bal_account_no=bal_account_no,
            out_request_no=out_request_no,
            reduction_type=reduction_type,
            amount=amount,
            reason=reason,
        )
    except InvalidRequest as exc:
        log.error("special reduction refused: %s", exc, extra=context)
        return {"error": str(exc)}
    rt = runtime.get()
    try:
        with rt.db.transaction() as session:
            result = intake_reduction(
                session, request, token=_token(self), lease=rt.settings.claim_lease
            )
    except Conflict as exc:
        log.error("special reduction refused: %s", exc, extra=context)
        return {"error": str(exc)}
    state: str | None = result.state
    if result.token is not None:
        state = rt.reconciler().process_reduction(result.order_id, result.token) or state
    return {"id": result.order_id, "created": result.created, "state": state}


@app.task(
    name="wxrecon.track_compensation_bill",
    bind=True,
    queue=INTAKE_QUEUE,
    autoretry_for=DB_DOWN,
    retry_backoff=2,
    retry_backoff_max=60,
    max_retries=30,
)
def track_compensation_bill(self: Task, out_bill_no: Any = None) -> dict[str, Any]:
    try:
        out_bill_no = check_order_no(out_bill_no, "out_bill_no")
    except InvalidRequest as exc:
        log.error("bill tracking refused: %s", exc)
        return {"error": str(exc)}
    rt = runtime.get()
    with rt.db.transaction() as session:
        result = intake_bill(
            session, out_bill_no, token=_token(self), lease=rt.settings.claim_lease
        )
    state: str | None = result.state
    if result.token is not None:
        state = rt.reconciler().process_bill(result.order_id, result.token) or state
    return {"id": result.order_id, "created": result.created, "state": state}


def _claim_args(id: Any, token: Any) -> tuple[int, str] | None:
    if isinstance(id, bool) or not isinstance(id, int) or not isinstance(token, str) or not token:
        log.error("poll task with bad arguments (id=%r); dropped", str(id)[:40])
        return None
    return id, token


@app.task(
    name="wxrecon.poll_reduction",
    queue=POLL_QUEUE,
    autoretry_for=DB_DOWN,
    retry_backoff=2,
    retry_backoff_max=60,
    max_retries=30,
)
def poll_reduction(id: Any = None, token: Any = None) -> str | None:
    args = _claim_args(id, token)
    if args is None:
        return None
    return runtime.get().reconciler().process_reduction(*args)


@app.task(
    name="wxrecon.poll_bill",
    queue=POLL_QUEUE,
    autoretry_for=DB_DOWN,
    retry_backoff=2,
    retry_backoff_max=60,
    max_retries=30,
)
def poll_bill(id: Any = None, token: Any = None) -> str | None:
    args = _claim_args(id, token)
    if args is None:
        return None
    return runtime.get().reconciler().process_bill(*args)


def _dispatcher(task: Task) -> Any:
    def dispatch(claim: Claim) -> None:
        task.apply_async(kwargs={"id": claim.id, "token": claim.token}, queue=POLL_QUEUE)

    return dispatch


@app.task(name="wxrecon.sweep_reductions", queue=POLL_QUEUE)
def sweep_reductions() -> int:
    """Claim due reductions (after the claim commits) and enqueue one poll per claim."""
    with app.producer_or_acquire():
        return runtime.get().reconciler().sweep_reductions(_dispatcher(poll_reduction))


@app.task(name="wxrecon.sweep_bills", queue=POLL_QUEUE)
def sweep_bills() -> int:
    with app.producer_or_acquire():
        return runtime.get().reconciler().sweep_bills(_dispatcher(poll_bill))

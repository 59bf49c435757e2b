"""By-name intake: one message's keyword arguments checked and written as an order row, or
refused with a reason (one log line and a ``<kind>.refused`` outcome event: the app's only
record, as there is no row). Called by the intake tasks (tasks.py) and by the worker's intake
pump (inbox.py); a database that does not answer raises one of :data:`DB_DOWN`, so the caller
makes the message wait, never drops it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import InterfaceError, OperationalError

from wxrecon import callers, runtime
from wxrecon.domain.errors import Conflict
from wxrecon.domain.kinds import BILL, REDUCTION, OrderKind
from wxrecon.engine.intake import IntakeResult, intake_bill, intake_reduction
from wxrecon.wechatpay.errors import InvalidRequest
from wxrecon.wechatpay.resources import SpecialReductionRequest, check_order_no

log = logging.getLogger("wxrecon.tasks")  # the refusals' lines keep the logger they had

DB_DOWN = (OperationalError, InterfaceError)
POSITIONAL_REFUSED = "positional arguments are not accepted: send JSON kwargs"


def _unknown_fields(unknown: dict[str, Any]) -> str:
    names = ", ".join(sorted(str(k)[:40] for k in unknown)[:5])
    return f"unknown argument(s): {names}"


class Refused(dict[str, Any]):
    """What an intake task returns for bad input or a conflict: ``{"error": why}``."""


def _refuse(what: str, why: str, context: dict[str, Any], message_id: str | None) -> Refused:
    """Bad input or a conflict: one log line, and a ``<kind>.refused`` outcome event for the
    app (its only record: there is no order row); the task ends, never retried (only a
    database that does not answer is, and the event id is the message's, so once)."""
    log.error("%s refused: %s", what, why, extra=context)
    _record_refusal(BILL if "out_bill_no" in context else REDUCTION, why, context, message_id)
    return Refused(error=why)


def _record_refusal(
    kind: OrderKind, why: str, context: dict[str, Any], message_id: str | None
) -> None:
    from wxrecon.domain.outcomes import outbox_row, refusal_event
    from wxrecon.store.models import utcnow
    from wxrecon.store.outbox import insert_refusal

    named = {k: v for k, v in context.items() if v != "None"}  # str(None): not given
    now = utcnow()
    event = refusal_event(kind, message_id or uuid.uuid4().hex, named, why, now)
    insert_refusal(runtime.get().db, outbox_row(event, now))


def intake_token(message_id: str | None) -> str | None:
    # Deterministic per message: a redelivered intake recognises the claim it made before.
    return f"intake-{message_id}" if message_id else None


def _written(
    write: Callable[..., IntakeResult], order: Any, signer: str, message_id: str | None
) -> IntakeResult:
    """``write`` (the engine's intake of the kind) in its own transaction, claimed under the
    message's token."""
    rt = runtime.get()
    with rt.db.transaction() as session:
        return write(
            session,
            order,
            token=intake_token(message_id),
            lease=rt.settings.claim_lease,
            caller=signer,
        )


def refuse_positional(task: str, count: int) -> Refused:
    """Positional arguments: one line that does not show them (a value with no name cannot
    be redacted), nothing written."""
    log.error("%s refused: %s (%d given)", task, POSITIONAL_REFUSED, count)
    return Refused(error=POSITIONAL_REFUSED)


def take_reduction(
    message_id: str | None,
    /,
    mchid: Any = None,
    bal_account_no: Any = None,
    out_request_no: Any = None,
    reduction_type: Any = None,
    amount: Any = None,
    reason: Any = None,
    caller: Any = None,
    **unknown: Any,
) -> IntakeResult | Refused:
    """Check and write one by-name reduction (the row, its event, its claim when new); a
    database that does not answer raises (DB_DOWN): the message must wait, never drop."""
    context = {"out_request_no": str(out_request_no)[:40], "mchid": str(mchid)[:40]}
    what = "special reduction"
    if unknown:
        return _refuse(what, _unknown_fields(unknown), context, message_id)
    rt = runtime.get()
    try:
        signer = callers.resolve(REDUCTION, caller, rt.profiles, rt.settings)
        request = SpecialReductionRequest.create(
            mchid=mchid,
            bal_account_no=bal_account_no,
            out_request_no=out_request_no,
            reduction_type=reduction_type,
            amount=amount,
            reason=reason,
        )
        return _written(intake_reduction, request, signer, message_id)
    except (InvalidRequest, Conflict) as exc:
        return _refuse(what, str(exc), context, message_id)


def take_bill(
    message_id: str | None, /, out_bill_no: Any = None, caller: Any = None, **unknown: Any
) -> IntakeResult | Refused:
    """Check and write one by-name bill to track (as :func:`take_reduction`)."""
    context = {"out_bill_no": str(out_bill_no)[:40]}
    what = "bill tracking"
    if unknown:
        return _refuse(what, _unknown_fields(unknown), context, message_id)
    rt = runtime.get()
    try:
        out_bill_no = check_order_no(out_bill_no, "out_bill_no")
        signer = callers.resolve(BILL, caller, rt.profiles, rt.settings)
        return _written(intake_bill, out_bill_no, signer, message_id)
    except (InvalidRequest, Conflict) as exc:
        return _refuse(what, str(exc), context, message_id)


# Each by-name intake task: its kind and the function that writes its row.
TAKERS: dict[str, tuple[OrderKind, Any]] = {
    "wxrecon.submit_special_reduction": (REDUCTION, take_reduction),
    "wxrecon.track_compensation_bill": (BILL, take_bill),
}

"""``wxrecon reduction``: submit, show, list, retry and re-query special reductions."""

from __future__ import annotations

from typing import Any

import typer

from wxrecon.cli.database import database
from wxrecon.cli.kinds import REDUCTION
from wxrecon.cli.orders import ActorOpt, add_common_commands
from wxrecon.cli.output import JsonOpt, default_actor, fen
from wxrecon.cli.params import CallerOpt, FenAmount, reduction_request
from wxrecon.cli.waiting import Sender, TimeoutOpt, WaitOpt, report_intake

app = typer.Typer(no_args_is_help=True)


@app.command("submit")
def submit(
    mchid: str = typer.Option(..., "--mchid", help="Target merchant id."),
    bal_account_no: str = typer.Option(..., "--bal-account-no", help="Quota ledger account."),
    out_request_no: str = typer.Option(..., "--out-request-no", help="Your idempotency key."),
    reduction_type: str = typer.Option(
        ..., "--type", help="FINANCIAL_PENALTY or JUDICIAL_DEDUCTION."
    ),
    amount: int = typer.Option(
        ..., "--amount", help="Integer fen (1500 = ¥15.00).", parser=FenAmount()
    ),
    reason: str | None = typer.Option(None, "--reason", help="Up to 512 characters."),
    caller: CallerOpt = None,
    actor: ActorOpt = None,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 600.0,
    json_out: JsonOpt = False,
) -> None:
    """Validate, write the order and enqueue its submission (same rules as the task).

    With --wait the exit code is the outcome: 0 SUCCESS, 3 FAILED or REJECTED, 5
    NEEDS_REVIEW, 4 still in flight at --timeout (kept and reconciled: do not resubmit)."""
    from wxrecon import intake

    fields: dict[str, Any] = dict(
        mchid=mchid,
        bal_account_no=bal_account_no,
        out_request_no=out_request_no,
        reduction_type=reduction_type,
        amount=amount,
        reason=reason,
    )
    reduction_request(**fields)  # the task's own rules, before the database is opened
    db = database()
    sender = Sender()
    with db.transaction() as session:
        who = actor or default_actor()
        result = intake.submit_reduction(
            session, **fields, caller=caller, enqueue=sender, actor=who
        )
    verb = "submitted" if result.created else "already known (same parameters)"
    report_intake(
        REDUCTION,
        db,
        result,
        f"reduction #{result.order_id} {out_request_no} of {fen(amount)} for {mchid}: {verb}",
        sender=sender,
        wait=wait,
        timeout=timeout,
        json_out=json_out,
    )


add_common_commands(app, REDUCTION)

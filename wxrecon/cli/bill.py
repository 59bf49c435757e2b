"""``wxrecon bill``: track, show, list, retry and re-query compensation bills."""

from __future__ import annotations

import typer

from wxrecon.cli.database import database
from wxrecon.cli.kinds import BILL
from wxrecon.cli.orders import add_common_commands
from wxrecon.cli.output import JsonOpt
from wxrecon.cli.params import CallerOpt, OrderNo
from wxrecon.cli.waiting import Sender, TimeoutOpt, WaitOpt, report_intake

app = typer.Typer(no_args_is_help=True)


@app.command("track")
def track(
    out_bill_no: str = typer.Argument(
        ..., help="The platform's out_bill_no of the bill.", parser=OrderNo("out_bill_no")
    ),
    caller: CallerOpt = None,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 600.0,
    json_out: JsonOpt = False,
) -> None:
    """Start tracking a compensation bill (idempotent) and enqueue its first query.

    With --wait the exit code is the outcome: 0 SUCCESS, 3 CLOSED or CANCELLED, 5
    NEEDS_REVIEW, 4 still in flight at --timeout."""
    from wxrecon import intake

    db = database()
    sender = Sender()
    with db.transaction() as session:
        result = intake.track_bill(session, out_bill_no, caller=caller, enqueue=sender)
    verb = "tracking" if result.created else "already tracked"
    report_intake(
        BILL,
        db,
        result,
        f"bill #{result.order_id} {out_bill_no}: {verb}",
        sender=sender,
        wait=wait,
        timeout=timeout,
        json_out=json_out,
    )


add_common_commands(app, BILL)

"""``wxrecon bill``: track, show, list, retry and re-query compensation bills."""

from __future__ import annotations

import typer

from wxrecon import cli_orders
from wxrecon.cli_common import JsonOpt, bad_input
from wxrecon.cli_orders import Kind, add_common_commands, database, report_intake
from wxrecon.domain.states import BILL_ACTIVE, BState

KIND = Kind(
    name="bill",
    label="compensation bill",
    number_field="out_bill_no",
    states=tuple(s.value for s in BState),
    active=frozenset(s.value for s in BILL_ACTIVE),
    list_columns=(
        ("id", "id"),
        ("out_bill_no", "out_bill_no"),
        ("amount", "amount"),
        ("state", "state"),
        ("attempts", "attempts"),
        ("next query", "next_poll_at"),
        ("updated", "updated_at"),
    ),
    show_fields=(
        ("out_bill_no", "out_bill_no"),
        ("state", "state"),
        ("provider state", "provider_state"),
        ("amount", "amount"),
        ("bill_id", "bill_id"),
        ("sp_mchid", "sp_mchid"),
        ("sponsor_mchid", "sponsor_mchid"),
        ("transfer remark", "transfer_remark"),
        ("accepted", "accept_time"),
        ("succeeded", "success_time"),
        ("close reason", "close_reason"),
        ("closed", "close_time"),
        ("attempts", "attempts"),
        ("next query", "next_poll_at"),
        ("last error", "last_error"),
        ("last Request-ID", "last_request_id"),
        ("created", "created_at"),
        ("updated", "updated_at"),
    ),
)

app = typer.Typer(no_args_is_help=True)


@app.command("track")
def track(
    out_bill_no: str = typer.Argument(..., help="The platform's out_bill_no of the bill."),
    wait: bool = typer.Option(False, "--wait", help="Follow it until it is final."),
    timeout: float = typer.Option(600.0, "--timeout", help="With --wait: give up after seconds."),
    json_out: JsonOpt = False,
) -> None:
    """Start tracking a compensation bill (idempotent) and enqueue its first query."""
    from wxrecon import intake
    from wxrecon.wechatpay.errors import InvalidRequest
    from wxrecon.wechatpay.resources import check_order_no

    try:
        check_order_no(out_bill_no, "out_bill_no")
    except InvalidRequest as exc:
        raise bad_input(str(exc)) from None
    db = database()
    with db.transaction() as session:
        result = intake.track_bill(session, out_bill_no, enqueue=cli_orders.ENQUEUE)
    verb = "tracking" if result.created else "already tracked"
    report_intake(
        KIND,
        db,
        result,
        f"bill #{result.order_id} {out_bill_no}: {verb}",
        wait=wait,
        timeout=timeout,
        json_out=json_out,
    )


add_common_commands(app, KIND)

"""``wxrecon reduction``: submit, show, list, retry and re-query special reductions."""

from __future__ import annotations

import typer

from wxrecon import cli_orders
from wxrecon.cli_common import JsonOpt, bad_input, fen
from wxrecon.cli_orders import Kind, add_common_commands, database, report_intake
from wxrecon.domain.states import REDUCTION_ACTIVE, RState

KIND = Kind(
    name="reduction",
    label="reduction",
    number_field="out_request_no",
    states=tuple(s.value for s in RState),
    active=frozenset(s.value for s in REDUCTION_ACTIVE),
    list_columns=(
        ("id", "id"),
        ("out_request_no", "out_request_no"),
        ("mchid", "mchid"),
        ("amount", "amount"),
        ("state", "state"),
        ("fail reason", "fail_reason"),
        ("attempts", "attempts"),
        ("next query", "next_poll_at"),
        ("updated", "updated_at"),
    ),
    show_fields=(
        ("out_request_no", "out_request_no"),
        ("target mchid", "mchid"),
        ("bal_account_no", "bal_account_no"),
        ("type", "reduction_type"),
        ("amount", "amount"),
        ("reason", "reason"),
        ("state", "state"),
        ("provider state", "provider_state"),
        ("fail reason", "fail_reason"),
        ("quota_change_no", "quota_change_no"),
        ("succeeded", "success_time"),
        ("failed", "fail_time"),
        ("first submitted", "submitted_at"),
        ("attempts", "attempts"),
        ("next query", "next_poll_at"),
        ("last error", "last_error"),
        ("last Request-ID", "last_request_id"),
        ("created", "created_at"),
        ("updated", "updated_at"),
    ),
)

app = typer.Typer(no_args_is_help=True)


@app.command("submit")
def submit(
    mchid: str = typer.Option(..., "--mchid", help="Target merchant id."),
    bal_account_no: str = typer.Option(..., "--bal-account-no", help="Quota ledger account."),
    out_request_no: str = typer.Option(..., "--out-request-no", help="Your idempotency key."),
    reduction_type: str = typer.Option(
        ..., "--type", help="FINANCIAL_PENALTY or JUDICIAL_DEDUCTION."
    ),
    amount: str = typer.Option(..., "--amount", help="Integer fen (1500 = ¥15.00)."),
    reason: str | None = typer.Option(None, "--reason", help="Up to 512 characters."),
    wait: bool = typer.Option(False, "--wait", help="Follow it until it is final."),
    timeout: float = typer.Option(600.0, "--timeout", help="With --wait: give up after seconds."),
    json_out: JsonOpt = False,
) -> None:
    """Validate, write the order and enqueue its submission (same rules as the task)."""
    from wxrecon import intake
    from wxrecon.wechatpay.errors import InvalidRequest

    if not (amount.isascii() and amount.isdigit()):  # no floats, signs, "15.00" or "²"
        raise bad_input("--amount must be a positive integer number of fen (1500 = ¥15.00)")
    db = database()
    try:
        with db.transaction() as session:
            result = intake.submit_reduction(
                session,
                mchid=mchid,
                bal_account_no=bal_account_no,
                out_request_no=out_request_no,
                reduction_type=reduction_type,
                amount=int(amount),
                reason=reason,
                enqueue=cli_orders.ENQUEUE,
            )
    except InvalidRequest as exc:
        raise bad_input(str(exc)) from None
    verb = "submitted" if result.created else "already known (same parameters)"
    report_intake(
        KIND,
        db,
        result,
        f"reduction #{result.order_id} {out_request_no} of {fen(int(amount))} for {mchid}: {verb}",
        wait=wait,
        timeout=timeout,
        json_out=json_out,
    )


add_common_commands(app, KIND)

"""``wxrecon api``: ask the provider directly and print its verified answer (read-only).

For operators checking a ledger or an order by hand. Nothing here sends an order: a reduction
is submitted only by ``wxrecon reduction submit``, which records it first (its row, its event,
who asked), so the provider never gets a POST the reconciler does not know about.
``bal_account_no`` is always masked in output; it may come from the environment
(``WXRECON_API_BAL_ACCOUNT_NO``) rather than the command line, which other users can see.
Errors and exit codes: :mod:`wxrecon.cli.errors`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from wxrecon.cli.errors import BadInput, OneLineErrors
from wxrecon.cli.output import JsonOpt, Output
from wxrecon.cli.params import CallerOpt, OrderNo
from wxrecon.cli.provider import LedgerOpt, MchidOpt, balance, call

app = typer.Typer(
    cls=OneLineErrors,
    help="Ask the provider directly (read-only) and print the verified answer.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.command("balance", help="Channel balance of a quota ledger.")(balance)


REMOVED_SUBMIT = (
    "`wxrecon api submit-reduction` was removed: it sent a reduction without recording it; "
    "use `wxrecon reduction submit` (it writes the order, then sends it)"
)


@app.command(
    "submit-reduction",
    hidden=True,
    add_help_option=False,
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
)
def submit_reduction_removed() -> None:
    """Refuses, whatever the arguments: no path POSTs a reduction without its row."""
    raise BadInput(REMOVED_SUBMIT)


@app.command("query-reduction")
def query_reduction(
    out_request_no: Annotated[
        str, typer.Argument(help="The special reduction's number.", parser=OrderNo())
    ],
    mchid: MchidOpt,
    bal_account_no: LedgerOpt,
    caller: CallerOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Result of a special reduction."""
    result = call(
        lambda c: c.query_special_reduction(
            out_request_no, mchid=mchid, bal_account_no=bal_account_no
        ),
        caller=caller,
    )
    Output(json_out).show("special reduction", result)


@app.command("query-bill")
def query_bill(
    out_bill_no: Annotated[
        str,
        typer.Argument(help="The compensation bill's out_bill_no.", parser=OrderNo("out_bill_no")),
    ],
    caller: CallerOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """A compensation bill by its out_bill_no (signed by WXRECON_BILL_CALLER by default)."""
    Output(json_out).show(
        "compensation bill",
        call(lambda c: c.query_compensation_bill(out_bill_no), "bill", caller),
    )

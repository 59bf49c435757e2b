"""``wxrecon api``: call the provider directly and print its verified answer.

For operators checking a ledger or an order by hand. ``bal_account_no`` is always masked in
output; it may come from the environment (``WXRECON_API_BAL_ACCOUNT_NO``) rather than the
command line, which other users can see. Errors and exit codes: :mod:`wxrecon.cli.errors`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from wxrecon.cli.errors import OneLineErrors
from wxrecon.cli.output import JsonOpt, Output
from wxrecon.cli.params import FenAmount, OrderNo, reduction_request
from wxrecon.cli.provider import LedgerOpt, MchidOpt, balance, call

app = typer.Typer(
    cls=OneLineErrors,
    help="Call the provider directly and print the verified answer.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.command("balance", help="Channel balance of a quota ledger.")(balance)


@app.command("submit-reduction")
def submit_reduction(
    mchid: MchidOpt,
    bal_account_no: LedgerOpt,
    out_request_no: Annotated[
        str,
        typer.Option(
            "--out-request-no", help="1-32 of 0-9A-Za-z; re-use it to re-enter.", parser=OrderNo()
        ),
    ],
    reduction_type: Annotated[
        str, typer.Option("--type", help="FINANCIAL_PENALTY or JUDICIAL_DEDUCTION.")
    ],
    amount: Annotated[
        int, typer.Option("--amount", help="Whole fen (100 = ¥1.00).", parser=FenAmount())
    ],
    reason: Annotated[str | None, typer.Option("--reason", help="Up to 512 characters.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Submit (or re-enter) a special reduction. An unknown outcome must be queried."""
    request = reduction_request(
        mchid=mchid,
        bal_account_no=bal_account_no,
        out_request_no=out_request_no,
        reduction_type=reduction_type,
        amount=amount,
        reason=reason,
    )
    result = call(lambda c: c.submit_special_reduction(request))
    Output(json_out).show("special reduction", result)


@app.command("query-reduction")
def query_reduction(
    out_request_no: Annotated[
        str, typer.Argument(help="The special reduction's number.", parser=OrderNo())
    ],
    mchid: MchidOpt,
    bal_account_no: LedgerOpt,
    json_out: JsonOpt = False,
) -> None:
    """Result of a special reduction."""
    result = call(
        lambda c: c.query_special_reduction(
            out_request_no, mchid=mchid, bal_account_no=bal_account_no
        )
    )
    Output(json_out).show("special reduction", result)


@app.command("query-bill")
def query_bill(
    out_bill_no: Annotated[
        str,
        typer.Argument(help="The compensation bill's out_bill_no.", parser=OrderNo("out_bill_no")),
    ],
    json_out: JsonOpt = False,
) -> None:
    """A compensation bill by its out_bill_no."""
    Output(json_out).show(
        "compensation bill", call(lambda c: c.query_compensation_bill(out_bill_no))
    )

"""``wxrecon api``: call the provider directly and print its verified answer.

For operators checking a ledger or an order by hand. Input is validated before anything is
loaded or sent (bad input: one line, exit 2); configuration problems name the setting (exit 1);
provider failures print one line with the HTTP status, code, message and Request-ID (exit 1).
``bal_account_no`` is always masked in output; it may come from the environment
(``WXRECON_API_BAL_ACCOUNT_NO``) rather than the command line, which other users can see.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from enum import Enum
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from wxrecon.cli_common import OneLineErrors
from wxrecon.config import Settings, get_settings
from wxrecon.provider import build_client
from wxrecon.wechatpay.client import WeChatPayClient
from wxrecon.wechatpay.errors import InvalidRequest, OutcomeUnknown, WeChatPayError, one_line
from wxrecon.wechatpay.keys import CredentialError, mask
from wxrecon.wechatpay.resources import (
    SpecialReductionRequest,
    check_bal_account_no,
    check_mchid,
    check_order_no,
)

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2

T = TypeVar("T")


app = typer.Typer(
    cls=OneLineErrors,
    help="Call the provider directly and print the verified answer.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]
MchidOpt = Annotated[str, typer.Option("--mchid", help="Target merchant id (digits).")]
BalOpt = Annotated[
    str,
    typer.Option(
        "--bal-account-no",
        envvar="WXRECON_API_BAL_ACCOUNT_NO",
        show_envvar=True,
        help="Quota ledger number (plaintext; encrypted before sending, masked in output).",
    ),
]


# -- output ---------------------------------------------------------------------------------


def _print_error(argv: Sequence[str], message: str, error: WeChatPayError | None) -> None:
    line = one_line(message)
    if "--json" in argv:
        doc: dict[str, Any] = {"error": line}
        if error is not None:
            doc.update(
                kind=type(error).__name__,
                status=error.status,
                code=error.code,
                message=one_line(error.message),
                request_id=error.request_id,
            )
        text = json.dumps(doc, ensure_ascii=False)
    else:
        text = f"error: {line}"
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _fail(
    json_mode: bool, message: str, code: int, error: WeChatPayError | None = None
) -> NoReturn:
    _print_error(["--json"] if json_mode else [], message, error)
    raise typer.Exit(code)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _fields(result: Any) -> dict[str, Any]:
    """A result dataclass as a flat, display-safe dict (the ledger number masked)."""
    data = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
    if data.get("bal_account_no"):
        data["bal_account_no"] = mask(data["bal_account_no"])
    for name, value in list(data.items()):
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            data[name] = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    return data


def _fen(amount: int) -> str:
    """Integer fen as yuan text, never through a float."""
    sign = "-" if amount < 0 else ""
    yuan, fen = divmod(abs(amount), 100)
    return f"{sign}¥{yuan:,}.{fen:02d}"


def _cell(name: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) and name in ("amount", "balance"):
        return f"{value} fen ({_fen(value)})"
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return ", ".join(f"{k}={_cell(k, v)}" for k, v in value.items())
    return str(value)


def _show(title: str, data: dict[str, Any], json_mode: bool) -> None:
    if json_mode:
        sys.stdout.write(json.dumps(_jsonable(data), ensure_ascii=False) + "\n")
        sys.stdout.flush()
        return
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for name, value in data.items():
        # Text, not str: a provider's text like "[/x]" must print as is, not as Rich markup.
        table.add_row(Text(name), Text(_cell(name, value)))
    Console(highlight=False).print(table)


# -- plumbing -------------------------------------------------------------------------------


def _validated(json_mode: bool, check: Callable[[], T]) -> T:
    try:
        return check()
    except InvalidRequest as exc:
        _fail(json_mode, str(exc), EXIT_BAD_INPUT)


def _client(json_mode: bool) -> WeChatPayClient:
    try:
        settings: Settings = get_settings()
        return build_client(settings)
    except CredentialError as exc:
        _fail(json_mode, f"configuration: {exc}", EXIT_FAILED)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "WXRECON_" + str(first["loc"][0]).upper() if first["loc"] else "settings"
        _fail(json_mode, f"configuration: {name}: {first['msg']}", EXIT_FAILED)


def _run(json_mode: bool, call: Callable[[WeChatPayClient], Any]) -> dict[str, Any]:
    """Make the call and turn its result into display fields inside the error handling:
    reading a result may decrypt, and a failure there is a provider error too."""
    client = _client(json_mode)
    try:
        with client:
            return _fields(call(client))
    except InvalidRequest as exc:
        _fail(json_mode, str(exc), EXIT_BAD_INPUT)
    except OutcomeUnknown as exc:
        _fail(json_mode, f"{exc}; query the order to learn its outcome", EXIT_FAILED, exc)
    except WeChatPayError as exc:
        _fail(json_mode, str(exc), EXIT_FAILED, exc)
    except Exception as exc:  # a bug: say what kind, never a traceback or its text (secrets)
        _fail(json_mode, f"unexpected {type(exc).__name__}", EXIT_FAILED)


def _parse_amount(text: str) -> int:
    """Whole fen only: ``100`` is ¥1.00; ``1.5``, ``-5``, ``0`` and ``1e3`` are refused."""
    text = text.strip()
    if not text.isascii() or not text.lstrip("-").isdigit():
        raise InvalidRequest("amount must be a whole number of fen", field="amount")
    if len(text) > 20:
        raise InvalidRequest("amount is too large", field="amount")
    return int(text)


# -- commands -------------------------------------------------------------------------------


@app.command("balance")
def balance(mchid: MchidOpt, bal_account_no: BalOpt, json_: JsonOpt = False) -> None:
    """Channel balance of a quota ledger."""
    _validated(json_, lambda: (check_mchid(mchid), check_bal_account_no(bal_account_no)))
    result = _run(json_, lambda c: c.query_balance(mchid=mchid, bal_account_no=bal_account_no))
    data = {"mchid": mchid, "bal_account_no": mask(bal_account_no), **result}
    _show("channel balance", data, json_)


@app.command("submit-reduction")
def submit_reduction(
    mchid: MchidOpt,
    bal_account_no: BalOpt,
    out_request_no: Annotated[
        str, typer.Option("--out-request-no", help="1-32 of 0-9A-Za-z; re-use it to re-enter.")
    ],
    reduction_type: Annotated[
        str, typer.Option("--type", help="FINANCIAL_PENALTY or JUDICIAL_DEDUCTION.")
    ],
    amount: Annotated[str, typer.Option("--amount", help="Whole fen (100 = ¥1.00).")],
    reason: Annotated[str | None, typer.Option("--reason", help="Up to 512 characters.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Submit (or re-enter) a special reduction. An unknown outcome must be queried."""
    request = _validated(
        json_,
        lambda: SpecialReductionRequest.create(
            mchid=mchid,
            bal_account_no=bal_account_no,
            out_request_no=out_request_no,
            reduction_type=reduction_type,
            amount=_parse_amount(amount),
            reason=reason,
        ),
    )
    _show("special reduction", _run(json_, lambda c: c.submit_special_reduction(request)), json_)


@app.command("query-reduction")
def query_reduction(
    out_request_no: Annotated[str, typer.Argument(help="The special reduction's number.")],
    mchid: MchidOpt,
    bal_account_no: BalOpt,
    json_: JsonOpt = False,
) -> None:
    """Result of a special reduction."""
    _validated(
        json_,
        lambda: (
            check_order_no(out_request_no),
            check_mchid(mchid),
            check_bal_account_no(bal_account_no),
        ),
    )
    result = _run(
        json_,
        lambda c: c.query_special_reduction(
            out_request_no, mchid=mchid, bal_account_no=bal_account_no
        ),
    )
    _show("special reduction", result, json_)


@app.command("query-bill")
def query_bill(
    out_bill_no: Annotated[str, typer.Argument(help="The compensation bill's out_bill_no.")],
    json_: JsonOpt = False,
) -> None:
    """A compensation bill by its out_bill_no."""
    _validated(json_, lambda: check_order_no(out_bill_no, "out_bill_no"))
    _show("compensation bill", _run(json_, lambda c: c.query_compensation_bill(out_bill_no)), json_)

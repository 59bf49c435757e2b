"""Calling the provider from the command line, and the one channel-balance query.

Input is checked by the parameter types before keys are loaded or anything is sent; the
client is built from the settings (a missing or mismatched key names its setting); every
provider failure is a one-line error from :mod:`wxrecon.cli.errors` (HTTP status, code,
message, Request-ID). Results are shown through :func:`wxrecon.cli.output.record`, which masks
``bal_account_no``; reading a result may decrypt, so it happens inside the call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer

from wxrecon.cli.output import JsonOpt, Output, record
from wxrecon.cli.params import CallerOpt, LedgerNo, Mchid
from wxrecon.config import get_settings
from wxrecon.wechatpay.keys import mask

if TYPE_CHECKING:  # the client (and its HTTP stack) is loaded by the command that calls
    from wxrecon.wechatpay.client import WeChatPayClient

MchidOpt = Annotated[
    str, typer.Option("--mchid", help="Target merchant id (digits).", parser=Mchid())
]
LedgerOpt = Annotated[
    str,
    typer.Option(
        "--bal-account-no",
        envvar="WXRECON_API_BAL_ACCOUNT_NO",
        show_envvar=True,
        parser=LedgerNo(),
        help="Quota ledger number (plaintext; encrypted before sending, masked in output).",
    ),
]


def build_client(settings: Any, profile: Any) -> WeChatPayClient:
    """:func:`wxrecon.provider.build_client`, imported when a command calls the provider."""
    from wxrecon.provider import build_client as build

    return build(settings, profile)


def call(
    fn: Callable[[WeChatPayClient], Any], kind: str = "reduction", caller: str | None = None
) -> dict[str, Any]:
    """Build the client of ``caller`` (default: the kind's, WXRECON_<KIND>_CALLER) from the
    settings, make the call, return its display fields."""
    from wxrecon.callers import profiles_of, resolve
    from wxrecon.cli.errors import bad_input
    from wxrecon.wechatpay.errors import InvalidRequest

    settings = get_settings()
    profiles = profiles_of(settings)
    try:
        name = resolve(kind, caller, profiles, settings)
    except InvalidRequest as exc:
        raise bad_input(f"--caller: {exc}") from None
    client = build_client(settings, profiles[name])
    with client:
        return record(fn(client))


def balance(
    mchid: MchidOpt,
    bal_account_no: LedgerOpt,
    caller: CallerOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Query a quota ledger's channel balance now, from the provider."""
    result = call(
        lambda c: c.query_balance(mchid=mchid, bal_account_no=bal_account_no), caller=caller
    )
    data = {"mchid": mchid, "bal_account_no": mask(bal_account_no), **result}
    if not json_out:  # JSON keeps null; the table never shows a field not sent as 0 or "no"
        data.update(not_sent(result))
    Output(json_out).show("channel balance", data)


# How the table shows a balance answer's field the provider did not send (both are optional).
NOT_SENT = {"balance": "not given", "in_transit_reduction_exist": "unknown"}


def not_sent(result: dict[str, Any]) -> dict[str, str]:
    return {name: text for name, text in NOT_SENT.items() if result.get(name) is None}

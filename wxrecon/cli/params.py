"""One rule per kind of command-line value, used by every command.

Typer converts an option through its ``parser=`` callable; each class here is such a
converter (a parameter type): it returns the typed value or raises ``typer.BadParameter``,
which the command line reports as ``Invalid value for '--opt': …`` with exit code 2, before
the command runs, so nothing is written or sent. The rules themselves are the provider
client's (``check_*`` in :mod:`wxrecon.wechatpay.resources`) wherever it has one: the command
line never accepts what the task would refuse.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from wxrecon.config import parse_duration

if TYPE_CHECKING:
    from wxrecon.wechatpay.resources import SpecialReductionRequest

T = TypeVar("T")

# Longer than any valid value of any option here: refused before it is parsed at all.
MAX_TEXT = 64


def _checked(check: Callable[[], T]) -> T:
    """Run a provider-client check; its InvalidRequest becomes a bad parameter."""
    from wxrecon.wechatpay.errors import InvalidRequest

    try:
        return check()
    except InvalidRequest as exc:
        raise typer.BadParameter(str(exc)) from None


class FenAmount:
    """A positive whole number of fen in ASCII digits: ``1500`` is ¥15.00.

    wxrecon has never taken a yuan form (``15.00``) on the command line: a decimal point, a
    sign, an exponent, spaces or non-ASCII digits (``１２``, ``²``) are refused, never
    rounded or guessed."""

    name = "FEN"

    def __call__(self, text: str) -> int:
        if len(text) > 20 or not (text.isascii() and text.isdigit()):
            if text.isascii() and text.startswith("-") and text[1:].isdigit():
                raise typer.BadParameter("amount must be a positive number of fen")
            raise typer.BadParameter("amount must be a whole number of fen (1500 = ¥15.00)")
        from wxrecon.wechatpay.resources import check_amount

        return _checked(lambda: check_amount(int(text)))


class Duration:
    """Seconds, or ``500ms``, ``5s``, ``1m``, ``2h``, ``1d``; at least ``minimum``, and above
    zero when ``positive``."""

    name = "DURATION"

    def __init__(self, *, positive: bool = False, minimum: float = 0.0) -> None:
        self.positive = positive
        self.minimum = minimum

    def __call__(self, text: str | float) -> float:
        text = f"{text:g}" if isinstance(text, int | float) else text  # a default value
        try:
            seconds = parse_duration(text[:MAX_TEXT])
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
        if not math.isfinite(seconds) or len(text) > MAX_TEXT:
            raise typer.BadParameter(f"not a duration: {text[:MAX_TEXT]!r}")
        if self.positive and seconds <= 0:
            raise typer.BadParameter(f"must be more than 0 seconds, not {text!r}")
        if seconds < self.minimum:
            raise typer.BadParameter(f"must be at least {self.minimum:g} seconds, not {text!r}")
        return seconds


class Since:
    """An ISO date or time (UTC when it has no zone) or a duration back from now (``2h``)."""

    name = "SINCE"

    def __init__(self, now: Callable[[], datetime] | None = None) -> None:
        self.now = now or (lambda: datetime.now(UTC))

    def __call__(self, text: str) -> datetime:
        try:
            parsed = datetime.fromisoformat(text[:MAX_TEXT])
        except ValueError:
            try:
                return self.now() - timedelta(seconds=Duration()(text))
            except (typer.BadParameter, OverflowError):
                raise typer.BadParameter(
                    f"{text[:MAX_TEXT]!r} is neither an ISO time (2026-01-31T08:00) "
                    "nor a duration (2h)"
                ) from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class OrderNo:
    """An order number as the provider takes it (1-32 of 0-9A-Za-z)."""

    name = "NUMBER"

    def __init__(self, field: str = "out_request_no") -> None:
        self.field = field

    def __call__(self, text: str) -> str:
        from wxrecon.wechatpay.resources import check_order_no

        return _checked(lambda: check_order_no(text, self.field))


class Mchid:
    """A merchant id: 1-32 digits."""

    name = "MCHID"

    def __call__(self, text: str) -> str:
        from wxrecon.wechatpay.resources import check_mchid

        return _checked(lambda: check_mchid(text))


class LedgerNo:
    """A quota ledger number (a secret: its value is never repeated in a message)."""

    name = "LEDGER"

    def __call__(self, text: str) -> str:
        from wxrecon.wechatpay.resources import check_bal_account_no

        return _checked(lambda: check_bal_account_no(text))


class State:
    """One of an order kind's local states, in any case; returned upper-case."""

    name = "STATE"

    def __init__(self, states: Iterable[str]) -> None:
        self.states = tuple(states)

    def __call__(self, text: str) -> str:
        upper = text.upper()
        if upper not in self.states:
            raise typer.BadParameter(f"{text[:MAX_TEXT]!r} is not one of {', '.join(self.states)}")
        return upper


def reduction_request(**fields: Any) -> SpecialReductionRequest:
    """A whole special reduction checked by the task's own rules (exit 2 when refused)."""
    from wxrecon.cli.errors import bad_input
    from wxrecon.wechatpay.errors import InvalidRequest
    from wxrecon.wechatpay.resources import SpecialReductionRequest

    try:
        return SpecialReductionRequest.create(**fields)
    except InvalidRequest as exc:
        raise bad_input(str(exc)) from None


class CallerName:
    """A caller profile's name (wxrecon/callers.py): whether it is known is intake's check."""

    name = "CALLER"

    def __call__(self, text: str) -> str:
        from wxrecon.callers import check_name

        return _checked(lambda: check_name(text.strip()))


CallerOpt = Annotated[
    str | None,
    typer.Option(
        "--caller",
        help="Caller profile that signs (default: WXRECON_REDUCTION_CALLER / _BILL_CALLER).",
        parser=CallerName(),
    ),
]

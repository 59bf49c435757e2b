"""The command line's value rules (wxrecon.cli.params), one table each: what passes, what it
becomes, and what is refused with which message."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import typer

from wxrecon.cli.errors import BadInput
from wxrecon.cli.params import (
    Duration,
    FenAmount,
    LedgerNo,
    Mchid,
    OrderNo,
    Since,
    State,
    reduction_request,
)

NOW = datetime(2026, 1, 31, 8, 0, tzinfo=UTC)


def refused(convert: object, text: object) -> str:
    with pytest.raises(typer.BadParameter) as info:
        convert(text)  # type: ignore[operator]
    return str(info.value.message)


@pytest.mark.parametrize(
    ("text", "fen"),
    [("1", 1), ("1500", 1500), ("0001", 1), (str(2**63 - 1), 2**63 - 1)],
)
def test_fen_amount_accepts_positive_whole_fen(text: str, fen: int) -> None:
    assert FenAmount()(text) == fen


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-5", "amount must be a positive number of fen"),
        ("0", "amount must be a positive number of fen"),
        ("-0", "amount must be a positive number of fen"),
        ("15.00", "amount must be a whole number of fen"),
        ("1.5", "amount must be a whole number of fen"),
        ("1e3", "amount must be a whole number of fen"),
        ("+5", "amount must be a whole number of fen"),
        (" 12", "amount must be a whole number of fen"),
        ("１２", "amount must be a whole number of fen"),
        ("²", "amount must be a whole number of fen"),
        ("0x10", "amount must be a whole number of fen"),
        ("", "amount must be a whole number of fen"),
        ("nan", "amount must be a whole number of fen"),
        ("1" * 21, "amount must be a whole number of fen"),
        (str(2**63), "amount is too large"),
    ],
)
def test_fen_amount_refuses_signs_floats_and_strange_digits(text: str, message: str) -> None:
    assert message in refused(FenAmount(), text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0", 0.0), ("1.5", 1.5), ("500ms", 0.5), ("5s", 5.0), ("10m", 600.0), ("2h", 7200.0),
     ("1d", 86400.0), (600.0, 600.0)],
)  # fmt: skip
def test_duration_accepts(text: str, seconds: float) -> None:
    assert Duration()(text) == seconds


@pytest.mark.parametrize(
    ("convert", "text", "message"),
    [
        (Duration(), "forever", "not a duration"),
        (Duration(), "-5", "not a duration"),
        (Duration(), "-5s", "not a duration"),
        (Duration(), "nan", "not a duration"),
        (Duration(), "inf", "not a duration"),
        (Duration(), "9" * 400, "not a duration"),
        (Duration(positive=True), "0", "more than 0"),
        (Duration(positive=True), "0s", "more than 0"),
        (Duration(positive=True), "-1", "not a duration"),
        (Duration(minimum=0.2), "0.1", "at least 0.2"),
    ],
)
def test_duration_refuses(convert: Duration, text: str, message: str) -> None:
    assert message in refused(convert, text)


@pytest.mark.parametrize(
    ("text", "when"),
    [
        ("2026-01-30", datetime(2026, 1, 30, tzinfo=UTC)),
        ("2026-01-30T06:00", datetime(2026, 1, 30, 6, tzinfo=UTC)),
        ("2026-01-30T14:00+08:00", datetime(2026, 1, 30, 6, tzinfo=UTC)),
        ("2h", NOW - timedelta(hours=2)),
        ("90", NOW - timedelta(seconds=90)),
    ],
)
def test_since_accepts_iso_times_and_durations_back(text: str, when: datetime) -> None:
    assert Since(now=lambda: NOW)(text) == when


@pytest.mark.parametrize("text", ["last tuesday", "-2h", "", "99999999999d"])
def test_since_refuses(text: str) -> None:
    assert "neither an ISO time" in refused(Since(now=lambda: NOW), text)


@pytest.mark.parametrize(
    ("convert", "text", "message"),
    [
        (OrderNo(), "PEN-0001", "out_request_no must be 1 to 32 characters"),
        (OrderNo(), "X" * 33, "out_request_no must be 1 to 32 characters"),
        (OrderNo("out_bill_no"), "B" * 33, "out_bill_no must be 1 to 32 characters"),
        (Mchid(), "19000abc", "mchid must be 1 to 32 digits"),
        (LedgerNo(), "", "bal_account_no is required"),
        (State(("RECEIVED", "SUCCESS")), "done", "is not one of RECEIVED, SUCCESS"),
    ],
)
def test_identifier_rules_refuse(convert: object, text: str, message: str) -> None:
    assert message in refused(convert, text)


def test_identifier_rules_accept() -> None:
    assert OrderNo()("PEN0001") == "PEN0001"
    assert Mchid()("1900000101") == "1900000101"
    assert State(("RECEIVED", "SUCCESS"))("success") == "SUCCESS"


def test_a_ledger_number_is_never_repeated_in_its_refusal() -> None:
    secret = "6222 0200 0012 3456"
    assert secret not in refused(LedgerNo(), secret)


def test_reduction_request_uses_the_tasks_rules() -> None:
    fields = dict(
        mchid="1900000101",
        bal_account_no="6222020000123456789",
        out_request_no="PEN1",
        reduction_type="FINANCIAL_PENALTY",
        amount=100,
        reason=None,
    )
    assert reduction_request(**fields).amount == 100
    with pytest.raises(BadInput, match="reduction_type"):
        reduction_request(**{**fields, "reduction_type": "PENALTY"})

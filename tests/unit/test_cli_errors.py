"""The one table from exception to exit code and line (wxrecon.cli.errors), row by row, and
the masking every line goes through."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError
from sqlalchemy.exc import NoSuchModuleError, OperationalError

from wxrecon.cli.errors import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_IN_FLIGHT,
    EXIT_INTERRUPTED,
    BadInput,
    CliError,
    describe,
    report,
)
from wxrecon.config import Settings, SettingsError
from wxrecon.domain.errors import (
    Ambiguous,
    Conflict,
    IllegalTransition,
    OrderNotFound,
    SchemaError,
    WxreconError,
)
from wxrecon.logs import redact
from wxrecon.wechatpay.errors import (
    GarbledResponse,
    InvalidRequest,
    NetworkError,
    OutcomeUnknown,
    ProviderBusy,
    Rejected,
)
from wxrecon.wechatpay.keys import CredentialError

BAL = "6222020000123456789"


def pydantic_error() -> ValidationError:
    try:
        Settings.model_validate({"http_retries": "many"})
    except ValidationError as exc:
        return exc
    raise AssertionError("expected a validation error")


class Unforeseen(Exception):
    pass


@pytest.mark.parametrize(
    ("exc", "code", "line"),
    [
        (BadInput("--amount: no"), EXIT_BAD_INPUT, "--amount: no"),
        (CliError("still RECEIVED", EXIT_IN_FLIGHT), EXIT_IN_FLIGHT, "still RECEIVED"),
        (InvalidRequest("mchid must be 1 to 32 digits"), EXIT_BAD_INPUT, "mchid must be"),
        (
            Rejected("余额不足", status=403, code="NOT_ENOUGH", request_id="R1"),
            EXIT_FAILED,
            "HTTP 403 NOT_ENOUGH 余额不足 (Request-ID R1)",
        ),
        (
            OutcomeUnknown(ProviderBusy("系统异常", status=500, code="SYSTEM_ERROR")),
            EXIT_FAILED,
            "HTTP 500 SYSTEM_ERROR outcome unknown: 系统异常; query the order to learn its outcome",
        ),
        (NetworkError("GET /x failed: ConnectError"), EXIT_FAILED, "GET /x failed: ConnectError"),
        (
            GarbledResponse("special reduction: bal_account_no does not decrypt"),
            EXIT_FAILED,
            "special reduction: bal_account_no does not decrypt",
        ),
        (
            CredentialError("WXRECON_MCH_PRIVATE_KEY_PATH: no such file"),
            EXIT_FAILED,
            "configuration: WXRECON_MCH_PRIVATE_KEY_PATH: no such file",
        ),
        (
            SettingsError("WXRECON_POLL_SCHEDULE: not a duration: 'banana'"),
            EXIT_FAILED,
            "configuration: WXRECON_POLL_SCHEDULE: not a duration: 'banana'",
        ),
        (pydantic_error(), EXIT_FAILED, "configuration: WXRECON_HTTP_RETRIES: Input should be"),
        (Conflict("PEN1 exists with a different amount"), EXIT_FAILED, "different amount"),
        (OrderNotFound("no reduction PEN1"), EXIT_FAILED, "no reduction PEN1"),
        (Ambiguous("reduction PEN1 exists for several"), EXIT_FAILED, "several"),
        (IllegalTransition("cannot retry"), EXIT_FAILED, "cannot retry"),
        (SchemaError("run `wxrecon db upgrade`"), EXIT_FAILED, "run `wxrecon db upgrade`"),
        (WxreconError("something of ours"), EXIT_FAILED, "something of ours"),
        (
            OperationalError("SELECT secret", {"p": BAL}, Exception("disk I/O error\nmore")),
            EXIT_FAILED,
            "database: disk I/O error",
        ),
        (NoSuchModuleError("Can't load plugin"), EXIT_FAILED, "database: Can't load plugin"),
        (FileNotFoundError(2, "No such file or directory", "/x.csv"), EXIT_FAILED, "/x.csv: No"),
        (KeyboardInterrupt(), EXIT_INTERRUPTED, "interrupted"),
        (Unforeseen(f"value {BAL} leaked"), EXIT_FAILED, "unexpected Unforeseen"),
    ],
)
def test_each_failure_has_one_code_and_one_line(exc: BaseException, code: int, line: str) -> None:
    got_code, got_line = describe(exc)
    assert got_code == code and line in got_line
    assert "\n" not in got_line and BAL not in got_line
    assert "Traceback" not in got_line


def test_a_line_with_a_ledger_number_is_masked() -> None:
    code, line = describe(WxreconError(f"row failed: bal_account_no={BAL}"))
    assert code == EXIT_FAILED and line == "row failed: bal_account_no=6222…6789"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("bal_account_no: does not decrypt", "bal_account_no: does not decrypt"),
        ("field bal_account_no: must be set", "field bal_account_no: must be set"),
        (f"bal_account_no: {BAL}", "bal_account_no: 6222…6789"),
        (f"bal_account_no={BAL}&mchid=1", "bal_account_no=6222…6789&mchid=1"),
        (f'{{"bal_account_no": "{BAL}"}}', '{"bal_account_no": "6222…6789"}'),
        ("{'bal_account_no': 'abcdefghijk'}", "{'bal_account_no': 'abcd…hijk'}"),
        ("bal_account_no=abcdefghijkl", "bal_account_no=abcd…ijkl"),
    ],
)
def test_masking_hides_the_value_and_never_the_prose(text: str, masked: str) -> None:
    assert redact(text) == masked


def test_json_error_carries_the_providers_fields(capsys: pytest.CaptureFixture[str]) -> None:
    exc = Rejected("签名错误", status=401, code="SIGN_ERROR", request_id="RID")
    assert report(exc, json_mode=True) == EXIT_FAILED
    assert json.loads(capsys.readouterr().err) == {
        "error": "HTTP 401 SIGN_ERROR 签名错误 (Request-ID RID)",
        "kind": "Rejected",
        "status": 401,
        "code": "SIGN_ERROR",
        "message": "签名错误",
        "request_id": "RID",
    }


def test_json_error_of_refused_input_is_the_line_only(capsys: pytest.CaptureFixture[str]) -> None:
    assert report(InvalidRequest("amount is too large"), json_mode=True) == EXIT_BAD_INPUT
    assert json.loads(capsys.readouterr().err) == {"error": "amount is too large"}

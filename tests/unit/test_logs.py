"""The logging set-up: context fields on plain and JSON lines, and the redaction pass."""

from __future__ import annotations

import io
import json
import logging

import pytest

from wxrecon.config import Settings
from wxrecon.logs import configure_logging, redact

PEM = (
    "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\n"
    "-----END PRIVATE KEY-----"
)
BAL = "6222021234567890123"


@pytest.fixture
def capture():
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)

    def install(json_lines: bool) -> io.StringIO:
        stream = io.StringIO()
        configure_logging(Settings(log_level="DEBUG"), json_lines=json_lines, stream=stream)
        return stream

    yield install
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def test_plain_line_carries_order_context(capture):
    out = capture(json_lines=False)
    logging.getLogger("wxrecon.test").info(
        "queried %s", "it", extra={"out_request_no": "R1", "mchid": "1900", "request_id": "q-1"}
    )
    line = out.getvalue().strip()
    assert line.endswith("queried it [out_request_no=R1 mchid=1900 request_id=q-1]")
    assert "INFO" in line and "wxrecon.test" in line


def test_json_line_has_fields(capture):
    out = capture(json_lines=True)
    logging.getLogger("wxrecon.test").warning(
        "submit failed", extra={"out_request_no": "R2", "mchid": "1901"}
    )
    record = json.loads(out.getvalue())
    assert record["message"] == "submit failed"
    assert record["level"] == "WARNING"
    assert record["out_request_no"] == "R2" and record["mchid"] == "1901"
    assert "request_id" not in record


@pytest.mark.parametrize("json_lines", [False, True])
def test_secrets_never_leave_the_process(capture, json_lines):
    out = capture(json_lines=json_lines)
    log = logging.getLogger("wxrecon.test")
    log.info("loaded key %s", PEM)
    log.info("GET /balance?mchid=1900&bal_account_no=%s", BAL)
    log.info("body %s", json.dumps({"bal_account_no": BAL, "amount": 1}))
    log.info("request", extra={"bal_account_no": BAL, "private_key": PEM})
    try:
        raise ValueError(f"bad bal_account_no={BAL}")
    except ValueError:
        log.exception("failed")
    text = out.getvalue()
    assert BAL not in text
    assert "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7" not in text
    assert "BEGIN PRIVATE KEY" not in text
    assert "6222…0123" in text  # masked, still recognisable for an operator


def test_configure_twice_does_not_double_lines(capture):
    capture(json_lines=False)
    out = capture(json_lines=False)
    logging.getLogger("wxrecon.test").info("once")
    assert out.getvalue().count("once") == 1


def test_redact_leaves_ordinary_text_alone():
    text = "reduction R1 for 1900 amount=100 state=SUCCESS"
    assert redact(text) == text

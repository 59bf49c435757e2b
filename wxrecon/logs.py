"""Logging set-up: plain or JSON lines, order context fields, and a redaction pass.

Code that logs about an order passes its identifiers in ``extra``
(``out_request_no``, ``out_bill_no``, ``mchid``, ``request_id``); they become JSON fields, or a
``key=value`` tail on plain lines. The redaction pass is defence in depth: callers must never
log secrets, but if one slips through (a PEM block, a ``bal_account_no=…`` pair, an extra field
named like a secret), it is masked before the line leaves the process.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import IO

from wxrecon.config import Settings
from wxrecon.wechatpay.keys import mask

try:  # python-json-logger >= 3
    from pythonjsonlogger.json import JsonFormatter
except ImportError:  # pragma: no cover - python-json-logger 2.x
    from pythonjsonlogger.jsonlogger import JsonFormatter  # type: ignore[no-redef,unused-ignore]

CONTEXT_FIELDS = ("out_request_no", "out_bill_no", "mchid", "request_id")

# Extra fields whose values are secrets whatever their content.
SECRET_FIELDS = frozenset(
    {"bal_account_no", "private_key", "mch_private_key", "secret", "password", "api_key"}
)

_PEM_PRIVATE = re.compile(
    r"-----BEGIN[A-Z ]*PRIVATE KEY-----.*?(?:-----END[A-Z ]*PRIVATE KEY-----|$)", re.DOTALL
)
# bal_account_no=V, "bal_account_no": "V", 'bal_account_no': 'V', bal_account_no: V
_BAL_ACCOUNT_PAIR = re.compile(
    r"""(?P<key>(?P<q>["']?)bal_account_no(?P=q)\s*(?P<sep>[:=])\s*(?P<vq>["']?))"""
    r"""(?P<value>[^"'\s,&;)}\]]+)"""
)
REDACTED_KEY = "[REDACTED PRIVATE KEY]"


def redact(text: str) -> str:
    """Mask private-key blocks and ``bal_account_no`` values in free text."""
    if "PRIVATE KEY" in text:
        text = _PEM_PRIVATE.sub(REDACTED_KEY, text)
    if "bal_account_no" in text:
        text = _BAL_ACCOUNT_PAIR.sub(_mask_pair, text)
    return text


def _mask_pair(match: re.Match[str]) -> str:
    """Mask the value of a ``bal_account_no`` pair, but not the next word of a sentence:
    ``bal_account_no: does not decrypt`` is prose. A quoted or ``=`` value is always data;
    a bare ``: value`` only when it holds a digit (an account number always does)."""
    value = match.group("value")
    data = match.group("sep") == "=" or match.group("q") or match.group("vq")
    if data or any(c.isdigit() for c in value):
        value = mask(value)
    return match.group("key") + value


class RedactionFilter(logging.Filter):
    """Masks secret-named extra fields and redacts the message before any formatter runs."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name in SECRET_FIELDS:
            value = record.__dict__.get(name)
            if value:
                record.__dict__[name] = REDACTED_KEY if "key" in name else mask(str(value))
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep the raw message, still redacted
            message = str(record.msg)
        redacted = redact(message)
        if redacted != message or record.args:
            record.msg, record.args = redacted, None
        return True


class _Redacting:
    """Mixin: redact the whole formatted line too (tracebacks are formatted after filters)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))  # type: ignore[misc]


class PlainFormatter(_Redacting, logging.Formatter):
    """``time LEVEL logger message [out_request_no=… mchid=… request_id=…]``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        context = " ".join(
            f"{name}={record.__dict__[name]}"
            for name in CONTEXT_FIELDS
            if record.__dict__.get(name) not in (None, "")
        )
        return f"{line} [{context}]" if context else line


class JsonLineFormatter(_Redacting, JsonFormatter):
    """One JSON object per line with timestamp, level, logger, message and every extra."""

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )


def make_handler(json_lines: bool, stream: IO[str] | None = None) -> logging.Handler:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonLineFormatter() if json_lines else PlainFormatter())
    handler.addFilter(RedactionFilter())
    return handler


def configure_logging(
    settings: Settings | None = None,
    *,
    level: str | None = None,
    json_lines: bool | None = None,
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Install one redacting handler on the root logger (replacing earlier ones).

    Idempotent: calling it again (e.g. from Celery's ``setup_logging`` signal in each process)
    replaces the handler instead of doubling lines. Returns the handler.
    """
    settings = settings or Settings.model_validate({})
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_wxrecon", False):
            root.removeHandler(old)
    handler = make_handler(settings.log_json if json_lines is None else json_lines, stream)
    handler._wxrecon = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel((level or settings.log_level).upper())
    # httpx logs every request URL at INFO, and a balance query carries bal_account_no in it.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    return handler

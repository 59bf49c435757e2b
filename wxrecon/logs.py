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
from collections.abc import Mapping
from typing import IO, Any

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
# bal_account_no=V, "bal_account_no": "V", 'bal_account_no': 'V', bal_account_no: V, and the
# same inside a JSON string (\"bal_account_no\": \"V\"). A quoted value runs to its closing
# quote (spaces and commas included, escapes skipped); a bare one to the next separator, or
# on across commas that are followed by a digit (``6222,0000,1111``).
_BAL_ACCOUNT_PAIR = re.compile(
    r"""(?P<key>(?P<q>\\?["']?)bal_account_no(?P=q)\s*(?P<sep>[:=])\s*(?P<vq>\\?["']?))"""
    r"""(?P<value>(?<=\\")(?:(?!\\").)*"""
    r"""|(?<=")(?:\\.|[^"\\])*"""
    r"""|(?<=')(?:\\.|[^'\\])*"""
    r"""|(?<!["'])[^"'\s,&;)}\]]+(?:,\d[^"'\s,&;)}\]]*)*)"""
)
REDACTED_KEY = "[REDACTED PRIVATE KEY]"
WITHHELD = "[withheld]"


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


# Celery's consumer logs the whole message (body and headers) of a message it cannot run, and
# its pool (at DEBUG) the request it hands a process: positional values there carry no name to
# redact by, so all but the error (for an unregistered task: its name) is withheld.
_CELERY_BODY_LINES = (
    "Received unregistered task",
    "Received invalid task message",
    "Can't decode message body",
    "Received and deleted unknown message",
    "TaskPool: Apply",
)
_NO_ARGS = ("", "()", "[]", "{}", None)


def _withheld(value: object) -> object:
    return value if value in _NO_ARGS else WITHHELD


def _celery_args(record: logging.LogRecord) -> None:
    """Withhold task arguments from Celery's own lines (received, succeeded, retried, failed)
    and the message bodies its consumer prints. Its trace and strategy lines pass a context
    mapping (also as the ``data`` extra, which JSON lines print) with ``args`` and ``kwargs``
    reprs made by whoever sent the message, which wxrecon does not control: both are
    withheld (wxrecon's own lines name the order)."""
    args = record.args
    if isinstance(args, Mapping) and "args" in args and "kwargs" in args:
        safe = {**args, "args": _withheld(args["args"]), "kwargs": _withheld(args["kwargs"])}
        record.args = safe
        if isinstance(record.__dict__.get("data"), Mapping):
            record.__dict__["data"] = safe
    elif isinstance(args, tuple) and args and str(record.msg).startswith(_CELERY_BODY_LINES):
        record.args = tuple(
            redact(str(a))[:200] if i == 0 and isinstance(a, BaseException) else WITHHELD
            for i, a in enumerate(args)
        )


def safe_reprs(args: Any, kwargs: Any) -> dict[str, str]:
    """``argsrepr``/``kwargsrepr`` for a task message: what Celery logs (and puts in the
    message's headers) instead of the arguments themselves."""
    return {
        "argsrepr": f"({len(args)} positional withheld)" if args else "()",
        "kwargsrepr": redact(repr(dict(kwargs or {})))[:1024],
    }


class RedactionFilter(logging.Filter):
    """Masks secret-named extra fields and redacts the message before any formatter runs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("celery"):
            _celery_args(record)
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

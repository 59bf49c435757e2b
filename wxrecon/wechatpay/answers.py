"""From a provider's reply to an :class:`Answer` or a typed error: verification, the body's
JSON, the Request-ID, and the classification of error answers."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from wxrecon.wechatpay import signing
from wxrecon.wechatpay.errors import (
    GarbledResponse,
    ProviderBusy,
    UnverifiedResponse,
    WeChatPayError,
    classify,
    one_line,
)
from wxrecon.wechatpay.resources import FIELD_LIMITS
from wxrecon.wechatpay.wire import Reply, ReplyHeaders, WireError

_ERROR_CODE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
# The Request-ID is stored (last_request_id, events.request_id) and printed: printable ASCII
# without spaces, and no longer than its column.
_REQUEST_ID = re.compile(rf"[\x21-\x7e]{{1,{FIELD_LIMITS['request_id']}}}")


@dataclass
class Answer:
    status: int
    data: Any
    request_id: str | None


def request_id_of(status: int, headers: ReplyHeaders) -> str | None:
    """The Request-ID header, or a GarbledResponse when it is not one.

    No signature covers this header, so a shortened copy would be an identifier the provider
    never issued; an over-long or unprintable one means the reply is not the provider's, and
    like any garbled reply it is retried (a POST's becomes an unknown outcome)."""
    value = headers.get("Request-ID")
    if value is None or value == "":
        return None
    if not _REQUEST_ID.fullmatch(value):
        raise GarbledResponse(
            f"Request-ID header is not 1 to {FIELD_LIMITS['request_id']} printable characters",
            status=status,
        )
    return value


def read_reply(reply: Reply, verify_keys: Mapping[str, rsa.RSAPublicKey]) -> Answer:
    """A verified 2xx's JSON as an Answer; any other reply raised as its error class."""
    status, body = reply.status, reply.body
    request_id = request_id_of(status, reply.headers)
    if 200 <= status < 300 and status != 202:
        try:
            signing.check_response_signature(reply.headers, body, verify_keys)
        except signing.VerificationError as exc:
            raise UnverifiedResponse(str(exc), status=status, request_id=request_id) from None
        try:
            data = json.loads(body) if body else {}
        except (ValueError, RecursionError):
            raise GarbledResponse(
                "response body is not JSON", status=status, request_id=request_id
            ) from None
        return Answer(status, data, request_id)
    code, message, detail = _error_body(body)
    error: WeChatPayError = classify(status, code, message, detail, request_id)
    if status == 202 and not isinstance(error, ProviderBusy):  # pragma: no cover - classify
        error = ProviderBusy("accepted, not done", status=status, request_id=request_id)
    raise error


def garbled_reply(exc: WireError, max_body: int) -> GarbledResponse:
    """An answer the wire refused to read whole (larger than ``max_body``)."""
    status = exc.status
    try:
        request_id = request_id_of(status or 0, exc.headers or ReplyHeaders())
    except GarbledResponse:
        request_id = None
    return GarbledResponse(
        f"response body is larger than {max_body} bytes", status=status, request_id=request_id
    )


def _error_body(body: bytes) -> tuple[str | None, str, Any]:
    """The ``code``, ``message`` and ``detail`` of an error answer, tolerating garbage."""
    try:
        data = json.loads(body) if body else None
    except (ValueError, RecursionError):
        data = None
    if not isinstance(data, dict):
        return None, "error answer without a JSON body", None
    code = data.get("code")
    message = data.get("message")
    return (
        code if isinstance(code, str) and _ERROR_CODE.fullmatch(code) else None,
        one_line(message)[:500] if isinstance(message, str) else "",
        data.get("detail"),
    )

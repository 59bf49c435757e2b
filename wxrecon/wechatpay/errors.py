"""The client's error taxonomy.

Every error renders as one line with the HTTP status, the provider's code and message and the
Request-ID, and carries no secret. The class says what a caller must do:

- ``InvalidRequest``: our own validation refused the input; nothing was sent.
- ``TransientError`` (network, timeout, 5xx, 429, 202, unverified or garbled 2xx): try again
  later with identical parameters. ``maybe_sent`` tells whether the request may have reached
  the provider.
- ``OutcomeUnknown``: a POST may or may not have taken effect; query, never fail the order.
- ``Rejected``: PARAM_ERROR, INVALID_REQUEST, SIGN_ERROR, NO_AUTH: final, needs a person.
- ``NotEnough``, ``AlreadyExists``, ``NotFound``: business answers (unsigned hints).
- ``UnexpectedAnswer``: any other non-2xx answer; not retried, needs a person.
"""

from __future__ import annotations

from typing import Any, ClassVar

RETRYABLE_CODES = frozenset(
    {"SYSTEM_ERROR", "FREQUENCY_LIMITED", "RATELIMIT_EXCEEDED", "RATE_LIMITED"}
)
REJECTION_CODES = frozenset({"PARAM_ERROR", "INVALID_REQUEST", "SIGN_ERROR", "NO_AUTH"})
NOT_FOUND_CODES = frozenset({"NOT_FOUND", "RESOURCE_NOT_EXISTS", "ORDER_NOT_EXIST"})


def one_line(text: str) -> str:
    """Join every kind of line break (``str.splitlines`` knows them all) into spaces."""
    return " ".join(text.splitlines())


class WeChatPayError(Exception):
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        detail: Any = None,
        request_id: str | None = None,
        maybe_sent: bool = True,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.detail = detail
        self.request_id = request_id
        self.maybe_sent = maybe_sent

    def __str__(self) -> str:
        parts = []
        if self.status is not None:
            parts.append(f"HTTP {self.status}")
        if self.code:
            parts.append(self.code)
        parts.append(one_line(self.message))
        if self.request_id:
            parts.append(f"(Request-ID {self.request_id})")
        return " ".join(parts)

    @property
    def kind(self) -> str:
        """A stable label for metrics and the events table."""
        return self.code or type(self).__name__


class InvalidRequest(WeChatPayError, ValueError):
    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message, code="INVALID_INPUT", maybe_sent=False)
        self.field = field

    def __str__(self) -> str:
        return one_line(self.message)


class TransientError(WeChatPayError):
    retryable = True


class NetworkError(TransientError):
    """Connection-level failure; ``maybe_sent`` is False only when nothing left this host."""


class ProviderBusy(TransientError):
    """5xx, 429 or 202: the provider asks us to come back."""


class UnverifiedResponse(TransientError):
    """A 2xx whose signature, headers or timestamp failed verification: not a result."""


class GarbledResponse(TransientError):
    """A response body that is not the JSON the endpoint promises."""


class OutcomeUnknown(WeChatPayError):
    """A POST whose effect is unknown; the order must be reconciled by querying it."""

    retryable = True

    def __init__(self, cause: WeChatPayError) -> None:
        super().__init__(
            f"outcome unknown: {cause.message}",
            status=cause.status,
            code=cause.code,
            detail=cause.detail,
            request_id=cause.request_id,
            maybe_sent=cause.maybe_sent,
        )
        self.cause = cause


class Rejected(WeChatPayError):
    """Final: the provider refuses the request as made; retrying it will not help."""


class NotEnough(WeChatPayError):
    """403 NOT_ENOUGH: the order was closed for insufficient balance (confirm by querying)."""


class AlreadyExists(WeChatPayError):
    """400 ALREADY_EXISTS: re-entry on a closed order (query it for the outcome)."""


class NotFound(WeChatPayError):
    """The provider knows no such order (shortly after a POST this proves nothing)."""


class UnexpectedAnswer(WeChatPayError):
    """A non-2xx answer outside the documented set."""


def classify(
    status: int, code: str | None, message: str, detail: Any, request_id: str | None
) -> WeChatPayError:
    """Map a non-2xx answer (or a 202) to its error class."""
    kw: dict[str, Any] = {
        "status": status,
        "code": code,
        "detail": detail,
        "request_id": request_id,
    }
    if status >= 500 or status in (202, 429) or code in RETRYABLE_CODES:
        return ProviderBusy(message or "provider busy", **kw)
    if code == "NOT_ENOUGH":
        return NotEnough(message or "balance not enough", **kw)
    if code == "ALREADY_EXISTS":
        return AlreadyExists(message or "order already exists", **kw)
    if status == 404 or code in NOT_FOUND_CODES:
        return NotFound(message or "not found", **kw)
    if code in REJECTION_CODES or status in (401,):
        return Rejected(message or "request rejected", **kw)
    return UnexpectedAnswer(message or "unexpected answer", **kw)


class Throttled(WeChatPayError):
    """The shared rate limiter deferred the call; nothing was sent and no attempt is spent."""

    def __init__(self, retry_after: float, key: str) -> None:
        super().__init__(
            f"rate limited locally on {key}; retry in {retry_after:.2f}s", maybe_sent=False
        )
        self.retry_after = retry_after
        self.key = key


class NotYet(Throttled):
    """No grant is free yet and the caller has other work to do first (a chunk): nothing was
    sent; the caller puts the call back and comes to it after ``retry_after``."""

    def __init__(self, retry_after: float, key: str, endpoint: str = "") -> None:
        super().__init__(retry_after, key)
        self.endpoint = endpoint  # the waits' metric label, counted when the call is made

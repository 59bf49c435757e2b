"""The simulated provider's non-2xx answers, and its time format."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

BEIJING = timezone(timedelta(hours=8))


def rfc3339(ts: float) -> str:
    """The provider's time format: Beijing time with its offset, whole seconds."""
    return datetime.fromtimestamp(ts, BEIJING).isoformat(timespec="seconds")


class ApiError(Exception):
    """An answer that is not a 2xx: status, code, message and optional detail."""

    def __init__(self, status: int, code: str, message: str, detail: Any = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            out["detail"] = self.detail
        return out

"""The simulated provider's timings and odds, changeable at run time through the admin API."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

REENTRY_WINDOW = 31 * 86400.0


@dataclass
class BusinessConfig:
    """Timings and odds of the simulated provider; changeable at run time."""

    settle_delay_min: float = 1.0
    settle_delay_max: float = 5.0
    fail_rate: float = 0.0  # odds that a settling reduction fails for a reason other than balance
    fail_reason: str = "TIME_OUT_CLOSED"
    bill_confirm_after: float = 2.0  # ACCEPTED -> WAIT_USER_CONFIRM
    bill_final_after: float = 5.0  # ACCEPTED -> final state
    reentry_window: float = REENTRY_WINDOW

    def validate(self) -> None:
        if not 0 <= self.settle_delay_min <= self.settle_delay_max:
            raise ValueError("settle delays must satisfy 0 <= min <= max")
        if not 0 <= self.fail_rate <= 1:
            raise ValueError("fail_rate must be between 0 and 1")
        if not self.fail_reason:
            raise ValueError("fail_reason must not be empty")
        if not 0 <= self.bill_confirm_after <= self.bill_final_after:
            raise ValueError("bill timings must satisfy 0 <= confirm_after <= final_after")
        if self.reentry_window <= 0:
            raise ValueError("reentry_window must be positive")

    def updated(self, changes: dict[str, Any]) -> BusinessConfig:
        known = set(asdict(self))
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown setting {sorted(unknown)[0]!r}")
        typed: dict[str, Any] = {}
        for name, value in changes.items():
            if name == "fail_reason":
                if not isinstance(value, str):
                    raise ValueError("fail_reason must be a string")
                typed[name] = value
            else:
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ValueError(f"{name} must be a number")
                typed[name] = float(value)
        new = replace(self, **typed)
        new.validate()
        return new

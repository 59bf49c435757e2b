"""Compensation bills: their record, answer, ground truth, and the admin seed spec."""

from __future__ import annotations

import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from wxrecon.simulator.api_error import rfc3339
from wxrecon.simulator.business_config import BusinessConfig

BILL_STATES = ("ACCEPTED", "WAIT_USER_CONFIRM", "CANCELING", "SUCCESS", "CLOSED", "CANCELLED")
BILL_FINAL = ("SUCCESS", "CLOSED", "CANCELLED")


@dataclass
class Bill:
    sp_mchid: str
    out_bill_no: str
    amount: int
    accepted_at: float
    timeline: list[tuple[float, str]]  # (seconds after acceptance, state), first is ACCEPTED
    bill_id: str
    transaction_id: str
    transfer_remark: str | None = None
    sponsor_mchid: str | None = None
    close_reason: str | None = None

    def state_at(self, now: float) -> tuple[str, float]:
        """The state at ``now`` and when it was entered."""
        state, since = self.timeline[0][1], self.accepted_at
        for offset, name in self.timeline:
            if self.accepted_at + offset <= now:
                state, since = name, self.accepted_at + offset
        return state, since

    def answer(self, now: float) -> dict[str, Any]:
        state, since = self.state_at(now)
        out: dict[str, Any] = {
            "sp_mchid": self.sp_mchid,
            "receiver_detail": {
                "receiver": {
                    "type": "TRANSACTION_USER",
                    "transaction_info": {"transaction_id": self.transaction_id, "type": "WXPAY"},
                }
            },
            "out_bill_no": self.out_bill_no,
            "amount": self.amount,
        }
        if self.transfer_remark is not None:
            out["transfer_remark"] = self.transfer_remark
        out["bill_id"] = self.bill_id
        out["state"] = state
        out["accept_time"] = rfc3339(self.accepted_at)
        if state == "SUCCESS":
            out["success_time"] = rfc3339(since)
        if state == "CLOSED":
            out["close_info"] = {"close_time": rfc3339(since), "close_reason": self.close_reason}
        if self.sponsor_mchid is not None:
            out["sponsor_mchid"] = self.sponsor_mchid
        return out

    def truth(self, now: float) -> dict[str, Any]:
        state, since = self.state_at(now)
        return {
            "sp_mchid": self.sp_mchid,
            "out_bill_no": self.out_bill_no,
            "amount": self.amount,
            "state": state,
            "state_since": rfc3339(since),
            "final": state in BILL_FINAL,
            "close_reason": self.close_reason,
            "timeline": [[name, offset] for offset, name in self.timeline],
        }


Timeline = list[tuple[float, str]]

SPEC_FIELDS = frozenset(
    {
        "out_bill_no",
        "amount",
        "outcome",
        "close_reason",
        "confirm_after",
        "final_after",
        "states",
        "sp_mchid",
        "transfer_remark",
        "sponsor_mchid",
    }
)
TEXT_FIELDS = ("transfer_remark", "sponsor_mchid", "close_reason")

# outcome -> its timeline from (confirm_after, final_after); in-flight outcomes stop early.
OUTCOME_TIMELINES: dict[str, Callable[[float, float], Timeline]] = {
    "SUCCESS": lambda c, f: [(0.0, "ACCEPTED"), (c, "WAIT_USER_CONFIRM"), (f, "SUCCESS")],
    "CLOSED": lambda c, f: [(0.0, "ACCEPTED"), (c, "WAIT_USER_CONFIRM"), (f, "CLOSED")],
    "CANCELLED": lambda c, f: [
        (0.0, "ACCEPTED"),
        (c, "WAIT_USER_CONFIRM"),
        ((c + f) / 2, "CANCELING"),
        (f, "CANCELLED"),
    ],
    "ACCEPTED": lambda c, f: [(0.0, "ACCEPTED")],
    "WAIT_USER_CONFIRM": lambda c, f: [(0.0, "ACCEPTED"), (c, "WAIT_USER_CONFIRM")],
    "CANCELING": lambda c, f: [(0.0, "ACCEPTED"), (c, "CANCELING")],
}


def _digits(prefix: str, n: int) -> str:
    return prefix + "".join(secrets.choice(string.digits) for _ in range(n))


def _check_out_bill_no(value: object) -> str:
    if not isinstance(value, str) or not (
        1 <= len(value) <= 32 and value.isascii() and value.isalnum()
    ):
        raise ValueError("bill: out_bill_no must be 1 to 32 letters and digits")
    return value


def _check_amount(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError("bill: amount must be a positive integer number of fen")
    return value


def _state_item(item: object) -> tuple[float, str]:
    if not (isinstance(item, list | tuple) and len(item) == 2):
        raise ValueError("bill: states is a list of [STATE, seconds_after_acceptance]")
    name, offset = item
    if name not in BILL_STATES and not (isinstance(name, str) and name.isupper()):
        raise ValueError(f"bill: unknown state {str(name)[:40]!r}")
    if isinstance(offset, bool) or not isinstance(offset, int | float) or offset < 0:
        raise ValueError("bill: state offsets are non-negative seconds")
    return float(offset), str(name)


def _timeline_from_states(states: Any) -> Timeline:
    """An explicit ``[[STATE, seconds], ...]``; ACCEPTED at 0 is added when missing."""
    timeline = sorted((_state_item(item) for item in states), key=lambda t: t[0])
    if not timeline or timeline[0][0] != 0:
        timeline.insert(0, (0.0, "ACCEPTED"))
    return timeline


def _timeline_from_outcome(spec: dict[str, Any], config: BusinessConfig) -> Timeline:
    outcome = spec.get("outcome", "SUCCESS")
    confirm = float(spec.get("confirm_after", config.bill_confirm_after))
    final = float(spec.get("final_after", config.bill_final_after))
    if not 0 <= confirm <= final:
        raise ValueError("bill: need 0 <= confirm_after <= final_after")
    make = OUTCOME_TIMELINES.get(outcome) if isinstance(outcome, str) else None
    if make is None:
        raise ValueError("bill: unknown outcome (SUCCESS, CLOSED, CANCELLED or an in-flight state)")
    return make(confirm, final)


def bill_from_spec(
    spec: dict[str, Any], now: float, default_sp_mchid: str, config: BusinessConfig
) -> Bill:
    """Validate an admin bill seed; raises ValueError with one line naming the field."""
    if not isinstance(spec, dict):
        raise ValueError("a bill is a JSON object")
    unknown = set(spec) - SPEC_FIELDS
    if unknown:
        raise ValueError(f"bill: unknown field {sorted(unknown)[0]!r}")
    out_bill_no = _check_out_bill_no(spec.get("out_bill_no"))
    amount = _check_amount(spec.get("amount"))
    if spec.get("states") is not None:
        timeline = _timeline_from_states(spec["states"])
    else:
        timeline = _timeline_from_outcome(spec, config)
    text = {name: spec.get(name) for name in TEXT_FIELDS}
    if any(name == "CLOSED" for _, name in timeline):
        text["close_reason"] = text["close_reason"] or "NOT_ENOUGH"
    for name, value in text.items():
        if value is not None and not isinstance(value, str):
            raise ValueError(f"bill: {name} must be a string")
    return Bill(
        sp_mchid=str(spec.get("sp_mchid") or default_sp_mchid),
        out_bill_no=out_bill_no,
        amount=amount,
        accepted_at=now,
        timeline=timeline,
        bill_id=_digits("1330000", 33),
        transaction_id=_digits("42000", 23),
        **text,
    )

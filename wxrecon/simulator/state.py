"""The simulated provider's books: quota ledgers, special reductions and compensation bills.

All business rules live here, independent of HTTP. One lock guards everything; time is passed
in (seconds since the epoch) so rules are testable. Reductions settle lazily: every call first
settles whatever is due, in due order, so balances and ``in_transit_reduction_exist`` are exact
without a timer thread.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import random
import secrets
import string
import threading
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from wxrecon.filemodes import write_private
from wxrecon.wechatpay.keys import mask

BEIJING = timezone(timedelta(hours=8))
REENTRY_WINDOW = 31 * 86400.0

PROCESSING, SUCCESS, FAILED = "PROCESSING", "SUCCESS", "FAILED"
BILL_STATES = ("ACCEPTED", "WAIT_USER_CONFIRM", "CANCELING", "SUCCESS", "CLOSED", "CANCELLED")
BILL_FINAL = ("SUCCESS", "CLOSED", "CANCELLED")


def rfc3339(ts: float) -> str:
    """The provider's time format: Beijing time with its offset, whole seconds."""
    return datetime.fromtimestamp(ts, BEIJING).isoformat(timespec="seconds")


def ledger_id(mchid: str, bal_account_no: str) -> str:
    """A stable public handle for a ledger that does not reveal its account number."""
    return hashlib.sha256(f"{mchid}:{bal_account_no}".encode()).hexdigest()[:16]


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


@dataclass
class Ledger:
    mchid: str
    bal_account_no: str = field(repr=False)
    balance: int
    in_transit: int = 0

    def public(self) -> dict[str, Any]:
        return {
            "ledger_id": ledger_id(self.mchid, self.bal_account_no),
            "mchid": self.mchid,
            "bal_account_no": mask(self.bal_account_no),
            "balance": self.balance,
            "in_transit_reduction_exist": self.in_transit > 0,
        }


@dataclass(frozen=True)
class ReductionParams:
    """The plaintext parameters of a submit; equality decides idempotent re-entry."""

    mchid: str
    bal_account_no: str = field(repr=False)
    out_request_no: str
    reduction_type: str
    amount: int
    reason: str | None


@dataclass
class Reduction:
    params: ReductionParams
    state: str
    created_at: float
    settle_at: float | None = None
    quota_change_no: str | None = None
    success_time: float | None = None
    fail_time: float | None = None
    fail_reason: str | None = None
    closed_at_submit: bool = False
    applied_count: int = 0
    submit_count: int = 1
    mismatched_param_submits: int = 0

    @property
    def key(self) -> tuple[str, str]:
        return (self.params.mchid, self.params.out_request_no)

    def truth(self) -> dict[str, Any]:
        """Ground truth for tests; the account number is masked."""
        p = self.params
        return {
            "out_request_no": p.out_request_no,
            "mchid": p.mchid,
            "ledger_id": ledger_id(p.mchid, p.bal_account_no),
            "state": self.state,
            "fail_reason": self.fail_reason,
            "amount": p.amount,
            "applied_count": self.applied_count,
            "submit_count": self.submit_count,
            "mismatched_param_submits": self.mismatched_param_submits,
            "closed_at_submit": self.closed_at_submit,
            "quota_change_no": self.quota_change_no,
            "created_at": rfc3339(self.created_at),
            "params": {
                "mchid": p.mchid,
                "bal_account_no": mask(p.bal_account_no),
                "out_request_no": p.out_request_no,
                "reduction_type": p.reduction_type,
                "amount": p.amount,
                "reason": p.reason,
            },
        }


@dataclass(frozen=True)
class ReductionView:
    """What an answer about a reduction is built from (plaintext; the server encrypts)."""

    params: ReductionParams
    state: str
    quota_change_no: str | None
    success_time: float | None
    fail_time: float | None
    fail_reason: str | None

    def answer(self, encrypted_bal_account_no: str, *, query: bool) -> dict[str, Any]:
        """The JSON object of the POST answer or (``query``) of the query answer.

        The query page says reduction_type, amount and reason come back only on SUCCESS.
        """
        p = self.params
        out: dict[str, Any] = {
            "mchid": p.mchid,
            "bal_account_no": encrypted_bal_account_no,
            "out_request_no": p.out_request_no,
        }
        full = not query or self.state == SUCCESS
        if full:
            out["reduction_type"] = p.reduction_type
            out["amount"] = p.amount
        out["state"] = self.state
        if full and p.reason is not None:
            out["reason"] = p.reason
        if self.state == SUCCESS:
            out["quota_change_no"] = self.quota_change_no
            out["success_time"] = rfc3339(self.success_time or 0)
        if self.state == FAILED:
            out["fail_time"] = rfc3339(self.fail_time or 0)
            out["fail_reason"] = self.fail_reason
        return out


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


def _random_token(n: int, alphabet: str = string.ascii_lowercase + string.digits) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


class Books:
    """Ledgers, reductions and bills behind one lock."""

    def __init__(self, config: BusinessConfig | None = None, *, seed: int | None = None) -> None:
        self.config = config or BusinessConfig()
        self.config.validate()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._ledgers: dict[tuple[str, str], Ledger] = {}
        self._reductions: dict[tuple[str, str], Reduction] = {}
        self._bills: dict[tuple[str, str], Bill] = {}
        self._due: list[tuple[float, int, tuple[str, str]]] = []
        self._seq = itertools.count()
        self.clock_offset = 0.0  # business time may be moved forward (re-entry window tests)
        self.version = 0  # bumped on every change, so an idle simulator is not re-saved

    # -- configuration --------------------------------------------------------------------

    def set_config(self, changes: dict[str, Any]) -> BusinessConfig:
        with self._lock:
            self.version += 1
            self.config = self.config.updated(changes)
            return self.config

    def advance_clock(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        with self._lock:
            self.version += 1
            self.clock_offset += seconds
            return self.clock_offset

    # -- ledgers --------------------------------------------------------------------------

    def set_ledger(self, mchid: str, bal_account_no: str, balance: int) -> dict[str, Any]:
        with self._lock:
            self.version += 1
            led = self._ledgers.get((mchid, bal_account_no))
            if led is None:
                led = self._ledgers[(mchid, bal_account_no)] = Ledger(
                    mchid, bal_account_no, balance
                )
            else:
                led.balance = balance
            return led.public()

    def ledgers(
        self, now: float, mchid: str | None = None, bal_account_no: str | None = None
    ) -> list[dict[str, Any]]:
        with self._lock:
            self._settle_due(now)
            return [
                led.public()
                for led in self._ledgers.values()
                if (mchid is None or led.mchid == mchid)
                and (bal_account_no is None or led.bal_account_no == bal_account_no)
            ]

    def balance(self, now: float, mchid: str, bal_account_no: str) -> dict[str, Any]:
        with self._lock:
            self._settle_due(now)
            led = self._ledgers.get((mchid, bal_account_no))
            if led is None:
                raise ApiError(
                    404, "NOT_FOUND", "no quota ledger with this bal_account_no for this mchid"
                )
            return {"in_transit_reduction_exist": led.in_transit > 0, "balance": led.balance}

    # -- reductions -----------------------------------------------------------------------

    def submit(self, now: float, params: ReductionParams) -> ReductionView:
        """Create or re-enter a special reduction; raises ApiError for every non-2xx answer."""
        with self._lock:
            self.version += 1
            self._settle_due(now)
            biz_now = now + self.clock_offset
            existing = self._reductions.get((params.mchid, params.out_request_no))
            if existing is not None:
                existing.submit_count += 1
                if existing.params != params:
                    existing.mismatched_param_submits += 1
                    raise ApiError(
                        400,
                        "INVALID_REQUEST",
                        "out_request_no already exists with different parameters",
                        {
                            "field": "out_request_no",
                            "location": "body",
                            "issue": "re-entry must repeat the original parameters",
                        },
                    )
                if biz_now - existing.created_at > self.config.reentry_window:
                    raise ApiError(
                        400,
                        "INVALID_REQUEST",
                        "the re-entry window of this out_request_no has passed",
                        {"field": "out_request_no", "location": "body"},
                    )
                if existing.state == FAILED:
                    raise ApiError(
                        400, "ALREADY_EXISTS", "the order is closed; query it for its result"
                    )
                return self._view(existing)
            led = self._ledgers.get((params.mchid, params.bal_account_no))
            if led is None:
                raise ApiError(
                    400,
                    "PARAM_ERROR",
                    "bal_account_no names no quota ledger of this mchid",
                    {"field": "bal_account_no", "location": "body", "issue": "ledger not found"},
                )
            order = Reduction(params=params, state=PROCESSING, created_at=biz_now)
            self._reductions[order.key] = order
            if params.amount > led.balance:
                order.state = FAILED
                order.fail_reason = "BALANCE_NOT_ENOUGH"
                order.fail_time = now
                order.closed_at_submit = True
                raise ApiError(403, "NOT_ENOUGH", "balance not enough; the order is closed")
            lo, hi = self.config.settle_delay_min, self.config.settle_delay_max
            order.settle_at = now + self._rng.uniform(lo, hi)
            led.in_transit += 1
            heapq.heappush(self._due, (order.settle_at, next(self._seq), order.key))
            return self._view(order)

    def query(
        self, now: float, mchid: str, bal_account_no: str, out_request_no: str
    ) -> ReductionView:
        with self._lock:
            self._settle_due(now)
            order = self._reductions.get((mchid, out_request_no))
            if order is None or order.params.bal_account_no != bal_account_no:
                raise ApiError(404, "NOT_FOUND", "no special reduction with this out_request_no")
            return self._view(order)

    def reductions(self, now: float, out_request_no: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            self._settle_due(now)
            return [
                r.truth()
                for r in self._reductions.values()
                if out_request_no is None or r.params.out_request_no == out_request_no
            ]

    def settle(self, now: float) -> None:
        with self._lock:
            self._settle_due(now)

    @staticmethod
    def _view(r: Reduction) -> ReductionView:
        return ReductionView(
            r.params, r.state, r.quota_change_no, r.success_time, r.fail_time, r.fail_reason
        )

    def _settle_due(self, now: float) -> None:
        while self._due and self._due[0][0] <= now:
            settle_at, _, key = heapq.heappop(self._due)
            order = self._reductions.get(key)
            if order is None or order.state != PROCESSING:
                continue
            self.version += 1
            led = self._ledgers[(order.params.mchid, order.params.bal_account_no)]
            led.in_transit -= 1
            if self._rng.random() < self.config.fail_rate:
                order.state, order.fail_reason, order.fail_time = (
                    FAILED,
                    self.config.fail_reason,
                    settle_at,
                )
            elif order.params.amount > led.balance:
                order.state, order.fail_reason, order.fail_time = (
                    FAILED,
                    "BALANCE_NOT_ENOUGH",
                    settle_at,
                )
            else:
                led.balance -= order.params.amount
                order.applied_count += 1
                order.state = SUCCESS
                order.success_time = settle_at
                order.quota_change_no = _random_token(32)

    # -- bills ----------------------------------------------------------------------------

    def seed_bill(self, now: float, spec: dict[str, Any], default_sp_mchid: str) -> dict[str, Any]:
        bill = _bill_from_spec(spec, now, default_sp_mchid, self.config)
        with self._lock:
            self.version += 1
            key = (bill.sp_mchid, bill.out_bill_no)
            if key in self._bills:
                raise ValueError(f"bill {bill.out_bill_no} already exists")
            self._bills[key] = bill
            return bill.truth(now)

    def bill(self, now: float, sp_mchid: str, out_bill_no: str) -> dict[str, Any]:
        with self._lock:
            bill = self._bills.get((sp_mchid, out_bill_no))
            if bill is None:
                raise ApiError(404, "NOT_FOUND", "no compensation bill with this out_bill_no")
            return bill.answer(now)

    def bills(self, now: float) -> list[dict[str, Any]]:
        with self._lock:
            return [b.truth(now) for b in self._bills.values()]

    # -- persistence ----------------------------------------------------------------------

    def reset(self) -> None:
        with self._lock:
            self.version += 1
            self._ledgers.clear()
            self._reductions.clear()
            self._bills.clear()
            self._due.clear()
            self.clock_offset = 0.0

    def dump(self) -> dict[str, Any]:
        with self._lock:
            return {
                "version": 1,
                "clock_offset": self.clock_offset,
                "ledgers": [asdict(led) | {"in_transit": 0} for led in self._ledgers.values()],
                "reductions": [asdict(r) for r in self._reductions.values()],
                "bills": [asdict(b) for b in self._bills.values()],
            }

    def load(self, data: dict[str, Any]) -> None:
        with self._lock:
            self._ledgers.clear()
            self._reductions.clear()
            self._bills.clear()
            self._due.clear()
            self.clock_offset = float(data.get("clock_offset", 0.0))
            for row in data.get("ledgers", []):
                led = Ledger(row["mchid"], row["bal_account_no"], int(row["balance"]))
                self._ledgers[(led.mchid, led.bal_account_no)] = led
            for row in data.get("reductions", []):
                row = dict(row)
                order = Reduction(params=ReductionParams(**row.pop("params")), **row)
                self._reductions[order.key] = order
                if order.state == PROCESSING and order.settle_at is not None:
                    self._ledgers[(order.params.mchid, order.params.bal_account_no)].in_transit += 1
                    heapq.heappush(self._due, (order.settle_at, next(self._seq), order.key))
            for row in data.get("bills", []):
                row = dict(row)
                row["timeline"] = [(float(o), str(s)) for o, s in row["timeline"]]
                bill = Bill(**row)
                self._bills[(bill.sp_mchid, bill.out_bill_no)] = bill

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        write_private(tmp, json.dumps(self.dump()).encode())  # plaintext account numbers
        tmp.replace(path)


def _bill_from_spec(
    spec: dict[str, Any], now: float, default_sp_mchid: str, config: BusinessConfig
) -> Bill:
    """Validate an admin bill seed; raises ValueError with one line naming the field."""
    if not isinstance(spec, dict):
        raise ValueError("a bill is a JSON object")
    allowed = {
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
    unknown = set(spec) - allowed
    if unknown:
        raise ValueError(f"bill: unknown field {sorted(unknown)[0]!r}")
    out_bill_no = spec.get("out_bill_no")
    if not isinstance(out_bill_no, str) or not (
        1 <= len(out_bill_no) <= 32 and out_bill_no.isascii() and out_bill_no.isalnum()
    ):
        raise ValueError("bill: out_bill_no must be 1 to 32 letters and digits")
    amount = spec.get("amount")
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise ValueError("bill: amount must be a positive integer number of fen")
    sp_mchid = str(spec.get("sp_mchid") or default_sp_mchid)
    close_reason = spec.get("close_reason")
    if spec.get("states") is not None:
        timeline: list[tuple[float, str]] = []
        for item in spec["states"]:
            if not (isinstance(item, list | tuple) and len(item) == 2):
                raise ValueError("bill: states is a list of [STATE, seconds_after_acceptance]")
            name, offset = item
            if name not in BILL_STATES and not (isinstance(name, str) and name.isupper()):
                raise ValueError(f"bill: unknown state {str(name)[:40]!r}")
            if isinstance(offset, bool) or not isinstance(offset, int | float) or offset < 0:
                raise ValueError("bill: state offsets are non-negative seconds")
            timeline.append((float(offset), str(name)))
        timeline.sort(key=lambda t: t[0])
        if not timeline or timeline[0][0] != 0:
            timeline.insert(0, (0.0, "ACCEPTED"))
    else:
        outcome = spec.get("outcome", "SUCCESS")
        confirm = float(spec.get("confirm_after", config.bill_confirm_after))
        final = float(spec.get("final_after", config.bill_final_after))
        if not 0 <= confirm <= final:
            raise ValueError("bill: need 0 <= confirm_after <= final_after")
        if outcome == "SUCCESS":
            timeline = [(0.0, "ACCEPTED"), (confirm, "WAIT_USER_CONFIRM"), (final, "SUCCESS")]
        elif outcome == "CLOSED":
            timeline = [(0.0, "ACCEPTED"), (confirm, "WAIT_USER_CONFIRM"), (final, "CLOSED")]
        elif outcome == "CANCELLED":
            timeline = [
                (0.0, "ACCEPTED"),
                (confirm, "WAIT_USER_CONFIRM"),
                ((confirm + final) / 2, "CANCELING"),
                (final, "CANCELLED"),
            ]
        elif outcome in ("ACCEPTED", "WAIT_USER_CONFIRM", "CANCELING"):
            timeline = [(0.0, "ACCEPTED")]
            if outcome != "ACCEPTED":
                timeline.append((confirm, outcome))
        else:
            raise ValueError(
                "bill: unknown outcome (SUCCESS, CLOSED, CANCELLED or an in-flight state)"
            )
    if any(name == "CLOSED" for _, name in timeline):
        close_reason = close_reason or "NOT_ENOUGH"
    for name in ("transfer_remark", "sponsor_mchid", "close_reason"):
        value = spec.get(name) if name != "close_reason" else close_reason
        if value is not None and not isinstance(value, str):
            raise ValueError(f"bill: {name} must be a string")
    return Bill(
        sp_mchid=sp_mchid,
        out_bill_no=out_bill_no,
        amount=amount,
        accepted_at=now,
        timeline=timeline,
        bill_id="1330000" + "".join(secrets.choice(string.digits) for _ in range(33)),
        transaction_id="42000" + "".join(secrets.choice(string.digits) for _ in range(23)),
        transfer_remark=spec.get("transfer_remark"),
        sponsor_mchid=spec.get("sponsor_mchid"),
        close_reason=close_reason,
    )

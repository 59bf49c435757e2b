"""The simulated provider's books: quota ledgers, special reductions and compensation bills.

All business rules live here, independent of HTTP. One lock guards everything; time is passed
in (seconds since the epoch) so rules are testable. Reductions settle lazily: every call first
settles whatever is due, in due order, so balances and ``in_transit_reduction_exist`` are exact
without a timer thread. The records are in :mod:`.reductions` and :mod:`.bills`.
"""

from __future__ import annotations

import heapq
import itertools
import json
import random
import secrets
import string
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

from wxrecon.filemodes import write_private
from wxrecon.simulator.api_error import BEIJING, ApiError, rfc3339
from wxrecon.simulator.bills import BILL_FINAL, BILL_STATES, Bill, bill_from_spec
from wxrecon.simulator.business_config import REENTRY_WINDOW, BusinessConfig
from wxrecon.simulator.reductions import (
    FAILED,
    PROCESSING,
    SUCCESS,
    Ledger,
    Reduction,
    ReductionParams,
    ReductionView,
    ledger_id,
)

__all__ = [
    "BEIJING",
    "BILL_FINAL",
    "BILL_STATES",
    "FAILED",
    "PROCESSING",
    "REENTRY_WINDOW",
    "SUCCESS",
    "ApiError",
    "Bill",
    "Books",
    "BusinessConfig",
    "Ledger",
    "Reduction",
    "ReductionParams",
    "ReductionView",
    "ledger_id",
    "rfc3339",
]


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

    def adjust_ledger(
        self, now: float, mchid: str, bal_account_no: str, delta: int
    ) -> dict[str, Any]:
        """Debit (delta < 0) or credit a ledger outside any order: money a reduction did not
        move, so that wxrecon's ledger check has a discrepancy to find."""
        with self._lock:
            self._settle_due(now)
            led = self._ledgers.get((mchid, bal_account_no))
            if led is None:
                raise ValueError("no such ledger")
            if led.balance + delta < 0:
                raise ValueError("a debit larger than the balance")
            self.version += 1
            led.balance += delta
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
        bill = bill_from_spec(spec, now, default_sp_mchid, self.config)
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

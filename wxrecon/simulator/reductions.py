"""Quota ledgers and special reductions: their records, ground truth and answers."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from wxrecon.simulator.api_error import rfc3339
from wxrecon.wechatpay.keys import mask

PROCESSING, SUCCESS, FAILED = "PROCESSING", "SUCCESS", "FAILED"


def ledger_id(mchid: str, bal_account_no: str) -> str:
    """A stable public handle for a ledger that does not reveal its account number."""
    return hashlib.sha256(f"{mchid}:{bal_account_no}".encode()).hexdigest()[:16]


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

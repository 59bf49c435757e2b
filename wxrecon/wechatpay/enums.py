"""Enums that keep values they do not know, and the provider's enums."""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class OpenEnum(StrEnum):
    """A StrEnum that turns an unknown value into a pseudo-member instead of failing."""

    @classmethod
    def _missing_(cls, value: object) -> Any:
        if not isinstance(value, str):
            return None
        member = str.__new__(cls, value)
        member._name_ = value
        member._value_ = value
        return member

    @property
    def known(self) -> bool:
        return self._name_ in type(self).__members__


class ReductionType(OpenEnum):
    FINANCIAL_PENALTY = "FINANCIAL_PENALTY"
    JUDICIAL_DEDUCTION = "JUDICIAL_DEDUCTION"


class ReductionState(OpenEnum):
    PROCESSING = "PROCESSING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"

    @property
    def final(self) -> bool:
        return self in (ReductionState.SUCCESS, ReductionState.FAILED)


class FailReason(OpenEnum):
    BALANCE_NOT_ENOUGH = "BALANCE_NOT_ENOUGH"
    RECEIPT_NOT_EXIST = "RECEIPT_NOT_EXIST"  # 单据不存在,已关单: a final FAILED
    RECEIPT_NOT_EXIST_CLOSED = "RECEIPT_NOT_EXIST_CLOSED"
    TIME_OUT_CLOSED = "TIME_OUT_CLOSED"


class ReceiverType(OpenEnum):
    TRANSACTION_USER = "TRANSACTION_USER"


class TransactionType(OpenEnum):
    WXPAY = "WXPAY"
    WXVALUE = "WXVALUE"


class BillState(OpenEnum):
    ACCEPTED = "ACCEPTED"
    WAIT_USER_CONFIRM = "WAIT_USER_CONFIRM"
    CANCELING = "CANCELING"
    SUCCESS = "SUCCESS"
    CLOSED = "CLOSED"
    CANCELLED = "CANCELLED"

    @property
    def final(self) -> bool:
        return self in (BillState.SUCCESS, BillState.CLOSED, BillState.CANCELLED)

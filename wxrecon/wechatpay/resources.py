"""Typed requests and results of the four endpoints, with validation and parsing.

Amounts are integer fen, times are aware datetimes. Enums keep values they do not know
verbatim (the provider's pages disagree on ``RECEIPT_NOT_EXIST`` vs
``RECEIPT_NOT_EXIST_CLOSED``, list ``STATE_UNKNOWN`` and ``REDUCTION_TYPE_UNKNOWN``, and new
values appear without notice). Every field of the reduction and balance answers is optional
on the pages: an absent or empty one is None here, never a default we made up.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, Self

from wxrecon.wechatpay.enums import (
    BillState,
    FailReason,
    ReceiverType,
    ReductionState,
    ReductionType,
    TransactionType,
)
from wxrecon.wechatpay.errors import GarbledResponse, InvalidRequest
from wxrecon.wechatpay.reading import Decrypted, Reader, Sealed

__all__ = [  # the enums live in enums.py; they are imported from here too
    "BillState",
    "FailReason",
    "ReceiverType",
    "ReductionState",
    "ReductionType",
    "TransactionType",
]

ORDER_NO = re.compile(r"[0-9A-Za-z]{1,32}")
MCHID = re.compile(r"[0-9]{1,32}")
BAL_ACCOUNT_NO = re.compile(r"[\x21-\x7e]{1,128}")  # printable ASCII; fits one OAEP block
# What a reason must not hold: control characters (C0, DEL) and lone surrogates. One regex
# search instead of a per-character loop (a bulk import checks a reason on every row).
REASON_FORBIDDEN = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
MAX_REASON = 512
MAX_AMOUNT = 2**63 - 1

# The longest value (in characters) of every text field read from an answer, and of the
# Request-ID header: the width of the database column that stores it (wxrecon/models.py, which
# is to read its widths from here). A longer value makes the answer garbled (retried, then
# reconciled by a query), never a value that fails a database write later.
FIELD_LIMITS: Mapping[str, int] = MappingProxyType(
    {
        "out_request_no": 32,  # special_reductions.out_request_no
        "out_bill_no": 32,  # compensation_bills.out_bill_no
        "mchid": 32,
        "sp_mchid": 32,
        "sponsor_mchid": 32,
        "reduction_type": 32,
        "state": 32,  # provider_state
        "fail_reason": 64,
        "quota_change_no": 64,
        "bill_id": 64,
        "close_reason": 64,
        "reason": MAX_REASON,
        "transfer_remark": 512,
        "request_id": 128,  # last_request_id, events.request_id
        "bal_account_no": 1024,  # the ciphertext: 344 characters under RSA-2048, 684 under 4096
        "bal_account_no_plaintext": 128,  # what store/sealed.py seals (MAX_PLAINTEXT)
        # Times are parsed, not stored as text; RFC 3339 needs about 35 characters.
        "success_time": 64,
        "fail_time": 64,
        "accept_time": 64,
        "close_time": 64,
        # receiver_detail.receiver.type and .transaction_info.type (one reader serves both)
        "type": 32,
        "transaction_id": 64,
    }
)


# The query page marks these valid for one state only (仅state=SUCCESS时有效, 仅state=FAILED时
# 有效), and its own example answers SUCCESS with a fail_reason and a fail_time: outside their
# state they are dropped, so a SUCCESS never shows a fail reason.
STATE_ONLY_FIELDS: Mapping[str, ReductionState] = MappingProxyType(
    {
        "quota_change_no": ReductionState.SUCCESS,
        "success_time": ReductionState.SUCCESS,
        "fail_time": ReductionState.FAILED,
        "fail_reason": ReductionState.FAILED,
    }
)


def out_of_state(state: ReductionState, sent: Iterable[str]) -> tuple[str, ...]:
    """The fields of ``sent`` that the page says are not valid for ``state``, in page order
    (an unknown state has none of them)."""
    present = set(sent)
    return tuple(n for n, s in STATE_ONLY_FIELDS.items() if n in present and s != state)


# -- validation of what we send -------------------------------------------------------------


def _text(value: object, name: str, pattern: re.Pattern[str], rule: str) -> str:
    if value is None or value == "":
        raise InvalidRequest(f"{name} is required", field=name)
    if not isinstance(value, str):
        raise InvalidRequest(f"{name} must be a string", field=name)
    if not pattern.fullmatch(value):
        raise InvalidRequest(f"{name} must be {rule}", field=name)
    return value


def check_order_no(value: object, name: str = "out_request_no") -> str:
    return _text(value, name, ORDER_NO, "1 to 32 characters of 0-9, A-Z, a-z")


def check_mchid(value: object, name: str = "mchid") -> str:
    return _text(value, name, MCHID, "1 to 32 digits")


def check_bal_account_no(value: object) -> str:
    # The message never repeats the value: it is a secret.
    return _text(value, "bal_account_no", BAL_ACCOUNT_NO, "1 to 128 printable ASCII characters")


def check_amount(value: object) -> int:
    if value is None:
        raise InvalidRequest("amount is required", field="amount")
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest("amount must be an integer number of fen", field="amount")
    if value <= 0:
        raise InvalidRequest("amount must be a positive number of fen", field="amount")
    if value > MAX_AMOUNT:
        raise InvalidRequest("amount is too large", field="amount")
    return value


def check_reduction_type(value: object) -> ReductionType:
    if value is None or value == "":
        raise InvalidRequest("reduction_type is required", field="reduction_type")
    if not isinstance(value, str) or value not in ReductionType.__members__:
        allowed = " or ".join(ReductionType.__members__)
        # The value is not echoed: a mistyped command line may have put a secret here.
        raise InvalidRequest(f"reduction_type must be {allowed}", field="reduction_type")
    return ReductionType(value)


def check_reason(value: object) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidRequest("reason must be a string", field="reason")
    if len(value) > MAX_REASON:
        raise InvalidRequest(f"reason is longer than {MAX_REASON} characters", field="reason")
    if REASON_FORBIDDEN.search(value):
        raise InvalidRequest(
            "reason must not contain control characters or lone surrogates", field="reason"
        )
    return value


@dataclass(frozen=True, slots=True)
class SpecialReductionRequest:
    """A validated special reduction; ``bal_account_no`` is plaintext and never printed."""

    mchid: str
    bal_account_no: str = field(repr=False)
    out_request_no: str
    reduction_type: ReductionType
    amount: int
    reason: str | None = None

    @classmethod
    def create(
        cls,
        *,
        mchid: object,
        bal_account_no: object,
        out_request_no: object,
        reduction_type: object,
        amount: object,
        reason: object = None,
    ) -> Self:
        """Validate loosely-typed input (JSON kwargs, CLI, CSV); raises InvalidRequest."""
        return cls(
            mchid=check_mchid(mchid),
            bal_account_no=check_bal_account_no(bal_account_no),
            out_request_no=check_order_no(out_request_no),
            reduction_type=check_reduction_type(reduction_type),
            amount=check_amount(amount),
            reason=check_reason(reason),
        )

    def body(self, encrypted_bal_account_no: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mchid": self.mchid,
            "bal_account_no": encrypted_bal_account_no,
            "out_request_no": self.out_request_no,
            "reduction_type": str(self.reduction_type),
            "amount": self.amount,
        }
        if self.reason is not None:
            out["reason"] = self.reason
        return out


# -- parsing of what we receive -------------------------------------------------------------


# Not slots=True: the descriptor field needs the instance __dict__ for its value.
@dataclass(frozen=True)
class SpecialReduction:
    out_request_no: str
    state: ReductionState
    mchid: str | None = None
    # Plaintext on read; holds a Sealed ciphertext until first read. Never in repr.
    bal_account_no: Decrypted = field(default=Decrypted("special reduction"), repr=False)
    reduction_type: ReductionType | None = None
    amount: int | None = None
    reason: str | None = None
    quota_change_no: str | None = None
    success_time: datetime | None = None
    fail_time: datetime | None = None
    fail_reason: FailReason | None = None
    request_id: str | None = field(default=None, compare=False)
    # The out_request_no exactly as the provider sent it (None: the answer did not carry one,
    # and ``out_request_no`` is the one asked for).
    provider_out_request_no: str | None = field(default=None, compare=False)
    # Whether the answer carried a ciphertext of bal_account_no (checked without decrypting).
    ledger_sent: bool = field(default=False, compare=False)
    # Fields the answer sent that are not valid for its state, and were dropped.
    dropped: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def parse(
        cls,
        data: object,
        *,
        expect_out_request_no: str,
        expect_mchid: str | None = None,
        expect_amount: int | None = None,
        decrypt: Callable[[str], str] | None = None,
        request_id: str | None = None,
    ) -> Self:
        """Parse an answer; ``bal_account_no`` is decrypted with ``decrypt`` when first read
        (a GarbledResponse then if it does not decrypt), and left None without ``decrypt``.

        An identity field that is present and differs from the one asked for (``expect_*``)
        makes the answer garbled: it is about another order."""
        r = Reader(data, "special reduction", FIELD_LIMITS)
        sent_no = r.text("out_request_no")
        out_request_no = sent_no or expect_out_request_no
        if out_request_no != expect_out_request_no:
            raise GarbledResponse("special reduction: answer is about another out_request_no")
        mchid = r.text("mchid")
        if expect_mchid is not None and mchid is not None and mchid != expect_mchid:
            raise GarbledResponse("special reduction: answer is about another mchid")
        state = r.enum("state", ReductionState, required=True)
        assert state is not None
        amount = r.integer("amount")
        if amount is not None and amount < 0:
            raise GarbledResponse("special reduction: field amount is negative")
        if expect_amount is not None and amount is not None and amount != expect_amount:
            raise GarbledResponse("special reduction: answer is about another amount")
        encrypted = r.text("bal_account_no")
        sealed = (
            Sealed(encrypted, decrypt, FIELD_LIMITS["bal_account_no_plaintext"])
            if encrypted and decrypt is not None
            else None
        )
        # Read (and so checked) even when dropped: a malformed field is a garbled answer.
        by_state: dict[str, Any] = {
            "quota_change_no": r.text("quota_change_no"),
            "success_time": r.time("success_time"),
            "fail_time": r.time("fail_time"),
            "fail_reason": r.enum("fail_reason", FailReason),
        }
        dropped = out_of_state(state, (n for n, v in by_state.items() if v is not None))
        for name in dropped:
            by_state[name] = None
        return cls(
            out_request_no=out_request_no,
            state=state,
            mchid=mchid,
            bal_account_no=sealed,
            reduction_type=r.enum("reduction_type", ReductionType),
            amount=amount,
            reason=r.text("reason"),
            **by_state,
            request_id=request_id,
            provider_out_request_no=sent_no,
            ledger_sent=bool(encrypted),
            dropped=dropped,
        )

    def missing_identity(self) -> tuple[str, ...]:
        """The identity fields the provider did not send (the engine may require them all)."""
        sent = {
            "out_request_no": self.provider_out_request_no is not None,
            "mchid": self.mchid is not None,
            "amount": self.amount is not None,
            "bal_account_no": self.ledger_sent,
        }
        return tuple(name for name, present in sent.items() if not present)


@dataclass(frozen=True, slots=True)
class ChannelBalance:
    """Both fields are optional on the page: None is "not sent", never 0 or False."""

    balance: int | None
    in_transit_reduction_exist: bool | None
    request_id: str | None = field(default=None, compare=False)

    @classmethod
    def parse(cls, data: object) -> Self:
        r = Reader(data, "channel balance", FIELD_LIMITS)
        return cls(
            balance=r.integer("balance"),
            in_transit_reduction_exist=r.boolean("in_transit_reduction_exist"),
        )


@dataclass(frozen=True, slots=True)
class CloseInfo:
    close_time: datetime | None
    close_reason: str | None


@dataclass(frozen=True, slots=True)
class ReceiverDetail:
    """receiver_detail.receiver: who the bill pays, and the transaction it pays against."""

    receiver_type: ReceiverType | None
    transaction_id: str | None
    transaction_type: TransactionType | None

    @classmethod
    def parse(cls, r: Reader) -> Self | None:
        receiver = r.child("receiver")
        if receiver is None:
            return None
        info = receiver.child("transaction_info")
        return cls(
            receiver_type=receiver.enum("type", ReceiverType),
            transaction_id=info.text("transaction_id") if info else None,
            transaction_type=info.enum("type", TransactionType) if info else None,
        )

    def as_dict(self) -> dict[str, str]:
        """What was sent, flat (the stored JSON): a field the provider left out stays out."""
        values = {
            "type": self.receiver_type,
            "transaction_id": self.transaction_id,
            "transaction_type": self.transaction_type,
        }
        return {k: str(v) for k, v in values.items() if v is not None}


@dataclass(frozen=True, slots=True)
class CompensationBill:
    out_bill_no: str
    state: BillState
    amount: int
    sp_mchid: str | None = None
    bill_id: str | None = None
    transfer_remark: str | None = None
    accept_time: datetime | None = None
    success_time: datetime | None = None
    close_info: CloseInfo | None = None
    sponsor_mchid: str | None = None
    receiver_detail: ReceiverDetail | None = None
    request_id: str | None = field(default=None, compare=False)

    @classmethod
    def parse(
        cls, data: object, *, expect_out_bill_no: str, expect_sp_mchid: str | None = None
    ) -> Self:
        """``expect_sp_mchid``: the platform merchant that signed the query; an answer naming
        another one is about another platform's bill (garbled)."""
        r = Reader(data, "compensation bill", FIELD_LIMITS)
        out_bill_no = r.text("out_bill_no", required=True)
        if out_bill_no != expect_out_bill_no:
            raise GarbledResponse("compensation bill: answer is about another out_bill_no")
        sp_mchid = r.text("sp_mchid")
        if expect_sp_mchid is not None and sp_mchid is not None and sp_mchid != expect_sp_mchid:
            raise GarbledResponse("compensation bill: answer is about another sp_mchid")
        state = r.enum("state", BillState, required=True)
        amount = r.integer("amount", required=True)
        assert state is not None and amount is not None
        if amount < 0:
            raise GarbledResponse("compensation bill: field amount is negative")
        ci = r.child("close_info")
        rd = r.child("receiver_detail")
        return cls(
            out_bill_no=out_bill_no,
            state=state,
            amount=amount,
            sp_mchid=sp_mchid,
            bill_id=r.text("bill_id"),
            transfer_remark=r.text("transfer_remark"),
            accept_time=r.time("accept_time"),
            success_time=r.time("success_time"),
            close_info=CloseInfo(ci.time("close_time"), ci.text("close_reason")) if ci else None,
            sponsor_mchid=r.text("sponsor_mchid"),
            receiver_detail=ReceiverDetail.parse(rd) if rd else None,
        )

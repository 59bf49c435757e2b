"""Typed requests and results of the four endpoints, with validation and parsing.

Amounts are integer fen, times are aware datetimes. Enums keep values they do not know
verbatim (the provider's pages disagree on ``RECEIPT_NOT_EXIST`` vs
``RECEIPT_NOT_EXIST_CLOSED``, and new values appear without notice).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Self, TypeVar, cast, overload

from wxrecon.wechatpay.errors import GarbledResponse, InvalidRequest

ORDER_NO = re.compile(r"[0-9A-Za-z]{1,32}")
MCHID = re.compile(r"[0-9]{1,32}")
BAL_ACCOUNT_NO = re.compile(r"[\x21-\x7e]{1,128}")  # printable ASCII; fits one OAEP block
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
        "bal_account_no_plaintext": 128,  # special_reductions.bal_account_no
        # Times are parsed, not stored as text; RFC 3339 needs about 35 characters.
        "success_time": 64,
        "fail_time": 64,
        "accept_time": 64,
        "close_time": 64,
    }
)


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


E = TypeVar("E", bound=OpenEnum)


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
    RECEIPT_NOT_EXIST = "RECEIPT_NOT_EXIST"
    RECEIPT_NOT_EXIST_CLOSED = "RECEIPT_NOT_EXIST_CLOSED"
    TIME_OUT_CLOSED = "TIME_OUT_CLOSED"


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
    if any(ord(c) < 0x20 or ord(c) == 0x7F or 0xD800 <= ord(c) <= 0xDFFF for c in value):
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


class _Reader:
    """Typed access to a JSON object; every problem is a GarbledResponse naming the field."""

    def __init__(self, data: object, what: str) -> None:
        if not isinstance(data, Mapping):
            raise GarbledResponse(f"{what}: response body is not a JSON object")
        self.data = data
        self.what = what

    def _bad(self, name: str, rule: str) -> GarbledResponse:
        return GarbledResponse(f"{self.what}: field {name} {rule}")

    def text(self, name: str, *, required: bool = False) -> str | None:
        value = self.data.get(name)
        if value is None:
            if required:
                raise self._bad(name, "is missing")
            return None
        if not isinstance(value, str):
            raise self._bad(name, "is not a string")
        limit = FIELD_LIMITS[name]  # every field read has a limit: a KeyError is our bug
        if len(value) > limit:
            raise self._bad(name, f"is longer than {limit} characters")
        return value

    def integer(self, name: str, *, required: bool = False) -> int | None:
        value = self.data.get(name)
        if value is None:
            if required:
                raise self._bad(name, "is missing")
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._bad(name, "is not an integer")
        return value

    def boolean(self, name: str, *, required: bool = False) -> bool | None:
        value = self.data.get(name)
        if value is None:
            if required:
                raise self._bad(name, "is missing")
            return None
        if not isinstance(value, bool):
            raise self._bad(name, "is not a boolean")
        return value

    def time(self, name: str) -> datetime | None:
        value = self.text(name)
        if value is None or value == "":
            return None
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise self._bad(name, "is not an RFC 3339 time") from None
        if parsed.tzinfo is None:
            raise self._bad(name, "has no time zone")
        return parsed

    def enum(self, name: str, kind: type[E], *, required: bool = False) -> E | None:
        value = self.text(name, required=required)
        if value is None:
            return None
        if not value:
            raise self._bad(name, "is empty")
        return kind(value)

    def child(self, name: str) -> _Reader | None:
        value = self.data.get(name)
        if value is None:
            return None
        return _Reader(value, f"{self.what}.{name}")


class Sealed:
    """Merchant-key ciphertext of a secret, with the means to open it (never printed)."""

    __slots__ = ("_ciphertext", "_decrypt")

    def __init__(self, ciphertext: str, decrypt: Callable[[str], str]) -> None:
        self._ciphertext = ciphertext
        self._decrypt = decrypt

    def open(self, what: str) -> str:
        try:
            plaintext = self._decrypt(self._ciphertext)
        except ValueError:
            raise GarbledResponse(
                f"{what}: bal_account_no does not decrypt with the merchant key"
            ) from None
        limit = FIELD_LIMITS["bal_account_no_plaintext"]
        if len(plaintext) > limit:
            raise GarbledResponse(f"{what}: bal_account_no is longer than {limit} characters")
        return plaintext

    def __repr__(self) -> str:
        return "<sealed>"

    def __reduce__(self) -> Any:
        # Its decrypt function holds the merchant private key: never serialise it.
        raise TypeError("a sealed value cannot be pickled")


class _Decrypted:
    """A dataclass field that reads as plaintext but may hold a :class:`Sealed` value.

    Decrypting is an RSA private-key operation (about 0.24 ms, a quarter of a query's client
    CPU) and most answers are never compared by it, so it happens on first read and the
    plaintext replaces the ciphertext. As a dataclass field it stays in ``fields()``, so
    generic code (the CLI's display) sees ``bal_account_no`` as before."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.key = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.key = f"_{name}"

    @overload
    def __get__(self, obj: None, owner: Any = None) -> None: ...

    @overload
    def __get__(self, obj: object, owner: Any = None) -> str | None: ...

    def __get__(self, obj: object | None, owner: Any = None) -> str | None:
        if obj is None:
            return None  # the field's default
        value = obj.__dict__[self.key]
        if isinstance(value, Sealed):
            try:
                value = value.open(self.what)
            except GarbledResponse as exc:  # the ciphertext stays: a later read fails alike
                exc.request_id = getattr(obj, "request_id", None)
                raise
            obj.__dict__[self.key] = value
        return cast(str | None, value)

    def __set__(self, obj: object, value: str | Sealed | None) -> None:
        # dataclass passes the descriptor itself as the default (field(default=…) form).
        obj.__dict__[self.key] = None if value is self else value


# Not slots=True: the descriptor field needs the instance __dict__ for its value.
@dataclass(frozen=True)
class SpecialReduction:
    out_request_no: str
    state: ReductionState
    mchid: str | None = None
    # Plaintext on read; holds a Sealed ciphertext until first read. Never in repr.
    bal_account_no: _Decrypted = field(default=_Decrypted("special reduction"), repr=False)
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
        r = _Reader(data, "special reduction")
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
        sealed = Sealed(encrypted, decrypt) if encrypted and decrypt is not None else None
        return cls(
            out_request_no=out_request_no,
            state=state,
            mchid=mchid,
            bal_account_no=sealed,
            reduction_type=r.enum("reduction_type", ReductionType),
            amount=amount,
            reason=r.text("reason"),
            quota_change_no=r.text("quota_change_no"),
            success_time=r.time("success_time"),
            fail_time=r.time("fail_time"),
            fail_reason=r.enum("fail_reason", FailReason),
            request_id=request_id,
            provider_out_request_no=sent_no,
            ledger_sent=bool(encrypted),
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
    balance: int
    in_transit_reduction_exist: bool
    request_id: str | None = field(default=None, compare=False)

    @classmethod
    def parse(cls, data: object) -> Self:
        r = _Reader(data, "channel balance")
        balance = r.integer("balance", required=True)
        assert balance is not None
        return cls(
            balance=balance,
            in_transit_reduction_exist=bool(r.boolean("in_transit_reduction_exist")),
        )


@dataclass(frozen=True, slots=True)
class CloseInfo:
    close_time: datetime | None
    close_reason: str | None


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
    request_id: str | None = field(default=None, compare=False)

    @classmethod
    def parse(cls, data: object, *, expect_out_bill_no: str) -> Self:
        r = _Reader(data, "compensation bill")
        out_bill_no = r.text("out_bill_no", required=True)
        if out_bill_no != expect_out_bill_no:
            raise GarbledResponse("compensation bill: answer is about another out_bill_no")
        state = r.enum("state", BillState, required=True)
        amount = r.integer("amount", required=True)
        assert state is not None and amount is not None
        if amount < 0:
            raise GarbledResponse("compensation bill: field amount is negative")
        ci = r.child("close_info")
        return cls(
            out_bill_no=out_bill_no,
            state=state,
            amount=amount,
            sp_mchid=r.text("sp_mchid"),
            bill_id=r.text("bill_id"),
            transfer_remark=r.text("transfer_remark"),
            accept_time=r.time("accept_time"),
            success_time=r.time("success_time"),
            close_info=CloseInfo(ci.time("close_time"), ci.text("close_reason")) if ci else None,
            sponsor_mchid=r.text("sponsor_mchid"),
        )

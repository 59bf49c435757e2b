"""Orders as the engine holds them: plain dataclasses filled from Core rows.

No ORM instances on the engine's path: a row is read with one Core select, changed only by
a won compare-and-set (``Unit`` sets the new values on it) and never joins a session. The
field names are the table's column names (a test checks both ways).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, ClassVar, TypeVar


@dataclass(eq=False)
class Row:
    """The polling columns both order tables share."""

    KIND: ClassVar[str]

    id: int
    state: str
    version: int
    attempts: int
    next_poll_at: datetime | None
    claimed_until: datetime | None
    claim_token: str | None
    last_error: str | None
    last_request_id: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(eq=False)
class ReductionRow(Row):
    KIND: ClassVar[str] = "reduction"

    mchid: str
    # Opened by the engine's read (store/sql.py ``load_rows``): plaintext in memory only,
    # never shown. Other reads (operator writes, the CLI) hold the sealed value.
    bal_account_no: str = field(repr=False)
    out_request_no: str
    reduction_type: str
    amount: int
    reason: str | None
    provider_state: str | None
    fail_reason: str | None
    quota_change_no: str | None
    success_time: datetime | None
    fail_time: datetime | None
    submitted_at: datetime | None
    last_submit_at: datetime | None
    refusal: str | None  # the provider's refusal of a POST, until a query settles it
    caller: str = "default"  # the profile that signs its calls (never changes)
    bal_account_hash: str | None = field(default=None, repr=False)  # the keyed look-up hash
    # Not a column: why the sealed ledger number did not open on load (the engine then
    # leaves the order to a person, or to a process holding its key); None when it opened.
    unopened: Exception | None = field(default=None, repr=False, metadata={"column": False})


@dataclass(eq=False)
class BillRow(Row):
    KIND: ClassVar[str] = "bill"

    out_bill_no: str
    provider_state: str | None
    amount: int | None
    bill_id: str | None
    sp_mchid: str | None
    sponsor_mchid: str | None
    transfer_remark: str | None
    accept_time: datetime | None
    success_time: datetime | None
    close_reason: str | None
    close_time: datetime | None
    receiver_detail: dict[str, str] | None = None  # as sent: type, transaction_id/_type
    caller: str = "default"  # the profile that signs its calls (never changes)


R = TypeVar("R", bound=Row)


_FIELDS: dict[type[Row], tuple[str, ...]] = {}


def field_names(cls: type[Row]) -> tuple[str, ...]:
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(f.name for f in fields(cls) if f.metadata.get("column", True))
    return names


def row_from(cls: type[R], mapping: Any) -> R:
    """A row of ``cls`` from a Core result mapping (a RowMapping; extra keys are ignored)."""
    return cls(**{name: mapping[name] for name in field_names(cls)})


def update_row(row: Row, values: Mapping[str, Any]) -> None:
    """Apply a won write's new values (unknown keys are a bug: AttributeError)."""
    names = field_names(type(row))
    for key, value in values.items():
        if key not in names:
            raise AttributeError(f"{type(row).__name__} has no column {key}")
        setattr(row, key, value)

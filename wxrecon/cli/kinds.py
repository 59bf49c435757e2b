"""The two kinds of order an operator handles, as data: what differs between a special
reduction and a compensation bill is named here, so the shared commands never ask which kind
they serve. The engine is looked up by name, lazily (``wxrecon --help`` stays fast)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wxrecon.domain.states import (
    BILL_ACTIVE,
    REDUCTION_ACTIVE,
    BState,
    RState,
)


@dataclass(frozen=True)
class Kind:
    name: str  # "reduction" or "bill": the events table's kind
    label: str  # how an operator calls it: "reduction", "compensation bill"
    number_field: str  # out_request_no / out_bill_no
    states: tuple[str, ...]
    active: frozenset[str]
    failed: frozenset[str]  # final, and not what was asked for (exit 3 with --wait)
    by_merchant: bool  # orders carry a target mchid (filters and look-ups take --mchid)
    model_name: str  # in wxrecon.store.models
    getter: str  # in wxrecon.store.reads: one order by id or number
    to_dict: str  # in wxrecon.store.reads: the JSON view
    reason_fields: tuple[str, ...]  # where a final failure's reason is, first set wins
    list_columns: tuple[tuple[str, str], ...]  # (header, field)
    show_fields: tuple[tuple[str, str], ...]

    @property
    def model(self) -> Any:
        from wxrecon.store import models

        return getattr(models, self.model_name)

    def get(self, session: Any, ref: str, mchid: str | None = None) -> Any:
        """By id (all digits) or by number; raises the engine's OrderNotFound / Ambiguous."""
        from wxrecon.domain.errors import OrderNotFound
        from wxrecon.store import reads as queries

        getter = getattr(queries, self.getter)
        if ref.isascii() and ref.isdigit():
            try:
                return getter(session, id=int(ref))
            except OrderNotFound:
                pass  # an all-digit order number
        merchant = {"mchid": mchid} if self.by_merchant else {}
        return getter(session, **{self.number_field: ref}, **merchant)

    def as_dict(self, order: Any) -> dict[str, Any]:
        from wxrecon.store import reads as queries

        row: dict[str, Any] = getattr(queries, self.to_dict)(order)
        return row

    def retry(self, db: Any, order_id: int, *, actor: str, why: str, force: bool) -> str:
        from wxrecon.domain.kinds import KINDS
        from wxrecon.engine import operator

        kind = KINDS[self.name]
        return operator.retry(db, kind, order_id, actor=actor, why=why, force=force)

    def requery(self, db: Any, order_id: int, *, actor: str, why: str) -> str:
        from wxrecon.domain.kinds import KINDS
        from wxrecon.engine import operator

        return operator.requery(db, KINDS[self.name], order_id, actor=actor, why=why)

    def failure_reason(self, order: Any, last_event: str) -> str:
        for field in self.reason_fields:
            value = getattr(order, field, None)
            if value:
                return str(value)
        return last_event or "no reason recorded"


REDUCTION = Kind(
    name="reduction",
    label="reduction",
    number_field="out_request_no",
    states=tuple(s.value for s in RState),
    active=frozenset(s.value for s in REDUCTION_ACTIVE),
    failed=frozenset({RState.FAILED.value, RState.REJECTED.value}),
    by_merchant=True,
    model_name="SpecialReduction",
    getter="get_reduction",
    to_dict="reduction_dict",
    reason_fields=("fail_reason", "last_error"),
    list_columns=(
        ("id", "id"),
        ("out_request_no", "out_request_no"),
        ("mchid", "mchid"),
        ("caller", "caller"),
        ("amount", "amount"),
        ("state", "state"),
        ("fail reason", "fail_reason"),
        ("attempts", "attempts"),
        ("next query", "next_poll_at"),
        ("updated", "updated_at"),
    ),
    show_fields=(
        ("out_request_no", "out_request_no"),
        ("target mchid", "mchid"),
        ("caller", "caller"),
        ("bal_account_no", "bal_account_no"),
        ("type", "reduction_type"),
        ("amount", "amount"),
        ("reason", "reason"),
        ("state", "state"),
        ("provider state", "provider_state"),
        ("fail reason", "fail_reason"),
        ("quota_change_no", "quota_change_no"),
        ("succeeded", "success_time"),
        ("failed", "fail_time"),
        ("first submitted", "submitted_at"),
        ("attempts", "attempts"),
        ("next query", "next_poll_at"),
        ("last error", "last_error"),
        ("last Request-ID", "last_request_id"),
        ("created", "created_at"),
        ("updated", "updated_at"),
    ),
)

BILL = Kind(
    name="bill",
    label="compensation bill",
    number_field="out_bill_no",
    states=tuple(s.value for s in BState),
    active=frozenset(s.value for s in BILL_ACTIVE),
    failed=frozenset({BState.CLOSED.value, BState.CANCELLED.value}),
    by_merchant=False,
    model_name="CompensationBill",
    getter="get_bill",
    to_dict="bill_dict",
    reason_fields=("close_reason", "last_error"),
    list_columns=(
        ("id", "id"),
        ("out_bill_no", "out_bill_no"),
        ("caller", "caller"),
        ("amount", "amount"),
        ("state", "state"),
        ("attempts", "attempts"),
        ("next query", "next_poll_at"),
        ("updated", "updated_at"),
    ),
    show_fields=(
        ("out_bill_no", "out_bill_no"),
        ("caller", "caller"),
        ("state", "state"),
        ("provider state", "provider_state"),
        ("amount", "amount"),
        ("bill_id", "bill_id"),
        ("sp_mchid", "sp_mchid"),
        ("sponsor_mchid", "sponsor_mchid"),
        ("receiver", "receiver_detail"),
        ("transfer remark", "transfer_remark"),
        ("accepted", "accept_time"),
        ("succeeded", "success_time"),
        ("close reason", "close_reason"),
        ("closed", "close_time"),
        ("attempts", "attempts"),
        ("next query", "next_poll_at"),
        ("last error", "last_error"),
        ("last Request-ID", "last_request_id"),
        ("created", "created_at"),
        ("updated", "updated_at"),
    ),
)

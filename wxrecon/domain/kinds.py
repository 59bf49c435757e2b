"""The order kinds as data: all the engine, the store and the CLI know about a kind.

A special reduction and a compensation bill are polled, recorded and retried alike; where
they differ (a reduction is submitted and may be re-entered, a bill is only queried) the
difference is a field here, so no other module asks which kind it holds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from wxrecon.domain import answers, states
from wxrecon.domain.errors import IllegalTransition
from wxrecon.domain.states import BState, Kind, RState
from wxrecon.store import models
from wxrecon.store.rows import BillRow, ReductionRow, Row


@dataclass(frozen=True, eq=False)
class OrderKind:
    name: Kind  # the ``kind`` column of events, the metrics label
    model: type[Any]  # the ORM model: the table
    row: type[Row]
    initial: str  # the state intake writes
    review: str  # where the engine gives up and a person looks
    active: frozenset[str]  # polled by the sweep
    final: frozenset[str]  # the provider's last word
    # Maybe sent but never confirmed accepted: bounded by the provider's re-entry window.
    unconfirmed: frozenset[str]
    transitions: Mapping[Any, frozenset[Any]]
    # Review -> final by four-eyes resolution only (domain/resolution.py), never automatic.
    resolutions: Mapping[Any, frozenset[Any]]
    number_fields: tuple[str, ...]  # what names an order to the provider (the unique key)
    intake_reason: str
    # The POST: None for a kind that is only queried. ``sent`` is the state of a sent order.
    request: Callable[[Any], Any] | None
    sent: str | None
    rejected: str | None  # never applied: refused before sending, or proven absent
    query: Callable[[Any, Any], Any]  # (provider client, row) -> the provider's answer
    from_provider: Callable[[Any], str | None]
    retry_target: Callable[[Any, bool], str]  # (row, force) -> state; IllegalTransition
    values: Callable[[Any], dict[str, Any]]  # the row values an answer sets
    detail: Callable[[Any], str]  # the answer's reason, for the event
    differences: Callable[[Any, Any, bool], list[str]]  # (row, answer, check ledger)
    missing: Callable[[Any, str], list[str]]  # (answer, its state): what a final one lacks
    query_failed: str  # the log line of a query that got no answer

    def __str__(self) -> str:
        return str(self.name)

    def check(self, src: str, dst: str) -> None:
        if dst not in self.transitions[src]:
            raise IllegalTransition(f"{self.name}: {src} -> {dst} is not allowed")

    def number(self, row: Row) -> str:
        """The order's number as operators and logs name it (never the ledger number)."""
        return "/".join(str(getattr(row, f)) for f in self.number_fields)

    def log_fields(self, row: Row, request_id: str | None = None) -> dict[str, Any]:
        return {**{f: getattr(row, f) for f in self.number_fields}, "request_id": request_id}


REDUCTION = OrderKind(
    name=Kind.REDUCTION,
    model=models.SpecialReduction,
    row=ReductionRow,
    initial=RState.RECEIVED,
    review=RState.NEEDS_REVIEW,
    active=states.REDUCTION_ACTIVE,
    final=states.REDUCTION_FINAL,
    unconfirmed=states.REDUCTION_UNCONFIRMED,
    transitions=states.REDUCTION_TRANSITIONS,
    resolutions=states.REDUCTION_RESOLUTIONS,
    number_fields=("mchid", "out_request_no"),
    intake_reason="received",
    request=answers.reduction_request,
    sent=RState.SUBMITTED,
    rejected=RState.REJECTED,
    query=lambda client, row: client.query_special_reduction(
        row.out_request_no, mchid=row.mchid, bal_account_no=row.bal_account_no
    ),
    from_provider=states.reduction_from_provider,
    retry_target=lambda row, force: states.reduction_retry_target(
        row.state, ever_sent=row.submitted_at is not None, force=force
    ),
    values=answers.reduction_values,
    detail=answers.reduction_detail,
    differences=answers.reduction_differences,
    missing=answers.reduction_missing,
    query_failed="query failed",
)

BILL = OrderKind(
    name=Kind.BILL,
    model=models.CompensationBill,
    row=BillRow,
    initial=BState.TRACKING,
    review=BState.NEEDS_REVIEW,
    active=states.BILL_ACTIVE,
    final=states.BILL_FINAL,
    unconfirmed=frozenset(),
    transitions=states.BILL_TRANSITIONS,
    resolutions=states.BILL_RESOLUTIONS,
    number_fields=("out_bill_no",),
    intake_reason="tracking requested",
    request=None,
    sent=None,
    rejected=None,
    query=lambda client, row: client.query_compensation_bill(row.out_bill_no),
    from_provider=states.bill_from_provider,
    retry_target=lambda row, force: states.bill_retry_target(row.state, force=force),
    values=answers.bill_values,
    detail=answers.bill_detail,
    differences=answers.bill_differences,
    missing=answers.bill_missing,
    # A bill the provider does not know yet may simply not be created yet.
    query_failed="bill query gave no answer",
)

KINDS: dict[str, OrderKind] = {str(k.name): k for k in (REDUCTION, BILL)}


def kind_of(row: Row) -> OrderKind:
    return KINDS[row.KIND]

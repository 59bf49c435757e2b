"""Outcome events as data: which writes an app is told about, under which type, and what the
event says. Pure functions; the store writes them (``store.unit``), the relay sends them.

An event is a flat JSON object with the same keys for every type (``None`` where a key does
not apply), so a receiver reads it without branching on the type first. Never the plaintext
``bal_account_no``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from wxrecon.domain.kinds import OrderKind
from wxrecon.store.rows import Row

SCHEMA_VERSION = 1
ENGINE_ACTOR = "engine"

# The type suffix of a state the app is told about: final states, rejection and review.
STATE_EVENTS: Mapping[str, str] = {
    "SUCCESS": "succeeded",
    "FAILED": "failed",
    "REJECTED": "rejected",
    "CLOSED": "closed",
    "CANCELLED": "cancelled",
    "NEEDS_REVIEW": "needs_review",
}
# An operator moved an order out of review (or, forced, out of a final state) back to work.
RETRIED = "retried"
REFUSED = "refused"

# What an event copies from the order, when the kind has it.
ORDER_FIELDS = (
    "mchid",
    "out_request_no",
    "out_bill_no",
    "amount",
    "fail_reason",
    "close_reason",
    "quota_change_no",
    "bill_id",
    "success_time",
    "fail_time",
    "accept_time",
    "close_time",
)
# The keys of every event, in order: the contract (README, "Outcome delivery").
FIELDS = (
    "schema_version",
    "event_id",
    "type",
    "kind",
    "order_id",
    "state",
    "previous_state",
    *ORDER_FIELDS,
    "request_id",
    "reason",
    "actor",
    "occurred_at",
)
MAX_TEXT = 256  # a refused intake's fields come from anyone: bounded


def outcome_type(kind: OrderKind, src: str, dst: str | None, actor: str) -> str | None:
    """The event type of a write from ``src`` to ``dst`` by ``actor``; None when the app is
    not told (the state stays, or it moves between in-flight states on its own)."""
    if dst is None or dst == src:
        return None
    suffix = STATE_EVENTS.get(str(dst))
    told = dst in kind.final or dst == kind.review or dst == kind.rejected
    if told and suffix is not None:
        return f"{kind.name}.{suffix}"
    if actor != ENGINE_ACTOR:
        return f"{kind.name}.{RETRIED}"
    return None


def event_id(kind: str, order_id: int, version: int) -> str:
    """Stable for a change: the order's row version after it is unique per order, and
    re-delivering the stored event never makes a new one."""
    return f"wxr.{kind}.{order_id}.v{version}"


def refusal_event_id(kind: str, message_id: str) -> str:
    """A refused intake's id: its task message's id, so a redelivered message is the same
    refusal."""
    return f"wxr.{kind}.refused.{message_id[:64]}"


def iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def order_event(
    kind: OrderKind,
    row: Row,
    new_values: Mapping[str, Any],
    *,
    type_: str,
    reason: str,
    actor: str,
    request_id: str | None,
    now: datetime,
) -> dict[str, Any]:
    """The event of a write, from the row as it is after the write's new values."""
    after = {**{f: getattr(row, f, None) for f in ORDER_FIELDS}, **new_values}
    event: dict[str, Any] = dict.fromkeys(FIELDS)
    event.update({f: iso(after.get(f)) for f in ORDER_FIELDS})
    event.update(
        schema_version=SCHEMA_VERSION,
        event_id=event_id(str(kind.name), row.id, int(new_values["version"])),
        type=type_,
        kind=str(kind.name),
        order_id=row.id,
        state=str(new_values.get("state", row.state)),
        previous_state=row.state,
        request_id=request_id,
        reason=reason,
        actor=actor,
        occurred_at=now.isoformat(),
    )
    return event


def _bounded(value: Any) -> str | None:
    return value[:MAX_TEXT] if isinstance(value, str) else None


def refusal_event(
    kind: OrderKind, message_id: str, fields: Mapping[str, Any], reason: str, now: datetime
) -> dict[str, Any]:
    """The event of a refused intake (bad input, a conflicting re-entry): no order row, so
    only what the caller sent that names the order (never the ledger number)."""
    amount = fields.get("amount")
    event: dict[str, Any] = dict.fromkeys(FIELDS)
    event.update(
        schema_version=SCHEMA_VERSION,
        event_id=refusal_event_id(str(kind.name), message_id),
        type=f"{kind.name}.{REFUSED}",
        kind=str(kind.name),
        state="REFUSED",
        mchid=_bounded(fields.get("mchid")),
        out_request_no=_bounded(fields.get("out_request_no")),
        out_bill_no=_bounded(fields.get("out_bill_no")),
        amount=amount if isinstance(amount, int) and not isinstance(amount, bool) else None,
        reason=reason[:MAX_TEXT],
        actor="intake",
        occurred_at=now.isoformat(),
    )
    return event


def order_no(event: Mapping[str, Any]) -> str | None:
    number = event.get("out_request_no") or event.get("out_bill_no")
    return str(number)[:64] if number else None


def order_key(event: Mapping[str, Any]) -> str:
    """Events of one order share a key and are delivered in order; a refusal has its own."""
    if event.get("order_id") is None:
        return str(event["event_id"])[:128]
    return f"{event['kind']}:{event['order_id']}"


def outbox_row(event: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """The ``outcomes`` row of an event, pending delivery."""
    return {
        "event_id": event["event_id"],
        "type": event["type"],
        "kind": event["kind"],
        "order_id": event.get("order_id"),
        "order_key": order_key(event),
        "order_no": order_no(event),
        "state": event["state"],
        "payload": json.dumps(event, ensure_ascii=False, separators=(",", ":")),
        "occurred_at": now,
        "delivery": "pending",
        "attempts": 0,
        "next_attempt_at": now,
    }


# -- ledger discrepancies (domain/ledger.py) ----------------------------------------------------

LEDGER_KIND = "ledger"
# The keys a ledger event adds to FIELDS (``ledger`` is a prefix of the lookup hash, never
# the ledger number).
LEDGER_FIELDS = ("ledger", "observed", "explained", "window_start", "window_end", "order_ids")
LEDGER_LABEL = 12  # hex characters of the hash that name a ledger in events, metrics, the CLI


def ledger_label(ledger_hash: str) -> str:
    return ledger_hash[:LEDGER_LABEL]


def ledger_event(
    *,
    discrepancy_id: int,
    verdict: str,
    mchid: str,
    ledger_hash: str,
    amount: int,
    observed: int,
    explained: int,
    window: tuple[datetime, datetime],
    flagged: int = 0,
    order_ids: list[int],
    now: datetime,
) -> dict[str, Any]:
    """``ledger.unexplained_debit`` / ``ledger.unexplained_credit``: FIELDS (order fields
    None but mchid and amount) and LEDGER_FIELDS."""
    event: dict[str, Any] = dict.fromkeys((*FIELDS, *LEDGER_FIELDS))
    event.update(
        schema_version=SCHEMA_VERSION,
        event_id=f"wxr.{LEDGER_KIND}.{discrepancy_id}",
        type=f"{LEDGER_KIND}.{verdict}",
        kind=LEDGER_KIND,
        order_id=discrepancy_id,
        state=verdict.upper(),
        mchid=mchid,
        amount=amount,
        ledger=ledger_label(ledger_hash),
        observed=observed,
        explained=explained,
        window_start=window[0].isoformat(),
        window_end=window[1].isoformat(),
        order_ids=order_ids,
        reason=f"balance moved {observed} fen, reductions explain {explained} fen"
        + (f", windows inside it told {flagged} fen already" if flagged else ""),
        actor=ENGINE_ACTOR,
        occurred_at=now.isoformat(),
    )
    return event


def ledger_outbox_row(event: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """A ledger event's row: one ledger's discrepancies share an order key (delivered in
    order), apart from every order's."""
    row = outbox_row(event, now)
    row["order_key"] = f"{LEDGER_KIND}:{event['mchid']}:{event['ledger']}"
    return row

"""Intake: write new orders (RECEIVED / TRACKING, with their events) in the caller's
transaction, each claimed for a lease so the caller can process or enqueue it without the
sweep racing it; if the caller dies, the lease expires and the sweep takes it.

An order that exists already is found, not written again: the same parameters return it
(and its claim, when this is a redelivery of the call that created it: same token); other
parameters raise Conflict and write nothing.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from wxrecon import metrics
from wxrecon.callers import DEFAULT
from wxrecon.config import Settings
from wxrecon.domain.answers import request_differences
from wxrecon.domain.errors import Conflict
from wxrecon.domain.kinds import BILL, REDUCTION, OrderKind
from wxrecon.store import sql
from wxrecon.store.db import database_now, keyring_of
from wxrecon.store.rows import row_from
from wxrecon.store.sealed import Keyring
from wxrecon.wechatpay.resources import SpecialReductionRequest, check_order_no

log = logging.getLogger(__name__)

ROWS_PER_STATEMENT = 500
# The settings' default (one home for it: config.py); callers pass settings.claim_lease.
DEFAULT_LEASE: float = Settings.model_fields["claim_lease"].default


@dataclass(frozen=True)
class IntakeResult:
    order_id: int
    created: bool
    state: str
    # The claim token when the caller holds the order's lease (it was just created, or this
    # is a redelivery of the call that created it), so it should process or enqueue it.
    token: str | None

    @property
    def claimed(self) -> bool:
        return self.token is not None


def new_token() -> str:
    return uuid.uuid4().hex


def _new_row(kind: OrderKind, token: str, lease: float, now: datetime) -> dict[str, Any]:
    """The values every new order starts with, claimed for ``lease`` seconds."""
    until = now + timedelta(seconds=lease)
    return {
        "state": str(kind.initial),
        "attempts": 0,
        "next_poll_at": until,
        "claimed_until": until,
        "claim_token": token,
        "created_at": now,
        "updated_at": now,
        "version": 1,
    }


def reduction_values(
    request: SpecialReductionRequest, keys: Keyring, caller: str = DEFAULT
) -> dict[str, Any]:
    """A request's columns, its ledger number sealed to the row (the plaintext is never
    stored) with its keyed look-up hash."""
    return {
        "caller": caller,
        "mchid": request.mchid,
        "bal_account_no": keys.seal(request.bal_account_no, request.mchid, request.out_request_no),
        "bal_account_hash": keys.lookup_hash(request.bal_account_no),
        "out_request_no": request.out_request_no,
        "reduction_type": str(request.reduction_type),
        "amount": request.amount,
        "reason": request.reason,
    }


def intake(
    session: Session,
    kind: OrderKind,
    orders: Sequence[Mapping[str, Any]],
    *,
    token: str,
    lease: float,
    now: datetime | None = None,
    actor: str = "intake",
    same: Any = None,
) -> list[IntakeResult]:
    """Write ``orders`` (each a mapping of the kind's own columns) in ``session``'s
    transaction under one ``token``: new rows with multi-row INSERTs (per 500), their events
    with one executemany. ``same(stored_row, order) -> [differing field names]`` decides
    whether an existing order is the same one (None: always)."""
    conn = session.connection()
    now = now or database_now(conn)  # the lease is compared by other workers: their clock
    base = _new_row(kind, token, lease, now)
    keys = kind.number_fields
    created: dict[tuple[Any, ...], int] = {}
    for i in range(0, len(orders), ROWS_PER_STATEMENT):
        part = [{**o, **base} for o in orders[i : i + ROWS_PER_STATEMENT]]
        for row_id, *key in sql.insert_new(conn, kind.model, keys, part):
            created[tuple(key)] = row_id

    results: list[IntakeResult | None] = []
    new: list[tuple[int, Mapping[str, Any]]] = []
    known: list[int] = []  # positions of the orders stored before (or earlier in ``orders``)
    for position, order in enumerate(orders):
        new_id = created.pop(tuple(order[k] for k in keys), None)
        if new_id is not None:
            new.append((new_id, order))
            results.append(IntakeResult(new_id, True, str(kind.initial), token))
        else:
            results.append(None)
            known.append(position)
    if known:
        # One look-up for all of them (a re-run of a big file meets thousands a batch).
        wanted = list(dict.fromkeys(tuple(orders[p][k] for k in keys) for p in known))
        stored = {
            tuple(m[k] for k in keys): row_from(kind.row, m)
            for m in sql.find_by_numbers(conn, kind.model, keys, wanted)
        }
        for p in known:
            order = orders[p]
            results[p] = _existing(kind, stored[tuple(order[k] for k in keys)], order, token, same)
    _record_new(conn, kind, new, actor, now)
    return [r for r in results if r is not None]


def _existing(
    kind: OrderKind, stored: Any, order: Mapping[str, Any], token: str, same: Any
) -> IntakeResult:
    differs = same(stored, order) if same is not None else []
    if differs:
        raise Conflict(
            f"{kind} {kind.number(stored)} already exists with a different "
            f"{', '.join(differs)}; nothing changed"
        )
    # A redelivered intake message (same deterministic token) still owns its claim.
    mine = stored.claim_token == token and stored.state in kind.active
    return IntakeResult(stored.id, False, stored.state, token if mine else None)


def _key(kind: OrderKind, order: Mapping[str, Any]) -> dict[str, Any]:
    return {k: order[k] for k in kind.number_fields}


def _record_new(
    conn: Connection,
    kind: OrderKind,
    new: Sequence[tuple[int, Mapping[str, Any]]],
    actor: str,
    now: datetime,
) -> None:
    """The first events of new rows (one executemany), their log lines and counts."""
    if not new:
        return
    initial = str(kind.initial)
    sql.insert_first_events(
        conn, str(kind), [i for i, _ in new], initial, kind.intake_reason, actor, now
    )
    for _, order in new:
        log.info("%s %s", kind, kind.intake_reason, extra=_key(kind, order))
    metrics.count_transition(str(kind), "", initial, len(new))


def intake_reductions(
    session: Session,
    requests: Sequence[SpecialReductionRequest],
    *,
    token: str,
    lease: float = DEFAULT_LEASE,
    now: datetime | None = None,
    actor: str = "intake",
    keys: Keyring | None = None,
    caller: str = DEFAULT,
) -> list[IntakeResult]:
    """Validated requests as new RECEIVED orders signed by ``caller`` (a known profile: the
    caller of this function checks it). Conflict when one exists with other parameters,
    its caller included: roll back, nothing is kept. ``keys``: by default those of the
    Database the session came from, else the process's (SealError, one line, when missing)."""
    keys = keys or keyring_of(session)
    orders = [reduction_values(r, keys, caller) for r in requests]
    # Each order's own request, by position: a number repeated in one batch with other
    # parameters must be compared as given, not as its last repetition.
    request_of = {id(o): r for o, r in zip(orders, requests, strict=True)}

    def differences(stored: Any, order: Mapping[str, Any]) -> list[str]:
        request = request_of[id(order)]
        differs = [n for n in request_differences(stored, request) if n != "bal_account_no"]
        # Each seal has a fresh nonce: the ledger numbers are compared by their hashes.
        if stored.bal_account_hash != order["bal_account_hash"]:
            differs.insert(0, "bal_account_no")
        return differs

    return intake(
        session,
        REDUCTION,
        orders,
        token=token,
        lease=lease,
        now=now,
        actor=actor,
        same=lambda stored, order: differences(stored, order) + _other_caller(stored, order),
    )


def _other_caller(stored: Any, order: Mapping[str, Any]) -> list[str]:
    """An order's caller never changes: the same order with another one is a Conflict."""
    return ["caller"] if stored.caller != order["caller"] else []


def intake_reduction(
    session: Session,
    request: SpecialReductionRequest,
    *,
    token: str | None = None,
    lease: float = DEFAULT_LEASE,
    now: datetime | None = None,
    actor: str = "intake",
    caller: str = DEFAULT,
) -> IntakeResult:
    """One new RECEIVED order (see :func:`intake_reductions`)."""
    token = token or new_token()
    return intake_reductions(
        session, [request], token=token, lease=lease, now=now, actor=actor, caller=caller
    )[0]


def intake_bill(
    session: Session,
    out_bill_no: object,
    *,
    token: str | None = None,
    lease: float = DEFAULT_LEASE,
    now: datetime | None = None,
    actor: str = "intake",
    caller: str = DEFAULT,
) -> IntakeResult:
    """Start tracking a compensation bill, queried as ``caller`` (idempotent: an existing
    one is returned; Conflict when it is tracked with another caller). Raises
    InvalidRequest, writing nothing, when ``out_bill_no`` is not a valid number."""
    order = {"out_bill_no": check_order_no(out_bill_no, "out_bill_no"), "caller": caller}
    token = token or new_token()
    return intake(
        session, BILL, [order], token=token, lease=lease, now=now, actor=actor, same=_other_caller
    )[0]

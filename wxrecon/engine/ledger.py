"""Ledger reconciliation: take channel-balance snapshots, check each new check point against
the one before it (domain/ledger.py), record what the reductions do not explain.

Order work is never starved: the balance query has its own rate-limit key per target merchant
(``query_balance:<mchid>``, ratelimit.limit_key), so it never spends the reductions' budget,
and one round takes at most ``MAX_PER_ROUND`` ledgers and stops at the first local throttle
(the next beat tick carries on). A discrepancy is written with its outcome event
(``ledger.unexplained_debit`` / ``ledger.unexplained_credit``) in one transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from wxrecon.domain import ledger, outcomes
from wxrecon.store import ledgers as store
from wxrecon.store.db import Database
from wxrecon.store.ledgers import Ledger
from wxrecon.store.sealed import Keyring
from wxrecon.wechatpay.errors import Throttled, WeChatPayError

log = logging.getLogger(__name__)

MAX_PER_ROUND = 100  # ledgers one round queries at most (a small budget per beat tick)


class BalanceProvider(Protocol):
    def query_balance(self, *, mchid: str, bal_account_no: str) -> Any: ...


@dataclass
class Round:
    """What one snapshot round did."""

    taken: int = 0
    failed: int = 0
    deferred: int = 0  # left for the next round (throttled, or over the budget)
    checks: list[ledger.Check] = field(default_factory=list)
    discrepancies: list[int] = field(default_factory=list)  # new discrepancy ids


def ledgers_to_snapshot(
    db: Database, keys: Keyring, since: datetime, mchid: str | None = None
) -> list[Ledger]:
    """Ledgers with recent order activity, and those snapshotted recently (so a ledger stays
    watched for the activity window after its last order)."""
    found = {(x.mchid, x.bal_account_no): x for x in store.recent_ledgers(db, keys, since, mchid)}
    for row in store.recent_snapshot_ledgers(db, since, mchid):
        number = store.open_ledger(keys, row["mchid"], row["ledger_sealed"])
        found.setdefault((row["mchid"], number), Ledger(row["mchid"], number))
    return [found[k] for k in sorted(found)]


def snapshot(
    db: Database,
    client: BalanceProvider,
    keys: Keyring,
    items: Sequence[Ledger],
    *,
    budget: int = MAX_PER_ROUND,
) -> Round:
    """Query and store each ledger's balance, then check it against its previous check
    point. A failed query stores nothing (no balance is not a balance)."""
    result = Round()
    for n, item in enumerate(items):
        if n >= budget:
            result.deferred += len(items) - n
            break
        asked = db.now()
        try:
            answer = client.query_balance(mchid=item.mchid, bal_account_no=item.bal_account_no)
        except Throttled:
            result.deferred += len(items) - n
            break
        except WeChatPayError as exc:
            result.failed += 1
            log.warning("ledger snapshot of %s failed: %s", item.mchid, type(exc).__name__)
            continue
        snap_id, digest = store.insert_snapshot(
            db,
            keys,
            item,
            balance=answer.balance,
            in_transit=answer.in_transit_reduction_exist,
            request_id=answer.request_id,
            asked_at=asked,
        )
        result.taken += 1
        outcome = check_latest(db, item, digest, snap_id)
        if outcome is not None:
            result.checks.append(outcome[0])
            if outcome[1] is not None:
                result.discrepancies.append(outcome[1])
    return result


def check_latest(
    db: Database, item: Ledger, digest: str, snap_id: int
) -> tuple[ledger.Check, int | None] | None:
    """Decide whether snapshot ``snap_id`` is a check point and, when it is, check it
    against the ledger's previous one; None when it is not (it waits: the next check
    point's window spans it) or it is the ledger's first. Returns the check and the new
    discrepancy's id, if any."""
    rows = store.snapshots_by_id(db, [snap_id])
    if not rows or not ledger.usable(end := store.snapshot_of(rows[0])):
        return None
    earlier = [store.snapshot_of(r) for r in store.points(db, item.mchid, digest, snap_id)]
    low = min((p.asked for p in earlier), default=end.asked)
    found = store.reductions_near(db, item.mchid, digest, low, end.taken_at)
    waiting = ledger.unsure(end, found)
    if waiting:
        log.info(
            "ledger %s/%s: snapshot %d is not a check point yet (orders %s were in flight "
            "around it or are not final here)",
            item.mchid,
            outcomes.ledger_label(digest),
            snap_id,
            ", ".join(map(str, waiting[:10])),
        )
        return None
    start = ledger.start_of(end, earlier, found)
    if start is None:
        store.record_discrepancy(db, item.mchid, digest, None, point=snap_id)
        return None
    result = ledger.check(start, end, found, _flagged(db, item.mchid, digest, start, end))
    return result, record(db, item.mchid, digest, result, point=snap_id)


def _flagged(
    db: Database, mchid: str, digest: str, start: ledger.Snapshot, end: ledger.Snapshot
) -> int:
    return store.flagged(db, mchid, digest, start.taken_at, end.taken_at)


def record(
    db: Database, mchid: str, digest: str, result: ledger.Check, point: int | None = None
) -> int | None:
    """Store a discrepancy and its outcome event (and, given ``point``, make that snapshot
    a check point with them); None for an ok check or one recorded."""

    def outcome(discrepancy_id: int, now: datetime) -> dict[str, Any]:
        event = outcomes.ledger_event(
            discrepancy_id=discrepancy_id,
            verdict=result.verdict,
            mchid=mchid,
            ledger_hash=digest,
            amount=result.amount,
            observed=result.observed,
            explained=result.explained,
            flagged=result.flagged,
            window=(result.start.taken_at, result.end.taken_at),
            order_ids=list(result.order_ids),
            now=now,
        )
        return outcomes.ledger_outbox_row(event, now)

    new_id = store.record_discrepancy(db, mchid, digest, result, outcome=outcome, point=point)
    if new_id is not None:
        level = logging.WARNING if result.verdict == ledger.UNEXPLAINED_DEBIT else logging.INFO
        log.log(
            level,
            "ledger %s/%s: %s of %d fen between %s and %s",
            mchid,
            outcomes.ledger_label(digest),
            result.verdict,
            result.amount,
            result.start.taken_at.isoformat(),
            result.end.taken_at.isoformat(),
        )
    return new_id


def recheck(db: Database, mchid: str, digest: str) -> list[ledger.Check]:
    """Every window between the ledger's stored check points, checked again (``ledger
    check``, e.g. after a resolution); new discrepancies are recorded, ones recorded already
    are left as they are."""
    rows = [r for r in store.snapshots(db, mchid, digest, limit=10_000) if r["point"]]
    if not rows:
        return []
    chain = [store.snapshot_of(r) for r in rows]
    found = store.reductions_near(db, mchid, digest, chain[0].asked, chain[-1].taken_at)
    checks = []
    for n, end in enumerate(chain):
        start = ledger.start_of(end, chain[:n], found) if ledger.point(end, found) else None
        if start is None:
            continue
        result = ledger.check(start, end, found, _flagged(db, mchid, digest, start, end))
        record(db, mchid, digest, result)
        checks.append(result)
    return checks


def activity_since(now: datetime, window: float) -> datetime:
    return now - timedelta(seconds=window)


def run(db: Database, client: BalanceProvider, settings: Any, mchid: str | None = None) -> Round:
    """One round as the beat task and ``wxrecon ledger snapshot`` run it: the ledgers with
    activity in the window (``WXRECON_LEDGER_ACTIVITY_WINDOW``), snapshotted and checked.
    SealError (one line) when the keys are not configured."""
    from wxrecon.store.sealed import keyring

    keys = keyring(settings)
    since = activity_since(db.now(), settings.ledger_activity_window)
    return snapshot(db, client, keys, ledgers_to_snapshot(db, keys, since, mchid))

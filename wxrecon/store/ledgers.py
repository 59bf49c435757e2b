"""Every statement of the ledger reconciliation: snapshots, discrepancies, and the two reads
of the orders' table it depends on (``recent_ledgers``, ``reductions_near``), each in one function
so the ledger number's at-rest form (plaintext or sealed + hash) is known in one place.

A snapshot's ledger number is sealed under the keyring (associated data: the mchid and
``LEDGER_AAD``) and grouped by its lookup hash, so two snapshots of one ledger share a hash
without the number being stored in the clear.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, and_, case, func, or_, select

from wxrecon.domain import ledger
from wxrecon.domain.states import RState
from wxrecon.store.db import Database
from wxrecon.store.models import LedgerDiscrepancy, LedgerSnapshot, Outcome, SpecialReduction
from wxrecon.store.sealed import Keyring
from wxrecon.store.sql import upsert

S = cast(Table, LedgerSnapshot.__table__)
D = cast(Table, LedgerDiscrepancy.__table__)
R = cast(Table, SpecialReduction.__table__)
O = cast(Table, Outcome.__table__)  # noqa: E741
LEDGER_AAD = "ledger"  # the seal's second binding (the first is the mchid)
MAX_LEDGERS = 10_000  # ledgers one snapshot round takes at most
# Final without money moving (FAILED, REJECTED) or SUCCESS: every other state, once sent, may
# or may not have moved it.
NO_DOUBT = (RState.SUCCESS, RState.FAILED, RState.REJECTED)


@dataclass(frozen=True)
class Ledger:
    mchid: str
    bal_account_no: str  # plaintext: only in memory, for the query


# -- the orders' table --------------------------------------------------------------------------


def recent_ledgers(
    db: Database, keys: Keyring, since: datetime, mchid: str | None = None
) -> list[Ledger]:
    """The ledgers of reductions created or updated since ``since`` (recent activity): one
    order per ledger (by its keyed hash) is opened for the number the query needs."""
    last = select(func.max(R.c.id).label("id")).where(R.c.updated_at >= since)
    if mchid is not None:
        last = last.where(R.c.mchid == mchid)
    ids = last.group_by(R.c.mchid, R.c.bal_account_hash).limit(MAX_LEDGERS).subquery()
    stmt = select(R.c.mchid, R.c.out_request_no, R.c.bal_account_no).where(
        R.c.id.in_(select(ids.c.id))
    )
    with db.read() as s:
        rows = s.execute(stmt).all()
    return [Ledger(r.mchid, keys.open(r.bal_account_no, r.mchid, r.out_request_no)) for r in rows]


def reductions_near(
    db: Database, mchid: str, ledger_hash: str, low: datetime, high: datetime
) -> list[ledger.Reduction]:
    """The reductions of one ledger (its keyed hash) that may lie after a snapshot asked at
    ``low`` and by one answered at ``high`` (domain/ledger.position): SUCCESS ones not
    recorded before ``low``, and every one sent whose outcome is not final here (an old one
    in review keeps every later snapshot undecided, as it must); none first sent after
    ``high``."""
    not_after = or_(R.c.submitted_at.is_(None), R.c.submitted_at <= high + ledger.SKEW)
    succeeded = and_(R.c.state == RState.SUCCESS, R.c.updated_at >= low - ledger.SKEW)
    in_doubt = and_(R.c.state.not_in(NO_DOUBT), R.c.submitted_at.is_not(None))
    stmt = select(R.c.id, R.c.state, R.c.amount, R.c.submitted_at, R.c.updated_at).where(
        R.c.mchid == mchid,
        R.c.bal_account_hash == ledger_hash,
        not_after,
        or_(succeeded, in_doubt),
    )
    with db.read() as s:
        rows = s.execute(stmt.order_by(R.c.id)).all()
    return [
        ledger.Reduction(
            r.id,
            int(r.amount),
            r.submitted_at,
            known_at=r.updated_at,
            succeeded=r.state == RState.SUCCESS,
        )
        for r in rows
    ]


# -- snapshots -------------------------------------------------------------------------------------


def insert_snapshot(
    db: Database,
    keys: Keyring,
    item: Ledger,
    *,
    balance: int | None,
    in_transit: bool | None,
    request_id: str | None,
    asked_at: datetime | None = None,
) -> tuple[int, str]:
    """Store one answer, taken now by the database's clock (asked at ``asked_at``);
    (snapshot id, ledger hash). Whether it is a check point is decided after."""
    digest = keys.lookup_hash(item.bal_account_no)
    values = {
        "mchid": item.mchid,
        "ledger_hash": digest,
        "ledger_sealed": keys.seal(item.bal_account_no, item.mchid, LEDGER_AAD),
        "balance": balance,
        "in_transit": in_transit,
        "request_id": request_id,
        "asked_at": asked_at,
        "taken_at": db.now(),
    }
    with db.begin() as conn:
        new_id = conn.execute(S.insert().values(values).returning(S.c.id)).scalar_one()
    return int(new_id), digest


def open_ledger(keys: Keyring, mchid: str, sealed: str) -> str:
    return keys.open(sealed, mchid, LEDGER_AAD)


def snapshots(
    db: Database,
    mchid: str,
    ledger_hash: str,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    limit: int = 1000,
) -> list[dict[str, Any]]:
    """A ledger's snapshots, oldest first, within [start, end)."""
    stmt = select(S).where(S.c.mchid == mchid, S.c.ledger_hash == ledger_hash)
    if start is not None:
        stmt = stmt.where(S.c.taken_at >= start)
    if end is not None:
        stmt = stmt.where(S.c.taken_at < end)
    stmt = stmt.order_by(S.c.taken_at.desc(), S.c.id.desc()).limit(limit)
    with db.read() as s:
        rows = [dict(r._mapping) for r in s.execute(stmt)]
    return rows[::-1]


def points(
    db: Database, mchid: str, ledger_hash: str, before_id: int | None = None, limit: int = 20
) -> list[dict[str, Any]]:
    """A ledger's latest decided check points (before snapshot ``before_id``), newest first."""
    stmt = select(S).where(S.c.mchid == mchid, S.c.ledger_hash == ledger_hash, S.c.point.is_(True))
    if before_id is not None:
        stmt = stmt.where(S.c.id < before_id)
    stmt = stmt.order_by(S.c.taken_at.desc(), S.c.id.desc()).limit(limit)
    with db.read() as s:
        return [dict(r._mapping) for r in s.execute(stmt)]


def snapshot_of(row: Mapping[str, Any]) -> ledger.Snapshot:
    return ledger.Snapshot(
        row["id"], row["balance"], row["in_transit"], row["taken_at"], row.get("asked_at")
    )


def ledgers(db: Database, mchid: str | None = None) -> list[dict[str, Any]]:
    """One line per ledger: its snapshots, the latest one, its discrepancies."""
    latest = (
        select(
            S.c.mchid,
            S.c.ledger_hash,
            func.max(S.c.id).label("last_id"),
            func.count().label("snapshots"),
        )
        .group_by(S.c.mchid, S.c.ledger_hash)
        .subquery()
    )
    found = (
        select(
            D.c.mchid, D.c.ledger_hash, func.count().label("n"), func.sum(D.c.amount).label("fen")
        )
        .where(D.c.kind == ledger.UNEXPLAINED_DEBIT)
        .group_by(D.c.mchid, D.c.ledger_hash)
        .subquery()
    )
    stmt = (
        select(
            latest.c.mchid,
            latest.c.ledger_hash,
            latest.c.snapshots,
            S.c.balance,
            S.c.in_transit,
            S.c.taken_at,
            func.coalesce(found.c.n, 0).label("unexplained_debits"),
            func.coalesce(found.c.fen, 0).label("unexplained_debit_fen"),
        )
        .join(S, S.c.id == latest.c.last_id)
        .outerjoin(
            found,
            and_(found.c.mchid == latest.c.mchid, found.c.ledger_hash == latest.c.ledger_hash),
        )
        .order_by(latest.c.mchid, latest.c.ledger_hash)
    )
    if mchid is not None:
        stmt = stmt.where(latest.c.mchid == mchid)
    with db.read() as s:
        return [dict(r._mapping) for r in s.execute(stmt)]


def find_ledger(db: Database, mchid: str, prefix: str) -> list[str]:
    """The ledger hashes of ``mchid`` starting with ``prefix`` (what the CLI shows)."""
    stmt = (
        select(S.c.ledger_hash)
        .where(S.c.mchid == mchid, S.c.ledger_hash.startswith(prefix.lower(), autoescape=True))
        .distinct()
        .limit(2)
    )
    with db.read() as s:
        return [r[0] for r in s.execute(stmt)]


# -- discrepancies ------------------------------------------------------------------------------


def record_discrepancy(
    db: Database,
    mchid: str,
    ledger_hash: str,
    result: ledger.Check | None,
    *,
    outcome: Any = None,
    point: int | None = None,
) -> int | None:
    """Store a discrepancy (and, when ``outcome`` builds one from (id, now), its outcome row)
    and, given ``point``, make that snapshot a check point, in one transaction: a window
    is told once, and the next one starts where it ended. None when no discrepancy is new
    (an ok check, or this window has its verdict already)."""
    now = db.now()
    with db.begin() as conn:
        if point is not None:
            conn.execute(S.update().where(S.c.id == point).values(point=True))
        if result is None or result.verdict == ledger.OK:
            return None
        values = {
            "mchid": mchid,
            "ledger_hash": ledger_hash,
            "kind": result.verdict,
            "amount": result.amount,
            "observed": result.observed,
            "explained": result.explained,
            "start_snapshot_id": result.start.id,
            "end_snapshot_id": result.end.id,
            "window_start": result.start.taken_at,
            "window_end": result.end.taken_at,
            "order_ids": list(result.order_ids),
            "created_at": now,
        }
        stmt = upsert(conn, LedgerDiscrepancy).values(values)
        stmt = stmt.on_conflict_do_nothing(index_elements=["end_snapshot_id"])
        new_id = conn.execute(stmt.returning(D.c.id)).scalar()
        if new_id is None:
            return None
        if outcome is not None:
            conn.execute(O.insert().values(outcome(int(new_id), now)))
    return int(new_id)


def flagged(db: Database, mchid: str, ledger_hash: str, start: datetime, end: datetime) -> int:
    """What the discrepancies of windows within [start, end) of one ledger told already, in
    signed fen (a debit negative): a window spanning them nets it out."""
    signed = case((D.c.kind == ledger.UNEXPLAINED_DEBIT, -D.c.amount), else_=D.c.amount)
    stmt = select(func.coalesce(func.sum(signed), 0)).where(
        D.c.mchid == mchid,
        D.c.ledger_hash == ledger_hash,
        D.c.window_start >= start,
        D.c.window_end < end,
    )
    with db.read() as s:
        return int(s.execute(stmt).scalar_one())


def discrepancies(
    db: Database,
    *,
    mchid: str | None = None,
    ledger_hash: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    limit: int = 1000,
) -> list[dict[str, Any]]:
    stmt = select(D)
    if mchid is not None:
        stmt = stmt.where(D.c.mchid == mchid)
    if ledger_hash is not None:
        stmt = stmt.where(D.c.ledger_hash == ledger_hash)
    if start is not None:
        stmt = stmt.where(D.c.window_end >= start)
    if end is not None:
        stmt = stmt.where(D.c.window_end < end)
    with db.read() as s:
        return [dict(r._mapping) for r in s.execute(stmt.order_by(D.c.id).limit(limit))]


def unexplained_debit_totals(db: Database) -> Sequence[tuple[str, str, int]]:
    """(mchid, ledger hash, unexplained debit fen) per ledger: the metric's figures."""
    stmt = (
        select(D.c.mchid, D.c.ledger_hash, func.sum(D.c.amount))
        .where(D.c.kind == ledger.UNEXPLAINED_DEBIT)
        .group_by(D.c.mchid, D.c.ledger_hash)
    )
    with db.read() as s:
        return [(r[0], r[1], int(r[2])) for r in s.execute(stmt)]


def snapshots_by_id(db: Database, ids: Sequence[int]) -> list[dict[str, Any]]:
    with db.read() as s:
        return [dict(r._mapping) for r in s.execute(select(S).where(S.c.id.in_(list(ids))))]


def recent_snapshot_ledgers(
    db: Database, since: datetime, mchid: str | None = None
) -> list[dict[str, Any]]:
    """One sealed number per ledger snapshotted since ``since`` (its latest)."""
    last = select(func.max(S.c.id).label("id")).where(S.c.taken_at >= since)
    if mchid is not None:
        last = last.where(S.c.mchid == mchid)
    last_ids = last.group_by(S.c.mchid, S.c.ledger_hash).limit(MAX_LEDGERS).subquery()
    stmt = select(S.c.mchid, S.c.ledger_sealed).where(S.c.id.in_(select(last_ids.c.id)))
    with db.read() as s:
        return [dict(r._mapping) for r in s.execute(stmt)]


# -- the daily statement's reads ------------------------------------------------------------------


def day_finals(db: Database, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """Each (reduction, final state) an event moved it to in [start, end): mchid, ledger
    ledger (its keyed hash), order id, state, amount (fen)."""
    from wxrecon.store.models import Event

    E = cast(Table, Event.__table__)
    finals = (RState.SUCCESS, RState.FAILED, RState.REJECTED)
    stmt = (
        select(R.c.mchid, R.c.bal_account_hash, R.c.id, E.c.to_state, R.c.amount)
        .join(E, and_(E.c.kind == "reduction", E.c.order_id == R.c.id))
        .where(E.c.to_state.in_(finals), E.c.at >= start, E.c.at < end)
        .distinct()
    )
    with db.read() as s:
        return [
            {"mchid": r[0], "ledger": r[1], "order_id": r[2], "state": r[3], "amount": int(r[4])}
            for r in s.execute(stmt)
        ]


def open_reductions(db: Database, states: Sequence[str]) -> list[dict[str, Any]]:
    """Reductions in ``states`` now (in flight, or in review): with their last change."""
    stmt = select(
        R.c.mchid,
        R.c.bal_account_hash,
        R.c.id,
        R.c.out_request_no,
        R.c.state,
        R.c.amount,
        R.c.updated_at,
    ).where(R.c.state.in_(list(states)))
    with db.read() as s:
        return [
            {
                "mchid": r[0],
                "ledger": r[1],
                "order_id": r[2],
                "out_request_no": r[3],
                "state": r[4],
                "amount": int(r[5]),
                "updated_at": r[6],
            }
            for r in s.execute(stmt.order_by(R.c.id).limit(MAX_LEDGERS))
        ]


def day_snapshots(db: Database, start: datetime, end: datetime) -> list[dict[str, Any]]:
    stmt = select(S.c.id, S.c.mchid, S.c.ledger_hash, S.c.balance, S.c.in_transit, S.c.taken_at)
    stmt = stmt.where(S.c.taken_at >= start, S.c.taken_at < end).order_by(S.c.taken_at, S.c.id)
    with db.read() as s:
        return [dict(r._mapping) for r in s.execute(stmt.limit(100_000))]

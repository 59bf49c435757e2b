"""Sealed ledger numbers in the store: opened for the engine, the start-up check, and the two
long operator actions (``wxrecon db seal``, ``wxrecon db rotate-key``).

Both actions walk ``special_reductions`` by id in batches, each batch its own committed
transaction, so an interrupted run (Ctrl-C, kill, a database that went away) keeps what it
committed and a second run finishes the rest: ``seal`` picks rows whose ``bal_account_hash``
is NULL (the marker of a row from before sealing), ``rotate`` rows whose value is not under
the current key. Each row is changed by one UPDATE that sets all it changes and compares the
old value, so a row is never half-written, and neither touches ``version`` or ``state``: the
engine's compare-and-set writes never race them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, func, select, update

from wxrecon.store.db import Database
from wxrecon.store.models import SpecialReduction
from wxrecon.store.sealed import VERSION, Keyring, SealError, is_sealed
from wxrecon.store.sql import table

log = logging.getLogger(__name__)

BATCH = 500
MAX_LISTED = 20  # ids named in a summary, at most
T = table(SpecialReduction)
Progress = Callable[[int, int], None]  # (rows done, rows in all)


def ready(db: Database, keys: Keyring) -> None:
    """Refuse (SealError, one line) to run on rows that are not sealed yet, or with a current
    key that opens none of the newest rows sealed under it (a wrong key under a right id
    would otherwise send every order it sealed to review)."""
    with db.connect() as conn:
        unsealed = conn.execute(
            select(T.c.id).where(T.c.bal_account_hash.is_(None)).limit(1)
        ).first()
        if unsealed is not None:
            raise SealError(
                "some ledger numbers are not sealed yet (stored before sealing): run "
                "`wxrecon db seal` first"
            )
        prefix = f"{VERSION}:{keys.current}:%"
        newest = conn.execute(
            select(T.c.mchid, T.c.out_request_no, T.c.bal_account_no)
            .where(T.c.bal_account_no.like(prefix))
            .order_by(T.c.id.desc())
            .limit(3)
        ).all()
    if newest and not any(_opens(keys, r) for r in newest):
        raise SealError(
            f"data key {keys.current!r} does not open the ledger numbers sealed under that "
            "id: WXRECON_DATA_KEYS holds another key under it"
        )


def _opens(keys: Keyring, row: Any) -> bool:
    try:
        keys.open(row.bal_account_no, row.mchid, row.out_request_no)
    except SealError:
        return False
    return True


@dataclass
class Summary:
    """What a batched run did: rows changed, rows left as they were (id -> why)."""

    done: int = 0
    failed: dict[int, str] = field(default_factory=dict)
    batches: int = 0

    def listed(self) -> str:
        ids = list(self.failed)[:MAX_LISTED]
        more = f" and {len(self.failed) - MAX_LISTED} more" if len(self.failed) > MAX_LISTED else ""
        return ", ".join(f"#{i}" for i in ids) + more


_SET = (
    update(T)
    .where(T.c.id == bindparam("b_id"), T.c.bal_account_no == bindparam("b_old"))
    .values(bal_account_no=bindparam("b_new"), bal_account_hash=bindparam("b_hash"))
)


def _walk(
    db: Database,
    where: Any,
    change: Callable[[Any], tuple[str, str]],
    batch: int,
    progress: Progress | None,
) -> Summary:
    """Rows matching ``where`` by id, ``batch`` per committed transaction: ``change(row)``
    gives (new value, hash) or raises SealError (the row is left as it is, and named)."""
    with db.connect() as conn:
        total = int(conn.execute(select(func.count()).select_from(T).where(where)).scalar_one())
    summary, after = Summary(), 0
    while True:
        with db.begin() as conn:
            stmt = (
                select(T.c.id, T.c.mchid, T.c.out_request_no, T.c.bal_account_no)
                .where(where, T.c.id > after)
                .order_by(T.c.id)
                .limit(batch)
            )
            if db.is_postgresql:
                stmt = stmt.with_for_update(skip_locked=True)
            rows = conn.execute(stmt).all()
            if not rows:
                break
            params = []
            for row in rows:
                try:
                    new, digest = change(row)
                except SealError as exc:
                    summary.failed[row.id] = str(exc)
                    continue
                params.append(
                    {"b_id": row.id, "b_old": row.bal_account_no, "b_new": new, "b_hash": digest}
                )
            if params:
                conn.execute(_SET, params)
        after = rows[-1].id
        summary.done += len(params)
        summary.batches += 1
        if progress is not None:
            progress(summary.done + len(summary.failed), total)
    return summary


def seal_pending(
    db: Database, keys: Keyring, *, batch: int = BATCH, progress: Progress | None = None
) -> Summary:
    """Seal every ledger number stored in plaintext (``bal_account_hash`` NULL)."""

    def change(row: Any) -> tuple[str, str]:
        plain = row.bal_account_no
        if is_sealed(plain):  # sealed but its hash lost: open it to hash it again
            plain = keys.open(plain, row.mchid, row.out_request_no)
        return keys.seal(plain, row.mchid, row.out_request_no), keys.lookup_hash(plain)

    summary = _walk(db, T.c.bal_account_hash.is_(None), change, batch, progress)
    log.info("sealed %d ledger numbers; %d left as they were", summary.done, len(summary.failed))
    return summary


def rotate(
    db: Database, keys: Keyring, *, batch: int = BATCH, progress: Progress | None = None
) -> Summary:
    """Re-seal under the current key every sealed value that another key sealed."""

    def change(row: Any) -> tuple[str, str]:
        plain = keys.open(row.bal_account_no, row.mchid, row.out_request_no)
        return keys.seal(plain, row.mchid, row.out_request_no), keys.lookup_hash(plain)

    current = T.c.bal_account_no.like(f"{VERSION}:{keys.current}:%")
    where = T.c.bal_account_hash.is_not(None) & ~current
    summary = _walk(db, where, change, batch, progress)
    log.info(
        "re-sealed %d ledger numbers under key %s; %d left as they were",
        summary.done,
        keys.current,
        len(summary.failed),
    )
    return summary


def by_key(db: Database) -> dict[str, int]:
    """How many ledger numbers each key id sealed ('' for those not sealed yet)."""
    counts: dict[str, int] = {}
    with db.connect() as conn:
        rows = conn.execute(
            select(T.c.bal_account_hash.is_(None), T.c.bal_account_no).execution_options(
                yield_per=5000
            )
        )
        for unsealed, value in rows:
            name = "" if unsealed or not is_sealed(value) else value.split(":", 2)[1]
            counts[name] = counts.get(name, 0) + 1
    return counts


def unopened(
    db: Database, keys: Keyring, progress: Callable[[int], None] | None = None
) -> list[tuple[int, str, str]]:
    """Every (id, number, why) whose sealed ledger number does not open, or whose hash does
    not match it (``wxrecon db verify``); streamed."""
    bad: list[tuple[int, str, str]] = []
    stmt = select(
        T.c.id, T.c.mchid, T.c.out_request_no, T.c.bal_account_no, T.c.bal_account_hash
    ).order_by(T.c.id)
    checked = 0
    with db.connect() as conn:
        for row in conn.execution_options(yield_per=5000).execute(stmt):
            number = f"{row.mchid}/{row.out_request_no}"
            checked += 1
            if progress is not None and checked % 5000 == 0:
                progress(checked)
            if row.bal_account_hash is None:
                bad.append((row.id, number, "ledger number not sealed yet: run `wxrecon db seal`"))
                continue
            try:
                plain = keys.open(row.bal_account_no, row.mchid, row.out_request_no)
            except SealError as exc:
                bad.append((row.id, number, str(exc)))
                continue
            if keys.lookup_hash(plain) != row.bal_account_hash:
                bad.append((row.id, number, "bal_account_hash does not match the ledger number"))
    return bad

"""The statements of four-eyes resolutions (``engine/resolution.py`` runs them inside its
transactions): insert a proposal, read them, and move one out of pending exactly once."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, RowMapping, Table, insert, select, update

from wxrecon.store.models import Resolution

RESOLUTIONS = cast(Table, Resolution.__table__)


def add(conn: Connection, values: Mapping[str, Any]) -> int:
    """Insert a resolution; returns its id (IntegrityError: one is already pending)."""
    stmt = insert(RESOLUTIONS).values(dict(values)).returning(RESOLUTIONS.c.id)
    return int(conn.execute(stmt).scalar_one())


def get(conn: Connection, resolution_id: int) -> RowMapping | None:
    stmt = select(RESOLUTIONS).where(RESOLUTIONS.c.id == resolution_id)
    return conn.execute(stmt).mappings().one_or_none()


def pending_of(conn: Connection, kind: str, order_id: int) -> RowMapping | None:
    t = RESOLUTIONS
    stmt = select(t).where(t.c.kind == kind, t.c.order_id == order_id, t.c.status == "pending")
    return conn.execute(stmt).mappings().one_or_none()


def listed(
    conn: Connection,
    kind: str,
    *,
    order_id: int | None = None,
    status: str | None = None,
    limit: int = 100,
) -> list[RowMapping]:
    """Resolutions of ``kind``, newest first."""
    t = RESOLUTIONS
    stmt = select(t).where(t.c.kind == kind)
    if order_id is not None:
        stmt = stmt.where(t.c.order_id == order_id)
    if status is not None:
        stmt = stmt.where(t.c.status == status)
    return list(conn.execute(stmt.order_by(t.c.id.desc()).limit(limit)).mappings())


def decide(
    conn: Connection, resolution_id: int, status: str, actor: str | None, now: datetime
) -> bool:
    """pending -> ``status``, once: True when this call made the change."""
    t = RESOLUTIONS
    stmt = (
        update(t)
        .where(t.c.id == resolution_id, t.c.status == "pending")
        .values(status=status, decided_by=actor, decided_at=now)
    )
    return conn.execute(stmt).rowcount == 1


def supersede_pending(
    conn: Connection, kind: str, order_id: int, actor: str, now: datetime
) -> list[int]:
    """Mark the order's pending resolution superseded (it left review); returns the ids."""
    t = RESOLUTIONS
    stmt = select(t.c.id).where(t.c.kind == kind, t.c.order_id == order_id, t.c.status == "pending")
    ids = list(conn.execute(stmt).scalars())
    return [i for i in ids if decide(conn, i, "superseded", actor, now)]

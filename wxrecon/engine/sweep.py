"""The sweep: claim due orders of a kind, batch by batch, and hand each claim on.

When the next query is due lives in SQL (``next_poll_at``); a claim leases the rows under a
fresh token (committed before anything is dispatched), so a worker that dies only delays its
orders until the lease ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from wxrecon.domain.kinds import OrderKind
from wxrecon.engine.intake import new_token
from wxrecon.store import sql
from wxrecon.store.db import Database


class SweepSettings(Protocol):
    @property
    def sweep_batch(self) -> int: ...
    @property
    def sweep_interval(self) -> float: ...
    @property
    def claim_lease(self) -> float: ...


@dataclass(frozen=True)
class Claim:
    """A leased order: whoever holds ``token`` may work on row ``id`` until the lease ends."""

    id: int
    token: str


def claim_due(
    db: Database, kind: OrderKind, *, limit: int, lease: float, now: datetime | None = None
) -> list[Claim]:
    """Claim up to ``limit`` due orders of ``kind`` in one statement; returns the leases."""
    token = new_token()
    ids = sql.claim(
        db, kind.model, kind.active, token, limit=limit, lease=lease, now=now or db.now()
    )
    return [Claim(i, token) for i in ids]


def sweep(
    db: Database,
    kind: OrderKind,
    settings: SweepSettings,
    dispatch: Callable[[Claim], Any],
    *,
    now: Callable[[], datetime] | None = None,
    max_batches: int = 50,
) -> int:
    """Claim due orders batch by batch and hand each claim to ``dispatch``; returns how
    many were claimed. Stops at the first short batch, after ``max_batches``, or once a
    sweep interval has passed (the next sweep carries on)."""
    batch = settings.sweep_batch
    started = time.monotonic()
    total = 0
    for _ in range(max_batches):
        at = db.now() if now is None else now()
        claims = claim_due(db, kind, limit=batch, lease=settings.claim_lease, now=at)
        for c in claims:
            dispatch(c)
        total += len(claims)
        if len(claims) < batch or time.monotonic() - started > settings.sweep_interval:
            break
    return total

"""Sweep claim cost: how long ``claim_due`` takes to lease a batch of due rows from a
small and from a large table with the same number of due rows.

Rows are bulk-loaded with ``generate_series`` in one INSERT … SELECT (no ORM). The mix of a
live table: most rows final (outside the partial index), 1 % in flight but not yet due, and
``batch × repeats`` due rows. Each claim leases the oldest due batch, so every repeat claims
fresh rows; the median is reported.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

from benchmarks import harness
from wxrecon.domain.kinds import REDUCTION
from wxrecon.engine.sweep import claim_due
from wxrecon.store.db import Database

# Every column the table requires; row g is due, waiting or final by its position.
_LOAD = """
INSERT INTO special_reductions
    (mchid, bal_account_no, out_request_no, reduction_type, amount, reason, state, attempts,
     next_poll_at, created_at, updated_at, version, submitted_at)
SELECT
    '19000003' || lpad((g %% 100)::text, 2, '0'),
    '6217000000' || lpad((g %% 100)::text, 6, '0'),
    'CLAIM' || lpad(g::text, 12, '0'),
    'FINANCIAL_PENALTY',
    100 + g %% 1000,
    NULL,
    CASE WHEN g <= %(due)s THEN 'PROCESSING'
         WHEN g <= %(due)s + %(waiting)s THEN 'PROCESSING'
         ELSE 'SUCCESS' END,
    1,
    CASE WHEN g <= %(due)s THEN now() - interval '1 hour' + g * interval '1 millisecond'
         WHEN g <= %(due)s + %(waiting)s THEN now() + interval '1 hour'
         ELSE NULL END,
    now() - interval '1 day',
    now() - interval '1 day',
    1,
    now() - interval '1 day'
FROM generate_series(1, %(rows)s) AS g
"""


@dataclass
class ClaimResult:
    rows: int
    due: int
    batch: int
    load_seconds: float
    claim_ms: list[float]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.claim_ms)

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "due_rows": self.due,
            "batch": self.batch,
            "load_seconds": round(self.load_seconds, 2),
            "claim_ms": [round(x, 3) for x in self.claim_ms],
            "median_ms": round(self.median_ms, 3),
        }


def measure(
    server_url: str, name: str, rows: int, *, batch: int = 500, repeats: int = 9
) -> ClaimResult:
    """Fill a fresh database ``name`` with ``rows`` reductions and time ``repeats`` claims."""
    due = batch * repeats
    if rows < due:
        raise ValueError(f"{rows} rows cannot hold {due} due rows")
    waiting = max(0, min(rows - due, rows // 100))
    url = harness.fresh_database(server_url, name)
    try:
        started = time.perf_counter()
        harness.pg_execute(
            server_url,
            _LOAD % {"rows": rows, "due": due, "waiting": waiting},
            "VACUUM ANALYZE special_reductions",
            database=name,
        )
        load = time.perf_counter() - started
        db = Database(url)
        try:
            claim_due(db, REDUCTION, limit=1, lease=60)  # connect and warm the plan cache
            timings = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                claims = claim_due(db, REDUCTION, limit=batch, lease=60)
                timings.append(1000 * (time.perf_counter() - t0))
                if len(claims) < batch - 1:
                    raise RuntimeError(f"claimed only {len(claims)} of {batch} due rows")
        finally:
            db.dispose()
    finally:
        harness.drop_database(server_url, name)
    return ClaimResult(rows, due, batch, load, timings)

"""``wxrecon db verify``: every order's event chain read against its row, streamed.

Rows and events are each read once, in order (rows by id, events by order id then id), in
one read transaction (one snapshot: the engine writes a row and its event together), and
walked together, so memory holds one order's events at a time whatever the table sizes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import groupby
from typing import Any

from sqlalchemy import select

from wxrecon.domain.chains import Step, chain_problem
from wxrecon.domain.kinds import KINDS, OrderKind
from wxrecon.store.db import Database
from wxrecon.store.sql import EVENTS, table

BATCH = 5000


@dataclass(frozen=True)
class Broken:
    kind: str
    order_id: int
    number: str  # the order's number (empty when its row is missing)
    problem: str


def _rows(conn: Any, kind: OrderKind) -> Iterator[tuple[int, str, str]]:
    t = table(kind.model)
    columns = [t.c.id, t.c.state, *(t.c[f] for f in kind.number_fields)]
    result = conn.execution_options(yield_per=BATCH).execute(select(*columns).order_by(t.c.id))
    for row in result:
        yield row[0], row[1], "/".join(str(v) for v in row[2:])


def _chains(conn: Any, kind: OrderKind) -> Iterator[tuple[int, list[Step]]]:
    e = EVENTS.c
    stmt = (
        select(e.order_id, e.from_state, e.to_state)
        .where(e.kind == str(kind))
        .order_by(e.order_id, e.id)
    )
    result = conn.execution_options(yield_per=BATCH).execute(stmt)
    for order_id, group in groupby(result, key=lambda r: r[0]):
        yield order_id, [(r[1], r[2]) for r in group]


def verify_kind(
    db: Database, kind: OrderKind, progress: Callable[[int], None] | None = None
) -> tuple[int, list[Broken]]:
    """(orders checked, the broken ones) for one kind."""
    broken: list[Broken] = []
    checked = 0
    with db.connect() as conn:
        if db.is_postgresql:  # one snapshot for the rows and their events
            conn.execution_options(isolation_level="REPEATABLE READ")
        chains = _chains(conn, kind)
        pending = next(chains, None)
        for order_id, state, number in _rows(conn, kind):
            # Chains of ids below this row have no row: deleted outside the engine.
            while pending is not None and pending[0] < order_id:
                broken.append(_broken(kind, pending[0], "", pending[1], None))
                pending = next(chains, None)
            steps: list[Step] = []
            if pending is not None and pending[0] == order_id:
                steps = pending[1]
                pending = next(chains, None)
            problem = chain_problem(str(kind.initial), steps, state)
            if problem is not None:
                broken.append(Broken(str(kind), order_id, number, problem))
            checked += 1
            if progress is not None and checked % BATCH == 0:
                progress(checked)
        while pending is not None:
            broken.append(_broken(kind, pending[0], "", pending[1], None))
            pending = next(chains, None)
    return checked, broken


def _broken(kind: OrderKind, order_id: int, number: str, steps: list[Step], state: None) -> Broken:
    problem = chain_problem(str(kind.initial), steps, state) or ""
    return Broken(str(kind), order_id, number, problem)


def _for(progress: Callable[[str, int], None], name: str) -> Callable[[int], None]:
    return lambda n: progress(name, n)


def verify(
    db: Database, progress: Callable[[str, int], None] | None = None
) -> tuple[dict[str, int], list[Broken]]:
    """(orders checked per kind, every broken order)."""
    checked: dict[str, int] = {}
    broken: list[Broken] = []
    for name, kind in KINDS.items():
        count, bad = verify_kind(db, kind, None if progress is None else _for(progress, name))
        checked[name] = count
        broken.extend(bad)
    return checked, broken

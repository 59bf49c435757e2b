"""Every statement the engine runs: intake inserts, the claim, the compare-and-set with its
event, row reads and operator writes. Core statements, built once per shape (building a
SQLAlchemy statement costs more CPU than running its cached compilation).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    Connection,
    RowMapping,
    Select,
    Table,
    and_,
    bindparam,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect

from wxrecon.store import arrays
from wxrecon.store.db import Database
from wxrecon.store.models import Base, Event, Outcome, active_predicate
from wxrecon.store.rows import Row, field_names, row_from
from wxrecon.store.sealed import open_rows

EVENTS = cast(Table, Event.__table__)
EVENT_COLUMNS = (
    "kind",
    "order_id",
    "from_state",
    "to_state",
    "reason",
    "request_id",
    "actor",
    "at",
)
# The event row of a transition, its values bound as ``e_<column>`` (order_id: ``cas_id``).
EVENT_INSERT = insert(EVENTS).values(
    {
        name: bindparam("cas_id" if name == "order_id" else f"e_{name}", type_=EVENTS.c[name].type)
        for name in EVENT_COLUMNS
    }
)


OUTCOMES = cast(Table, Outcome.__table__)
# The outbox row of a final (or review) write, in the write's transaction.
OUTCOME_INSERT = insert(OUTCOMES)


def event_params(
    kind: str,
    order_id: int,
    src: str | None,
    dst: str,
    reason: str,
    actor: str,
    at: datetime,
    request_id: str | None = None,
) -> dict[str, Any]:
    """The bound values of ``EVENT_INSERT`` (and of the event half of a CAS statement)."""
    return {
        "cas_id": order_id,
        "e_kind": str(kind),
        "e_from_state": src,
        "e_to_state": str(dst),
        "e_reason": reason or "(no reason given)",
        "e_request_id": request_id,
        "e_actor": actor,
        "e_at": at,
    }


def table(model: type[Any]) -> Table:
    return cast(Table, model.__table__)


def upsert(conn: Connection, model: type[Any]) -> Any:
    """The dialect's INSERT, which knows ON CONFLICT DO NOTHING."""
    dialect = conn.dialect.name
    if dialect == "postgresql":
        return pg_dialect.insert(model)
    if dialect == "sqlite":
        return sqlite_dialect.insert(model)
    raise RuntimeError(f"unsupported database: {dialect}")


def insert_new(
    conn: Connection, model: type[Any], unique: Sequence[str], values: Sequence[Mapping[str, Any]]
) -> list[tuple[Any, ...]]:
    """Insert the rows that do not exist yet (by the ``unique`` key) in one statement;
    returns (id, *unique) of each row created."""
    if not values:
        return []
    t = table(model)
    if conn.dialect.name == "postgresql":
        return _insert_new_unnest(conn, t, unique, values)
    # One cached single-row statement run as an executemany: SQLAlchemy's insertmanyvalues
    # sends it as multi-row VALUES pages, with RETURNING, without compiling a statement of
    # len(values) rows each time (that compile was most of a bulk import's time).
    stmt = (
        upsert(conn, model)
        .on_conflict_do_nothing(index_elements=list(unique))
        .returning(t.c.id, *(t.c[c] for c in unique))
    )
    return [tuple(r) for r in conn.execute(stmt, list(values))]


def _insert_new_unnest(
    conn: Connection, t: Table, unique: Sequence[str], values: Sequence[Mapping[str, Any]]
) -> list[tuple[Any, ...]]:
    """PostgreSQL: every row in one short statement, one array parameter a column
    (``INSERT … SELECT * FROM unnest(…)``). Its text does not grow with the rows, so the
    driver neither parses nor the server plans a statement of thousands of parameters."""
    names = tuple(values[0])
    params = arrays.column_arrays(conn, t, names, values)
    stmt = _unnest_statement(t.name, names, tuple(unique), conn.dialect)
    return [tuple(r) for r in conn.exec_driver_sql(stmt, params)]


@functools.lru_cache(maxsize=32)
def _unnest_statement(
    name: str, columns: tuple[str, ...], unique: tuple[str, ...], dialect: Any
) -> str:
    t = Base.metadata.tables[name]
    casts = arrays.array_casts([t.c[c].type for c in columns], dialect)
    cols = ", ".join(f'"{c}"' for c in columns)
    keys = ", ".join(f'"{c}"' for c in unique)
    returning = ", ".join(['"id"', *(f'"{c}"' for c in unique)])
    return (
        f'INSERT INTO "{name}" ({cols}) SELECT * FROM unnest({casts}) '  # noqa: S608 (names from the schema)
        f"ON CONFLICT ({keys}) DO NOTHING RETURNING {returning}"
    )


def insert_first_events(
    conn: Connection, kind: str, ids: Sequence[int], to: str, reason: str, actor: str, at: datetime
) -> None:
    """The same first event (nothing -> ``to``) for each of ``ids``: on PostgreSQL one
    ``INSERT … SELECT FROM unnest(ids)``, elsewhere one executemany."""
    if not ids:
        return
    if conn.dialect.name != "postgresql":
        conn.execute(
            EVENT_INSERT, [event_params(kind, i, None, to, reason, actor, at) for i in ids]
        )
        return
    (when,) = arrays.column_arrays(conn, EVENTS, ("at",), [{"at": at}])
    conn.exec_driver_sql(
        _FIRST_EVENTS, (kind, to, reason or "(no reason given)", actor, when[0], list(ids))
    )


_FIRST_EVENTS = (
    "INSERT INTO events (kind, order_id, from_state, to_state, reason, request_id, actor, at) "
    "SELECT %b::varchar, i, NULL, %b::varchar, %b::text, NULL, %b::varchar, %b::timestamptz "
    "FROM unnest(%b::bigint[]) AS i"
)


# SQLite: keys per look-up statement (each key is two bound parameters of its row value).
KEYS_PER_SELECT = 500


def find_by_numbers(
    conn: Connection, model: type[Any], unique: Sequence[str], keys: Sequence[Sequence[Any]]
) -> list[RowMapping]:
    """The stored rows whose unique key (``unique`` columns) is one of ``keys``: one
    statement for all of them on PostgreSQL (a join with the keys as arrays, its text fixed),
    one per :data:`KEYS_PER_SELECT` keys on SQLite (a row-value IN a subquery), not one a key."""
    if not keys:
        return []
    t = table(model)
    if conn.dialect.name == "postgresql":
        arrays = {f"k_{c}": [k[n] for k in keys] for n, c in enumerate(unique)}
        return list(conn.execute(_find_joined(t.name, tuple(unique)), arrays).mappings())
    found: list[RowMapping] = []
    for i in range(0, len(keys), KEYS_PER_SELECT):
        part = keys[i : i + KEYS_PER_SELECT]
        params = {f"k{n}_{j}": v for n, key in enumerate(part) for j, v in enumerate(key)}
        found += conn.execute(_find_in(t.name, tuple(unique), len(part)), params).mappings().all()
    return found


@functools.cache
def _find_joined(name: str, unique: tuple[str, ...]) -> Any:
    t = Base.metadata.tables[name]
    arrays = [bindparam(f"k_{c}", type_=pg_dialect.ARRAY(t.c[c].type)) for c in unique]
    k = func.unnest(*arrays).table_valued(*unique).render_derived(name="k")
    return select(t).join(k, and_(*(t.c[c] == k.c[c] for c in unique)))


@functools.lru_cache(maxsize=16)
def _find_in(name: str, unique: tuple[str, ...], n: int) -> Any:
    """SQLite: ``WHERE (a, b) IN (SELECT column1, column2 FROM (VALUES …))``, one shape per
    page size. Written out because the row-value ``IN (VALUES …)`` that SQLAlchemy renders
    makes SQLite scan the whole table once per page; through a subquery it searches the
    unique index (a test reads the plan)."""
    t = Base.metadata.tables[name]
    columns = ", ".join(c.name for c in t.c)
    keys = ", ".join(unique)
    picked = ", ".join(f"column{j + 1}" for j in range(len(unique)))
    rows = ", ".join(
        "(" + ", ".join(f":k{i}_{j}" for j in range(len(unique))) + ")" for i in range(n)
    )
    return text(
        f"SELECT {columns} FROM {name} WHERE ({keys}) IN "  # noqa: S608 (names from the schema)
        f"(SELECT {picked} FROM (VALUES {rows}))"
    ).columns(*t.c)


def claim(
    db: Database,
    model: type[Any],
    active: frozenset[str],
    token: str,
    *,
    limit: int,
    lease: float,
    now: datetime,
) -> list[int]:
    """Lease up to ``limit`` due orders under ``token`` in one committed statement; returns
    their ids. The lease is also the next due time, so a dead worker's claims come back."""
    t = table(model)
    until = now + timedelta(seconds=lease)
    due: Select[Any] = (
        select(t.c.id)
        .where(active_predicate(active), t.c.next_poll_at <= now)
        .order_by(t.c.next_poll_at)
        .limit(limit)
    )
    values = {
        "claimed_until": until,
        "next_poll_at": until,
        "claim_token": token,
        "version": t.c.version + 1,
    }
    if db.is_postgresql:
        # SKIP LOCKED: concurrent sweeps never wait for (or double-claim) each other's rows.
        # A CTE with FOR UPDATE is evaluated exactly once, so LIMIT really bounds the batch
        # (an IN (subquery) may be re-run by the planner).
        due_cte = due.with_for_update(skip_locked=True).cte("due")
        stmt = update(t).where(t.c.id == due_cte.c.id)
    else:
        # SQLite has one writer at a time (BEGIN IMMEDIATE): a plain subquery is enough.
        stmt = update(t).where(t.c.id.in_(due.scalar_subquery()))
    with db.begin() as conn:
        return sorted(conn.execute(stmt.values(**values).returning(t.c.id)).scalars())


def hold_claims(
    db: Database, model: type[Any], ids: Sequence[int], token: str, until: datetime
) -> int:
    """Extend the claims of ``ids`` held under ``token`` to ``until`` (not shorter), in one
    committed statement; the version stays (nothing about the order changed). Returns how
    many it held: an order another claim took, or whose claim a write ended, is left be."""
    t = table(model)
    stmt = (
        update(t)
        .where(t.c.id.in_(list(ids)), t.c.claim_token == token, t.c.claimed_until < until)
        .values(claimed_until=until, next_poll_at=until)
    )
    with db.begin() as conn:
        return conn.execute(stmt).rowcount


@functools.cache
def cas_statement(table_name: str, keys: tuple[str, ...], with_event: bool) -> Any:
    """The compare-and-set ``UPDATE … WHERE id=? AND version=? AND state=?`` setting
    ``keys`` (bound as ``v_<key>``), built once per shape.

    ``with_event`` (PostgreSQL): ``WITH moved AS (UPDATE … RETURNING id) INSERT INTO events …
    SELECT … FROM moved RETURNING id``, one round trip, and the event row exists exactly
    when the UPDATE matched (told by RETURNING: the driver gives no row count for it)."""
    t = Base.metadata.tables[table_name]
    moved = (
        update(t)
        .where(
            t.c.id == bindparam("cas_id"),
            t.c.version == bindparam("cas_version"),
            t.c.state == bindparam("cas_state"),
        )
        .values({k: bindparam(f"v_{k}", type_=t.c[k].type) for k in keys})
    )
    if not with_event:
        return moved
    cte = moved.returning(t.c.id).cte("moved")
    columns = [
        cte.c.id
        if name == "order_id"
        else bindparam(f"e_{name}", type_=EVENTS.c[name].type).label(name)
        for name in EVENT_COLUMNS
    ]
    return (
        insert(EVENTS)
        .from_select(list(EVENT_COLUMNS), select(*columns))
        .add_cte(cte)
        .returning(EVENTS.c.id)
    )


def cas_many(
    conn: Connection,
    table_name: str,
    keys: tuple[str, ...],
    with_event: bool,
    params: Sequence[Mapping[str, Any]],
) -> set[int]:
    """PostgreSQL: the compare-and-sets of ``cas_statement`` (one shape, distinct ids, their
    bound values ``params``) as one statement; returns the ids whose compare-and-set won.

    Each row's ``(id, version, state)`` condition and its event are exactly those of the
    one-row statement: the UPDATE joins one array element per order, and an event row is
    inserted for each row the UPDATE matched, so a lost race changes nothing of its order.
    One round trip and one plan instead of one per order."""
    stmt, names, binds = _cas_many_statement(table_name, keys, with_event, conn.dialect)
    return {r[0] for r in conn.exec_driver_sql(stmt, arrays.arrays(params, names, binds))}


def update_many(
    conn: Connection,
    table_name: str,
    keys: tuple[str, ...],
    params: Sequence[Mapping[str, Any]],
    where: tuple[tuple[str, Any], ...],
) -> set[int]:
    """PostgreSQL: rows of one shape updated by one statement: each ``params`` item's
    ``id`` row gets its ``keys`` values, where every ``where`` column holds its value;
    returns the ids updated (one round trip instead of one per row)."""
    stmt, names, binds = _update_many_statement(
        table_name, keys, tuple(c for c, _ in where), conn.dialect
    )
    args = (*arrays.arrays(params, names, binds), *(v for _, v in where))
    return {r[0] for r in conn.exec_driver_sql(stmt, args)}


@functools.lru_cache(maxsize=16)
def _update_many_statement(
    table_name: str, keys: tuple[str, ...], where: tuple[str, ...], dialect: Any
) -> tuple[str, tuple[str, ...], tuple[Any, ...]]:
    t = Base.metadata.tables[table_name]
    names = ("id", *keys)
    casts = arrays.array_casts([t.c[n].type for n in names], dialect)
    aliases = ", ".join(f'"v_{n}"' for n in names)
    sets = ", ".join(f'"{k}" = v."v_{k}"' for k in keys)
    conditions = "".join(f' AND t."{c}" = %s' for c in where)
    stmt = (
        f'UPDATE "{table_name}" AS t SET {sets} FROM unnest({casts}) AS v({aliases}) '  # noqa: S608 (names from the schema)
        f'WHERE t.id = v."v_id"{conditions} RETURNING t.id'
    )
    return stmt, names, tuple(t.c[n].type.bind_processor(dialect) for n in names)


@functools.lru_cache(maxsize=64)
def _cas_many_statement(
    table_name: str, keys: tuple[str, ...], with_event: bool, dialect: Any
) -> tuple[str, tuple[str, ...], tuple[Any, ...]]:
    t = Base.metadata.tables[table_name]
    columns = [("cas_id", t.c.id.type), ("cas_version", t.c.version.type)]
    columns += [("cas_state", t.c.state.type), *((f"v_{k}", t.c[k].type) for k in keys)]
    if with_event:
        columns += [(f"e_{n}", EVENTS.c[n].type) for n in EVENT_COLUMNS if n != "order_id"]
    names = tuple(n for n, _ in columns)
    casts = arrays.array_casts([typ for _, typ in columns], dialect)
    aliases = ", ".join(f'"{n}"' for n in names)
    sets = ", ".join(f'"{k}" = v."v_{k}"' for k in keys)
    update = (
        f'UPDATE "{table_name}" AS t SET {sets} FROM v '  # noqa: S608 (names from the schema)
        'WHERE t.id = v."cas_id" AND t.version = v."cas_version" AND t.state = v."cas_state" '
        "RETURNING t.id"
    )
    head = f"WITH v AS (SELECT * FROM unnest({casts}) AS u({aliases}))"  # noqa: S608 (as above)
    if with_event:
        cols = ", ".join(f'"{n}"' for n in EVENT_COLUMNS)
        picked = ", ".join("moved.id" if n == "order_id" else f'v."e_{n}"' for n in EVENT_COLUMNS)
        stmt = (
            f"{head}, moved AS ({update}) INSERT INTO {EVENTS.name} ({cols}) "  # noqa: S608
            f'SELECT {picked} FROM moved JOIN v ON v."cas_id" = moved.id RETURNING order_id'
        )
    else:
        stmt = f"{head} {update}"
    binds = tuple(typ.bind_processor(dialect) for _, typ in columns)
    return stmt, names, binds


@functools.cache
def _rows_select(table_name: str) -> Any:
    t = Base.metadata.tables[table_name]
    return select(t).where(t.c.id.in_(bindparam("ids", expanding=True)))


def load_rows(db: Database, model: type[Any], row: type[Row], ids: Sequence[int]) -> dict[int, Any]:
    """The orders' rows by id, read with one select; ids with no row are absent. A sealed
    ledger number is opened here, for the POST's encryption: plaintext in memory only (one
    that does not open is marked ``unopened``)."""
    with db.connect() as conn:
        found = conn.execute(_rows_select(model.__tablename__), {"ids": list(ids)}).mappings().all()
    rows = {m["id"]: row_from(row, m) for m in found}
    if rows and "bal_account_no" in field_names(row):
        open_rows(db.keyring, rows.values())
    return rows


def lock_row(conn: Connection, model: type[Any], order_id: int) -> RowMapping | None:
    """Read one order for an operator's write, locked on PostgreSQL until the commit."""
    t = table(model)
    stmt = select(t).where(t.c.id == order_id)
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    return conn.execute(stmt).mappings().one_or_none()


def ids_in_states(
    db: Database,
    model: type[Any],
    states: Sequence[str],
    where: Mapping[str, Any],
    limit: int | None,
) -> list[int]:
    """Ids of the orders in ``states`` (and matching ``where``), oldest first."""
    t = table(model)
    stmt = select(t.c.id).where(t.c.state.in_([str(s) for s in states]))
    for column, value in where.items():
        stmt = stmt.where(t.c[column] == value)
    with db.connect() as conn:
        return list(conn.execute(stmt.order_by(t.c.id).limit(limit)).scalars())

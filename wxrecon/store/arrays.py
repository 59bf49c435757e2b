"""PostgreSQL's many-rows-in-one-statement parameters for ``store/sql.py``: one array a
column, in psycopg's binary format, each cast to its column's array type. The statement's
text does not grow with the rows (``INSERT … SELECT FROM unnest(…)``, ``UPDATE … FROM
unnest(…)``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, String, Table, TypeDecorator


def column_arrays(
    conn: Connection, t: Table, columns: Sequence[str], values: Sequence[Mapping[str, Any]]
) -> tuple[list[Any], ...]:
    """One list a column, each value through its type's bind processor (UTC datetimes)."""
    binds = [t.c[c].type.bind_processor(conn.dialect) for c in columns]
    return arrays(values, columns, binds)


def arrays(
    values: Sequence[Mapping[str, Any]], names: Sequence[str], binds: Sequence[Any]
) -> tuple[list[Any], ...]:
    """One list a name, each value through its bind processor (None: as it is)."""
    out = []
    for name, bind in zip(names, binds, strict=True):
        raw = [v[name] for v in values]
        out.append([bind(x) for x in raw] if bind is not None else raw)
    return tuple(out)


def array_casts(types: Sequence[Any], dialect: Any) -> str:
    """The placeholders of one array parameter a column, each cast to its array type."""
    return ", ".join(f"%b::{array_of(typ, dialect)}" for typ in types)


def array_of(typ: Any, dialect: Any) -> str:
    """The array type a column's values are cast to (the arrays are sent in psycopg's binary
    format, ``%b``: its text format quotes every element through a regular expression,
    which cost more than the statement saved). Strings go as text[]: an explicit cast
    to varchar(n) silently truncates (the SQL standard's rule), whereas assigning text to
    the column refuses a value too long for it, as a one-row statement does."""
    if isinstance(typ, TypeDecorator):
        typ = typ.impl_instance
    if isinstance(typ, String):
        return "TEXT[]"
    return f"{typ.compile(dialect=dialect)}[]"

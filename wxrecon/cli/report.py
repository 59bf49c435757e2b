"""``wxrecon report daily``: the day's statement per target merchant and ledger."""

from __future__ import annotations

import csv
import sys
from datetime import date
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import typer

from wxrecon.cli.database import database
from wxrecon.cli.errors import bad_input
from wxrecon.cli.output import Output, table

app = typer.Typer(no_args_is_help=True)

FORMATS = ("table", "csv", "json")
PROVIDER_ZONE = "Asia/Shanghai"  # the provider's times are +08:00


def _day(text: str) -> date:
    if len(text) != 10:
        raise typer.BadParameter("a date is YYYY-MM-DD")
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter("a date is YYYY-MM-DD") from None


def _zone(text: str) -> ZoneInfo:
    if not text or len(text) > 64 or ".." in text or text.startswith("/"):
        raise typer.BadParameter("a zone is an IANA name such as Asia/Shanghai or UTC")
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise typer.BadParameter(f"unknown time zone {text!r}") from None


def _format(text: str) -> str:
    if text.lower() not in FORMATS:
        raise typer.BadParameter(f"one of {', '.join(FORMATS)}")
    return text.lower()


@app.command("daily")
def daily(
    day: Annotated[
        date, typer.Option("--date", help="The day (YYYY-MM-DD).", parser=_day, metavar="DATE")
    ],
    tz: Annotated[
        ZoneInfo,
        typer.Option("--tz", help="The day's zone.", parser=_zone, metavar="ZONE"),
    ] = PROVIDER_ZONE,  # type: ignore[assignment]
    fmt: Annotated[
        str, typer.Option("--format", help="table, csv or json.", parser=_format)
    ] = "table",
) -> None:
    """Counts and integer-fen sums by final state, in flight, in review (with its age), the
    day's snapshots and discrepancies, per target merchant and ledger."""
    from wxrecon.domain import statement
    from wxrecon.domain.outcomes import ledger_label
    from wxrecon.domain.states import REDUCTION_ACTIVE, RState
    from wxrecon.store import ledgers

    if day.year < 2000 or day.year > 9998:
        raise bad_input("--date must be between 2000 and 9998")
    db = database()
    start, end = statement.day_bounds(day, tz)
    doc = statement.build(
        day=day,
        zone=tz,
        finals=ledgers.day_finals(db, start, end),
        in_flight=ledgers.open_reductions(db, sorted(REDUCTION_ACTIVE)),
        review=ledgers.open_reductions(db, [RState.NEEDS_REVIEW]),
        snapshots=[
            {**s, "ledger": ledger_label(s["ledger_hash"])}
            for s in ledgers.day_snapshots(db, start, end)
        ],
        discrepancies=[
            {**d, "ledger": ledger_label(d["ledger_hash"])}
            for d in ledgers.discrepancies(db, start=start, end=end, limit=100_000)
        ],
        label=ledger_label,  # orders carry the ledger's keyed hash
        now=db.now(),
    )
    if fmt == "json":
        Output(True).json(doc)
    elif fmt == "csv":
        sys.stdout.write(f"# date {doc['date']}, zone {doc['timezone']}\n")
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(statement.COLUMNS)
        writer.writerows(statement.rows(doc))
    else:
        title = f"statement {doc['date']} ({doc['timezone']}, {doc['start']} .. {doc['end']})"
        Output(False).print(table(title, statement.COLUMNS, statement.rows(doc)))

"""How every command writes: one JSON document for scripts, Rich tables for people.

``--json`` prints exactly one JSON document on stdout (errors: one JSON line on stderr, see
:mod:`wxrecon.cli.errors`). Money is integer fen, shown as ``¥1,234.56`` without a float.
Provider text is printed as :class:`rich.text.Text`, never as markup.
"""

from __future__ import annotations

import dataclasses
import enum
import getpass
import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from wxrecon.wechatpay.keys import mask

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of tables.")]


def to_jsonable(value: Any) -> Any:
    """Dataclasses, enums, datetimes, paths and mappings as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in value]
    return value


class Output:
    """Where a command writes: a Rich console for people, JSON on stdout for scripts."""

    def __init__(self, json_mode: bool, console: Console | None = None) -> None:
        self.json_mode = json_mode
        self.console = console or Console(highlight=False, soft_wrap=False)
        self.err = Console(stderr=True, highlight=False)

    def json(self, value: Any) -> None:
        sys.stdout.write(json.dumps(to_jsonable(value), ensure_ascii=False, sort_keys=False))
        sys.stdout.write("\n")
        sys.stdout.flush()

    def print(self, *renderables: Any) -> None:
        if not self.json_mode:
            self.console.print(*renderables)

    def show(self, title: str, data: Mapping[str, Any]) -> None:
        """A flat record: the JSON document, or a two-column field/value table."""
        if self.json_mode:
            self.json(data)
        else:
            self.print(record_table(title, data))


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    t = Table(title=title, title_justify="left", header_style="bold", expand=False)
    for name in columns:
        wraps = name in WRAPPING_COLUMNS
        t.add_column(name, overflow="fold" if wraps else "ellipsis", no_wrap=not wraps)
    for row in rows:
        t.add_row(*(cell if isinstance(cell, Text) else Text(fmt(cell)) for cell in row))
    return t


def record_table(title: str, data: Mapping[str, Any]) -> Table:
    t = Table(title=title, title_justify="left", show_header=False)
    t.add_column("field", style="bold")
    t.add_column("value", overflow="fold")
    for name, value in data.items():
        # Text, not str: a provider's text like "[/x]" must print as is, not as Rich markup.
        t.add_row(Text(name), Text(record_cell(name, value)))
    return t


# Free text that may be long; every other column stays on one line.
WRAPPING_COLUMNS = frozenset({"why", "reason", "detail", "last error", "error"})
MONEY_FIELDS = frozenset({"amount", "balance"})

STATE_STYLES = {
    "SUCCESS": "green",
    "FAILED": "red",
    "CLOSED": "red",
    "CANCELLED": "magenta",
    "REJECTED": "bold red",
    "NEEDS_REVIEW": "bold yellow",
}


def state_text(state: object) -> Text:
    name = str(getattr(state, "value", state) or "")
    return Text(name, style=STATE_STYLES.get(name, "cyan"))


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def record_cell(name: str, value: Any) -> str:
    """One value of a record as text: money as fen and yuan, nested records inline."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) and name in MONEY_FIELDS:
        return f"{value} fen ({fen(value)})"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={record_cell(k, v)}" for k, v in value.items())
    return str(value)


def record(result: Any) -> dict[str, Any]:
    """A result dataclass as a flat, display-safe dict (the ledger number masked)."""
    data = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
    if data.get("bal_account_no"):
        data["bal_account_no"] = mask(data["bal_account_no"])
    for name, value in list(data.items()):
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            data[name] = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    return data


def fen(amount: int | None) -> str:
    """Integer fen as ``¥1,234.56`` without ever going through a float."""
    if amount is None:
        return "-"
    sign = "-" if amount < 0 else ""
    yuan, cents = divmod(abs(int(amount)), 100)
    return f"{sign}¥{yuan:,}.{cents:02d}"


def ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def safe_url(url: str) -> str:
    """A database or broker URL for display: the password hidden."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse (a broker URL may not be)
        return url.rsplit("@", 1)[-1]


def default_actor() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (containers): fall back to the environment
        return os.environ.get("USER") or "unknown"

"""What every command shares: the ``--json`` switch, output, one-line errors, value parsing.

Commands print through :class:`Output`, which writes Rich tables for people and one JSON
document for scripts. Anything that goes wrong becomes a :class:`CliError` (or is turned into
one by the group in :mod:`wxrecon.cli`), printed as a single line, never a traceback.
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

import click
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from wxrecon.config import Settings, parse_duration
from wxrecon.logs import redact

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of tables.")]


# Typer may vendor its own copy of click: its usage errors are not click's classes.
_TYPER_CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
CLICK_ERRORS: tuple[type[Exception], ...] = tuple({click.ClickException, _TYPER_CLICK_ERROR})
ABORTS: tuple[type[BaseException], ...] = tuple({click.exceptions.Abort, typer.Abort})


class CliError(click.ClickException):
    """A one-line failure of an operation (exit 1)."""

    exit_code = 1


class BadInput(CliError):
    """A one-line refusal of the input, before anything was written or sent (exit 2)."""

    exit_code = 2


def bad_input(message: str) -> CliError:
    return BadInput(message)


def one_line(exc: BaseException) -> str:
    """A single, secret-free line describing ``exc``."""
    if isinstance(exc, CLICK_ERRORS):
        text = exc.format_message()  # type: ignore[attr-defined]
    else:
        # SQLAlchemy errors carry the statement and its parameters: show only the driver's
        # own first line.
        orig = getattr(exc, "orig", None)
        text = str(orig) if orig is not None else str(exc)
        text = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        if not isinstance(exc, ValueError | LookupError | OSError) and orig is None:
            text = f"{type(exc).__name__}: {text}"
    return redact(" ".join(text.split()))


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


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    t = Table(title=title, title_justify="left", header_style="bold", expand=False)
    for name in columns:
        wraps = name in WRAPPING_COLUMNS
        t.add_column(name, overflow="fold" if wraps else "ellipsis", no_wrap=not wraps)
    for row in rows:
        t.add_row(*(cell if isinstance(cell, Text) else Text(fmt(cell)) for cell in row))
    return t


# Free text that may be long; every other column stays on one line.
WRAPPING_COLUMNS = frozenset({"why", "reason", "detail", "last error", "error"})

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


def parse_seconds(text: str | None, option: str) -> float | None:
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise bad_input(f"{option}: {exc}") from None


def parse_since(
    text: str | None, option: str = "--since", now: datetime | None = None
) -> datetime | None:
    """An ISO date/time (UTC when no zone is given) or a duration back from now (``2h``)."""
    if text is None:
        return None
    now = now or datetime.now(UTC)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        try:
            return now - timedelta(seconds=parse_duration(text))
        except ValueError:
            raise bad_input(
                f"{option}: {text!r} is neither an ISO time (2026-01-31T08:00) nor a duration (2h)"
            ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


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


def settings() -> Settings:
    try:
        return Settings.model_validate({})
    except ValidationError as exc:  # name the setting, one line
        first = exc.errors()[0]
        name = "WXRECON_" + str(first["loc"][0]).upper() if first["loc"] else "settings"
        raise CliError(f"configuration: {name}: {first['msg']}") from None


class OneLineErrors(TyperGroup):
    """Runs the command tree and turns every failure into one line and an exit code."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        try:
            rv = super().main(
                argv, prog_name or "wxrecon", complete_var, standalone_mode=False, **extra
            )
        except ABORTS:
            _fail("aborted", 1, argv)
        except CLICK_ERRORS as exc:
            _fail(one_line(exc), getattr(exc, "exit_code", 1), argv)
        except KeyboardInterrupt:
            _fail("interrupted", 130, argv)
        except Exception as exc:  # a bug or an unexpected failure: still one line
            _fail(one_line(exc), 1, argv)
        code = rv if isinstance(rv, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


def _fail(message: str, code: int, argv: Sequence[str]) -> None:
    if "--json" in argv:
        line = json.dumps({"error": message}, ensure_ascii=False)
    else:
        line = f"error: {message}"
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
    sys.exit(code)

"""``wxrecon import FILE.csv``: bulk intake of special reductions.

The header row names the fields (``mchid,bal_account_no,out_request_no,reduction_type,amount``
and optionally ``reason`` and ``caller``, the profile that signs the row's order). Each row
is its own transaction: a bad row is reported with its
line number, nothing of it is written, and the import goes on (``--stop-on-error`` stops
instead). The exit code is non-zero when any row was refused, and the summary lists the
refused lines (the first :data:`SHOWN_REFUSALS`; ``--json`` lists them all).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from wxrecon.cli.database import database
from wxrecon.cli.errors import CliError, bad_input, describe
from wxrecon.cli.output import JsonOpt, Output
from wxrecon.cli.params import FenAmount
from wxrecon.cli.waiting import Sender

REQUIRED = ("mchid", "bal_account_no", "out_request_no", "reduction_type", "amount")
OPTIONAL = ("reason", "caller")
SHOWN_REFUSALS = 20


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise bad_input(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise bad_input(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise bad_input(f"{path}: {exc.strerror}") from None


def header_problems(header: list[str]) -> str:
    """What is wrong with a header row ("" when nothing is)."""
    if not header:
        return "empty file (the first line must name the fields)"
    missing = [f for f in REQUIRED if f not in header]
    unknown = [f for f in header if f not in (*REQUIRED, *OPTIONAL)]
    parts = [f"missing {', '.join(missing)}"] if missing else []
    parts += [f"unknown {', '.join(unknown)}"] if unknown else []
    return f"line 1: header {'; '.join(parts)}" if parts else ""


def read_rows(path: Path) -> tuple[list[tuple[int, dict[str, str]]], list[dict[str, Any]]]:
    """Rows with their line numbers, and the rows refused before touching the database."""
    reader = csv.DictReader(_text(path).splitlines())
    header = [h.strip() for h in reader.fieldnames or []]
    problem = header_problems(header)
    if problem:
        raise bad_input(f"{path}: {problem}")
    reader.fieldnames = header
    rows: list[tuple[int, dict[str, str]]] = []
    refused: list[dict[str, Any]] = []
    for record in reader:
        line = reader.line_num
        if None in record or any(v is None for v in record.values()):
            refused.append({"line": line, "error": "wrong number of fields"})
            continue
        rows.append((line, {k: (v or "").strip() for k, v in record.items()}))
    return rows, refused


def parse_amount(text: str) -> int:
    """The command line's amount rule (:class:`FenAmount`) for a CSV cell."""
    from wxrecon.wechatpay.errors import InvalidRequest

    try:
        return FenAmount()(text)
    except typer.BadParameter as exc:
        raise InvalidRequest(exc.message, field="amount") from None


def summary_lines(
    created: int, existing: int, refused: list[dict[str, Any]], path: Path
) -> list[str]:
    """The human summary: a ✓ only for a clean file; every refused line up to a limit."""
    counts = f"{created} new, {existing} already known, {len(refused)} refused"
    if not refused:
        return [f"[green]✓[/] {counts}"]
    lines = [f"[yellow]![/] {counts}:"]
    lines += [f"  line {r['line']}: {escape(r['error'])}" for r in refused[:SHOWN_REFUSALS]]
    rest = len(refused) - SHOWN_REFUSALS
    if rest > 0:
        lines.append(
            f"  … and {rest} more refused lines: `wxrecon import {escape(str(path))} --json` "
            "lists them all (rows already written are only reported as known)"
        )
    return lines


def import_csv(
    file: Path = typer.Argument(..., help="CSV file with a header row."),
    stop_on_error: bool = typer.Option(False, "--stop-on-error", help="Stop at the first bad row."),
    json_out: JsonOpt = False,
) -> None:
    """Bulk intake of special reductions from a CSV file (header row names the fields)."""
    from wxrecon import intake
    from wxrecon.domain.errors import Conflict
    from wxrecon.wechatpay.errors import InvalidRequest

    rows, refused = read_rows(file)
    if refused and stop_on_error:
        raise bad_input(f"{file}: line {refused[0]['line']}: {refused[0]['error']}")
    db = database()
    sender = Sender()
    created = existing = 0
    out = Output(json_out)
    with Progress(
        TextColumn("importing"),
        BarColumn(),
        MofNCompleteColumn(),
        console=out.err,
        disable=json_out or not out.err.is_terminal,
    ) as bar:
        task = bar.add_task("import", total=len(rows))
        for line, row in rows:
            try:
                amount = parse_amount(row["amount"])
                with db.transaction() as session:
                    result = intake.submit_reduction(
                        session,
                        mchid=row["mchid"],
                        bal_account_no=row["bal_account_no"],
                        out_request_no=row["out_request_no"],
                        reduction_type=row["reduction_type"],
                        amount=amount,
                        reason=row.get("reason") or None,
                        caller=row.get("caller") or None,
                        enqueue=sender,
                    )
            except (InvalidRequest, Conflict) as exc:
                refused.append({"line": line, "error": describe(exc)[1]})
                if stop_on_error:
                    break
            else:
                if result.created:
                    created += 1
                else:
                    existing += 1
            bar.advance(task)
    sender.warn_if_failed(json_out)
    refused.sort(key=lambda r: r["line"])
    if json_out:
        out.json({"created": created, "existing": existing, "refused": refused})
    else:
        for text in summary_lines(created, existing, refused, file):
            out.print(text)
    if refused:
        first = refused[0]
        more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
        raise CliError(f"{file}: line {first['line']}: {first['error']}{more}")

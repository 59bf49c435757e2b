"""``wxrecon import FILE.csv``: bulk intake of special reductions, streamed.

The header row names the fields (``mchid,bal_account_no,out_request_no,reduction_type,amount``
and optionally ``reason`` and ``caller`` (the profile that signs the row's order). The file
is read, checked, written and enqueued ``--batch-size``
rows at a time (memory does not grow with the file): each batch is one transaction through
the Python helper's bulk path (set-based INSERTs, one ``poll_reductions`` message per
:data:`~wxrecon.cli.bulk_import.CHUNK` new orders, sent after commit). A bad row is refused
with its line number, nothing of it is written, and the rest go on (``--stop-on-error``
stops at it; the batches before it stay written). An order that already exists with the
same parameters counts as "already known" and is not enqueued again, so the same file can
simply be run again after a Ctrl-C (which stops at a batch boundary), a killed process or a
lost database.

The exit code is non-zero when any row was refused; the summary lists the first
:data:`SHOWN_REFUSALS` refused lines and writes all of them to the refused file (``--json``
lists them all, in the same shape as always).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Annotated, Any

import typer
from rich.markup import escape

from wxrecon.cli.database import database
from wxrecon.cli.errors import CliError, bad_input, describe
from wxrecon.cli.output import JsonOpt, Output
from wxrecon.cli.params import FenAmount
from wxrecon.cli.progress import Reporter, stop_on_interrupt
from wxrecon.cli.waiting import Sender

REQUIRED = ("mchid", "bal_account_no", "out_request_no", "reduction_type", "amount")
OPTIONAL = ("reason", "caller")
SHOWN_REFUSALS = 20
DEFAULT_BATCH = 2000
MAX_BATCH = 20_000


def header_problems(header: list[str]) -> str:
    """What is wrong with a header row ("" when nothing is)."""
    if not header:
        return "empty file (the first line must name the fields)"
    missing = [f for f in REQUIRED if f not in header]
    unknown = [f for f in header if f not in (*REQUIRED, *OPTIONAL)]
    parts = [f"missing {', '.join(missing)}"] if missing else []
    parts += [f"unknown {', '.join(unknown)}"] if unknown else []
    return f"line 1: header {'; '.join(parts)}" if parts else ""


class Source:
    """The file's lines, decoded one by one, and how many bytes were read (the progress:
    no line count first). Undecodable bytes become U+FFFD and refuse their row."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.bytes_read = 0

    def __iter__(self) -> Iterator[str]:
        first = True
        for chunk in self.raw:
            self.bytes_read += len(chunk)
            text = chunk.decode("utf-8", errors="replace")
            if first:
                text, first = text.removeprefix("\ufeff"), False
            yield text


def _open(path: Path) -> IO[bytes]:
    try:
        if path.is_dir():
            raise bad_input(f"{path}: is a directory")
        return path.open("rb")
    except FileNotFoundError:
        raise bad_input(f"{path}: no such file") from None
    except OSError as exc:
        raise bad_input(f"{path}: {exc.strerror}") from None


def rows(source: Source, path: Path) -> Iterator[tuple[int, dict[str, str] | str]]:
    """(line number, the row's fields) or (line number, why it is refused), lazily."""
    reader = csv.reader(source)
    try:
        header = [h.strip() for h in next(reader, [])]
    except csv.Error as exc:
        raise bad_input(f"{path}: line 1: {exc}") from None
    problem = header_problems(header)
    if problem:
        raise bad_input(f"{path}: {problem}")
    width = len(header)
    while True:
        try:
            record = next(reader, None)
        except csv.Error as exc:
            yield reader.line_num, f"not CSV ({exc})"
            continue
        if record is None:
            return
        if not record:
            continue  # a blank line
        if len(record) != width:
            yield reader.line_num, "wrong number of fields"
        elif any("\ufffd" in v for v in record):
            yield reader.line_num, "not UTF-8 text"
        else:
            yield reader.line_num, {k: v.strip() for k, v in zip(header, record, strict=True)}


def parse_amount(text: str) -> int:
    """The command line's amount rule (:class:`FenAmount`) for a CSV cell."""
    from wxrecon.wechatpay.errors import InvalidRequest

    try:
        return FenAmount()(text)
    except typer.BadParameter as exc:
        raise InvalidRequest(exc.message, field="amount") from None


def check(row: dict[str, str]) -> Any:
    """The row as a validated request (InvalidRequest: refused)."""
    from wxrecon.wechatpay.resources import SpecialReductionRequest

    return SpecialReductionRequest.create(
        mchid=row["mchid"],
        bal_account_no=row["bal_account_no"],
        out_request_no=row["out_request_no"],
        reduction_type=row["reduction_type"],
        amount=parse_amount(row["amount"]),
        reason=row.get("reason") or None,
    )


class Refusals:
    """Every refused line: the first :data:`SHOWN_REFUSALS` kept for the summary, all of
    them kept for ``--json`` (its shape) and, past the first ones, written to ``path``."""

    def __init__(self, path: Path, keep_all: bool) -> None:
        self.path, self.keep_all = path, keep_all
        self.count = 0
        self.kept: list[dict[str, Any]] = []
        self.file: IO[str] | None = None
        self.writer: Any = None

    def add(self, line: int, error: str) -> None:
        self.count += 1
        entry = {"line": line, "error": error}
        if self.keep_all or len(self.kept) < SHOWN_REFUSALS:
            self.kept.append(entry)
        if self.count == SHOWN_REFUSALS + 1 and not self.keep_all:
            self._start_file()
        if self.writer is not None:
            self.writer.writerow((line, error))

    def _start_file(self) -> None:
        try:
            self.file = self.path.open("w", encoding="utf-8", newline="")
        except OSError as exc:
            raise CliError(f"{self.path}: cannot write the refused lines: {exc.strerror}") from None
        self.writer = csv.writer(self.file)
        self.writer.writerow(("line", "error"))
        for r in self.kept:
            self.writer.writerow((r["line"], r["error"]))

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def summary_lines(
    created: int, existing: int, refused: Refusals | list[dict[str, Any]], path: Path
) -> list[str]:
    """The human summary: a ✓ only for a clean file; every refused line up to a limit, and
    where all of them are."""
    kept = refused.kept if isinstance(refused, Refusals) else refused
    count = refused.count if isinstance(refused, Refusals) else len(refused)
    counts = f"{created} new, {existing} already known, {count} refused"
    if not count:
        return [f"[green]✓[/] {counts}"]
    lines = [f"[yellow]![/] {counts}:"]
    lines += [f"  line {r['line']}: {escape(r['error'])}" for r in kept[:SHOWN_REFUSALS]]
    rest = count - SHOWN_REFUSALS
    if rest > 0:
        where = (
            f"all {count} are in {escape(str(refused.path))}"
            if isinstance(refused, Refusals) and refused.file is not None
            else "see below"
        )
        lines.append(
            f"  … and {rest} more refused lines: {where} (`wxrecon import "
            f"{escape(str(path))} --json` lists them too; rows already written are only "
            "reported as known)"
        )
    return lines


def default_refused_file(path: Path) -> Path:
    """Next to the input (``in.csv`` -> ``in.csv.refused.csv``)."""
    return path.with_name(path.name + ".refused.csv")


BatchOpt = Annotated[
    int,
    typer.Option(
        "--batch-size",
        min=1,
        max=MAX_BATCH,
        help="Rows per transaction (and per read): memory is bounded by it.",
    ),
]
RefusedOpt = Annotated[
    Path | None,
    typer.Option(
        "--refused-file",
        help="Where all refused lines go when there are more than the summary shows "
        "(default: next to the input, FILE.refused.csv).",
        dir_okay=False,
    ),
]


def import_csv(
    file: Path = typer.Argument(..., help="CSV file with a header row."),
    stop_on_error: bool = typer.Option(False, "--stop-on-error", help="Stop at the first bad row."),
    batch_size: BatchOpt = DEFAULT_BATCH,
    refused_file: RefusedOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Bulk intake of special reductions from a CSV file (header row names the fields),
    streamed in batches; safe to run again after an interruption."""
    from wxrecon.cli.bulk_import import Importer

    out = Output(json_out)
    raw = _open(file)
    refused = Refusals(refused_file or default_refused_file(file), keep_all=json_out)
    try:
        size = max(file.stat().st_size, 1)
        source = Source(raw)
        lines = rows(source, file)
        first = next(lines, None)  # the header is checked before the database is opened
        sender = Sender()
        importer = Importer(database(), sender, refused, batch_size, stop_on_error)
        with (
            stop_on_interrupt() as stop,
            Reporter(out.err, "importing", size, quiet=json_out) as bar,
        ):
            importer.run(
                first, lines, stop, lambda: bar.update(source.bytes_read, **importer.counts())
            )
            where = bar.line(source.bytes_read, **importer.counts())
    finally:
        raw.close()
        refused.close()
    sender.warn_if_failed(json_out)
    _report(out, importer, refused, file, json_out)
    if importer.problem is not None:
        raise CliError(
            f"{file}: stopped after line {importer.last_line} ({importer.problem}); {where}; "
            "what was written stays: run the same command again to continue"
        )
    if stop:
        raise CliError(
            f"{file}: interrupted after line {importer.last_line} ({where}); run the same "
            "command again to continue (rows already written count as already known)",
        )
    if refused.count:
        first_refused = refused.kept[0]
        more = f" (and {refused.count - 1} more)" if refused.count > 1 else ""
        raise CliError(f"{file}: line {first_refused['line']}: {first_refused['error']}{more}")


def _report(out: Output, importer: Any, refused: Refusals, file: Path, json_out: bool) -> None:
    if json_out:
        kept = sorted(refused.kept, key=lambda r: r["line"])
        out.json({"created": importer.created, "existing": importer.existing, "refused": kept})
    else:
        for text in summary_lines(importer.created, importer.existing, refused, file):
            out.print(text)


__all__ = ["describe", "import_csv"]

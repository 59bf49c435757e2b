"""``wxrecon db``: the database schema."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.text import Text

from wxrecon.cli.database import DatabaseProblem, probe, settings
from wxrecon.cli.errors import CliError, describe
from wxrecon.cli.output import JsonOpt, Output, safe_url

app = typer.Typer(no_args_is_help=True)


@app.command("upgrade")
def upgrade(json_out: JsonOpt = False) -> None:
    """Apply every pending migration (safe to run again; run it before starting workers)."""
    from wxrecon.store import db

    s = settings()
    url = safe_url(db.normalize_url(s.database_url))
    try:
        probe(s.database_url, create=True)  # the one command that may create a SQLite file
        before = db.current_revisions(s.database_url)
        db.upgrade(s.database_url)
        after = db.current_revisions(s.database_url)
    except DatabaseProblem as exc:
        raise CliError(f"db upgrade failed on {url}: {exc}") from None
    except Exception as exc:
        raise CliError(f"db upgrade failed on {url}: {describe(exc)[1]}") from None
    out = Output(json_out)
    if json_out:
        out.json({"database": url, "from": sorted(before), "to": sorted(after)})
    elif before == after:
        out.print(f"[green]✓[/] {url} is up to date (revision {', '.join(sorted(after))})")
    else:
        was = ", ".join(sorted(before)) or "empty"
        out.print(f"[green]✓[/] {url} upgraded from {was} to {', '.join(sorted(after))}")


@app.command("verify")
def verify(json_out: JsonOpt = False) -> None:
    """Check every order's event chain against its row; exit 1 naming the orders that fail
    (e.g. a row changed outside the engine)."""
    from wxrecon.cli.database import database
    from wxrecon.store import sealing
    from wxrecon.store.verify import Broken
    from wxrecon.store.verify import verify as run

    out = Output(json_out)
    db = database(sealed=False)  # verify reports unsealed rows instead of refusing them
    note = None if json_out else lambda k, n: out.err.print(f"  {k}: {n} checked…")
    checked, broken = run(db, note)
    for order_id, number, why in sealing.unopened(
        db, db.keyring, None if note is None else lambda n: note("ledger numbers", n)
    ):
        broken.append(Broken("reduction", order_id, number, why))
    if json_out:
        out.json({"checked": checked, "broken": broken, "ok": not broken})
    else:
        for b in broken:
            out.print(
                Text.assemble(("✗ ", "red"), f"{b.kind} #{b.order_id} {b.number}: {b.problem}")
            )
        total = sum(checked.values())
        if not broken:
            out.print(
                f"[green]✓[/] {total} orders: every event chain matches its row, every "
                "ledger number opens"
            )
    if broken:
        names = ", ".join(f"{b.kind} #{b.order_id}" for b in broken[:10])
        more = f" and {len(broken) - 10} more" if len(broken) > 10 else ""
        raise CliError(f"{len(broken)} order(s) fail the check: {names}{more}")


BatchOpt = typer.Option(500, "--batch", min=1, max=10_000, help="Rows per committed batch.")
EVERY = 5.0  # seconds between two summary lines when stderr is not a terminal


@contextmanager
def _progress(out: Output, what: str) -> Iterator[Callable[[int, int], None]]:
    """(done, total) reports: a Rich bar on a terminal, else a line every few seconds."""
    if out.json_mode or not out.err.is_terminal:
        last = [time.monotonic()]

        def line(done: int, total: int) -> None:
            if not out.json_mode and time.monotonic() - last[0] >= EVERY:
                last[0] = time.monotonic()
                out.err.print(f"  {what}: {done}/{total}")

        yield line
        return
    with Progress(
        TextColumn(what),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=out.err,
        transient=True,
    ) as bar:
        task = bar.add_task(what, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _batched(
    json_out: bool, what: str, run: Callable[[Any, Any, Callable[[int, int], None]], Any]
) -> tuple[Output, Any, Any]:
    from wxrecon.cli.database import database

    out = Output(json_out)
    db = database(sealed=False)
    keys = db.keyring
    try:
        with _progress(out, what) as progress:
            summary = run(db, keys, progress)
    except KeyboardInterrupt:
        raise CliError(
            f"{what} interrupted: the batches committed so far are kept; run it again to finish",
            exit_code=130,
        ) from None
    return out, keys, summary


def _report(out: Output, summary: Any, verb: str, extra: dict[str, Any]) -> None:
    failed = {str(k): v for k, v in summary.failed.items()}
    if out.json_mode:
        out.json({verb: summary.done, "failed": failed, "batches": summary.batches, **extra})
    else:
        out.print(f"[green]✓[/] {summary.done} ledger number(s) {verb}")
        for order_id, why in list(summary.failed.items())[:20]:
            out.print(Text.assemble(("✗ ", "red"), f"reduction #{order_id}: {why}"))
    if summary.failed:
        raise CliError(
            f"{len(summary.failed)} ledger number(s) left as they were ({summary.listed()}); "
            "see `wxrecon db verify`"
        )


@app.command("seal")
def seal(json_out: JsonOpt = False, batch: int = BatchOpt) -> None:
    """Seal the ledger numbers stored in plaintext before sealing (once, after `db upgrade`
    to 0007): committed batches, resumable (run it again after an interruption)."""
    from wxrecon.store import sealing

    out, _keys, summary = _batched(
        json_out,
        "sealing",
        lambda db, keys, p: sealing.seal_pending(db, keys, batch=batch, progress=p),
    )
    _report(out, summary, "sealed", {})


@app.command("rotate-key")
def rotate_key(json_out: JsonOpt = False, batch: int = BatchOpt) -> None:
    """Re-seal under the first key of WXRECON_DATA_KEYS every ledger number another key
    sealed: committed batches, resumable. Afterwards the old keys can be removed."""
    from wxrecon.store import sealing

    out, keys, summary = _batched(
        json_out,
        "re-sealing",
        lambda db, keys, p: sealing.rotate(db, keys, batch=batch, progress=p),
    )
    _report(out, summary, "re-sealed", {"key": keys.current})
    if not out.json_mode:
        out.print(f"  every sealed ledger number is now under key {keys.current!r}")


@app.command("keygen")
def keygen(
    key_id: str = typer.Option(
        "k1", "--id", help="The new data key's id (1-32 of A-Z a-z 0-9 _ -)."
    ),
    json_out: JsonOpt = False,
) -> None:
    """Print fresh keys as environment lines: a data key named --id and a look-up key.
    Keep them secret and backed up: without them no ledger number can be read."""
    from wxrecon.cli.errors import bad_input
    from wxrecon.store.sealed import SealError, key_setting, parse_data_keys

    lines = key_setting(key_id)
    try:
        parse_data_keys(lines["WXRECON_DATA_KEYS"])
    except SealError:
        raise bad_input("--id must be 1-32 letters, digits, '_' or '-'") from None
    if json_out:
        Output(True).json(lines)
        return
    for name, value in lines.items():
        typer.echo(f"{name}={value}")

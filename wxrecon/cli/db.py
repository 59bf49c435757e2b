"""``wxrecon db``: the database schema."""

from __future__ import annotations

import typer
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
    from wxrecon.store.verify import verify as run

    out = Output(json_out)
    checked, broken = run(
        database(), None if json_out else lambda k, n: out.err.print(f"  {k}: {n} checked…")
    )
    if json_out:
        out.json({"checked": checked, "broken": broken, "ok": not broken})
    else:
        for b in broken:
            out.print(
                Text.assemble(("✗ ", "red"), f"{b.kind} #{b.order_id} {b.number}: {b.problem}")
            )
        total = sum(checked.values())
        if not broken:
            out.print(f"[green]✓[/] {total} orders: every event chain matches its row")
    if broken:
        names = ", ".join(f"{b.kind} #{b.order_id}" for b in broken[:10])
        more = f" and {len(broken) - 10} more" if len(broken) > 10 else ""
        raise CliError(f"{len(broken)} order(s) fail the event-chain check: {names}{more}")

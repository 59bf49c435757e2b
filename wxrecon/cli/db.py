"""``wxrecon db``: the database schema."""

from __future__ import annotations

import typer

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

"""``wxrecon db``: the database schema."""

from __future__ import annotations

import typer

from wxrecon.cli_common import CliError, JsonOpt, Output, one_line, safe_url, settings

app = typer.Typer(no_args_is_help=True)


@app.command("upgrade")
def upgrade(json_out: JsonOpt = False) -> None:
    """Apply every pending migration (safe to run again; run it before starting workers)."""
    from wxrecon.store import db

    s = settings()
    url = safe_url(db.normalize_url(s.database_url))
    try:
        before = db.current_revisions(s.database_url)
        db.upgrade(s.database_url)
        after = db.current_revisions(s.database_url)
    except Exception as exc:
        raise CliError(f"db upgrade failed on {url}: {one_line(exc)}") from None
    out = Output(json_out)
    if json_out:
        out.json({"database": url, "from": sorted(before), "to": sorted(after)})
    elif before == after:
        out.print(f"[green]✓[/] {url} is up to date (revision {', '.join(sorted(after))})")
    else:
        was = ", ".join(sorted(before)) or "empty"
        out.print(f"[green]✓[/] {url} upgraded from {was} to {', '.join(sorted(after))}")

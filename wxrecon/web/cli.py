"""``wxrecon web``: serve the console (loopback by default) and manage its tokens."""

from __future__ import annotations

import ipaddress
from typing import Annotated

import typer

from wxrecon.cli.errors import CliError

app = typer.Typer(no_args_is_help=False, invoke_without_command=True)
token_app = typer.Typer(no_args_is_help=True)
app.add_typer(token_app, name="token", help="Console tokens: create, list, revoke.")


def _host(value: str) -> str:
    if value == "localhost":
        return value
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise typer.BadParameter(
            "give an IP address (127.0.0.1, ::1, 0.0.0.0) or localhost"
        ) from None


@app.callback()
def serve(
    ctx: typer.Context,
    host: Annotated[
        str, typer.Option("--host", callback=_host, help="Bind address.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 8700,
) -> None:
    """Serve the web console and the JSON API (/api/v1, OpenAPI at /api/v1/openapi.json)."""
    if ctx.invoked_subcommand is not None:
        return
    import uvicorn

    from wxrecon.cli.database import database
    from wxrecon.web.app import create_app

    database()  # one line, not a traceback, when the database is missing or behind
    if host not in ("127.0.0.1", "::1", "localhost"):
        typer.echo(
            f"warning: serving on {host}; put TLS in front (cookies are Secure there)", err=True
        )
    # access_log off: a URL never carries a token, but keep request lines out of logs anyway.
    uvicorn.run(create_app(), host=host, port=port, access_log=False, log_level="info")


def _db():  # type: ignore[no-untyped-def]
    from wxrecon.cli.database import database

    return database()


@token_app.command("create")
def create(
    name: Annotated[str, typer.Option("--name", help="Who holds it: the actor of its actions.")],
    role: Annotated[str, typer.Option("--role", help="viewer, operator or approver.")],
) -> None:
    """Make a token; it is printed once and only its SHA-256 is kept."""
    from wxrecon.store import web_tokens

    try:
        token = web_tokens.create(_db(), name, role)
    except web_tokens.TokenProblem as exc:
        raise CliError(str(exc)) from None
    typer.echo(token)
    typer.echo(f"token for {name} ({role}); shown once, keep it safe", err=True)


@token_app.command("list")
def list_tokens() -> None:
    """The tokens (never their values): name, role, created, revoked."""
    from wxrecon.store import web_tokens

    for t in web_tokens.listing(_db()):
        status = f"revoked {t['revoked_at']}" if t["revoked_at"] else "live"
        typer.echo(f"{t['name']}\t{t['role']}\t{t['created_at']}\t{status}")


@token_app.command("revoke")
def revoke(name: Annotated[str, typer.Option("--name")]) -> None:
    """Revoke a token: its API calls and browser sessions stop at once."""
    from wxrecon.store import web_tokens

    try:
        web_tokens.revoke(_db(), name)
    except web_tokens.TokenProblem as exc:
        raise CliError(str(exc)) from None
    typer.echo(f"revoked {name}")

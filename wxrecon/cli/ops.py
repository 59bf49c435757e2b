"""``wxrecon metrics``: Prometheus metrics of all processes, plus gauges read from the database."""

from __future__ import annotations

import time

import typer

from wxrecon.cli.database import probe, settings
from wxrecon.cli.errors import CliError
from wxrecon.cli.output import JsonOpt, Output
from wxrecon.logs import configure_logging


def metrics(
    host: str = typer.Option("127.0.0.1", help="Address to bind."),
    port: int = typer.Option(None, min=0, max=65535, help="Port (default WXRECON_METRICS_PORT)."),
    once: bool = typer.Option(False, "--once", help="Print one scrape to stdout and exit."),
    no_db: bool = typer.Option(False, "--no-db", help="Leave out the database gauges."),
    json_out: JsonOpt = False,
) -> None:
    """Serve Prometheus metrics of all processes, plus gauges read from the database.

    Worker samples come from PROMETHEUS_MULTIPROC_DIR; the database gauges are orders by
    state and the oldest due order's age.
    """
    from prometheus_client import generate_latest

    from wxrecon import metrics_server

    s = settings()
    if not no_db:
        probe(s.database_url)  # says what is wrong, and never creates an empty SQLite file
    if once:
        registry = metrics_server.build_registry(
            None if no_db else metrics_server.database_snapshot(s)
        )
        text = generate_latest(registry).decode()
        if json_out:
            Output(True).json({"exposition": text})
        else:
            typer.echo(text, nl=False)
        return
    configure_logging(s)
    try:
        server, _thread = metrics_server.start(s, host=host, port=port, with_db=not no_db)
    except OSError as exc:
        raise CliError(
            f"cannot listen on {host}:{port or s.metrics_port}: {exc.strerror}"
        ) from None
    bound = server.server_address[1]
    out = Output(json_out)
    if json_out:
        out.json({"listening": f"http://{host}:{bound}/metrics"})
    else:
        out.print(f"serving metrics on http://{host}:{bound}/metrics (Ctrl-C to stop)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()

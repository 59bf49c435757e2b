"""Top-level operator commands: ``balance`` and ``metrics``."""

from __future__ import annotations

import time

import typer
from rich.table import Table

from wxrecon.cli_common import CliError, JsonOpt, Output, bad_input, fen, one_line, settings
from wxrecon.logs import configure_logging
from wxrecon.wechatpay.keys import mask


def balance(
    mchid: str = typer.Option(..., "--mchid", help="Target merchant id."),
    bal_account_no: str = typer.Option(
        ..., "--bal-account-no", help="Quota ledger account number (shown masked)."
    ),
    json_out: JsonOpt = False,
) -> None:
    """Query a quota ledger's channel balance now, from the provider."""
    from wxrecon.provider import build_client
    from wxrecon.wechatpay.errors import InvalidRequest, WeChatPayError
    from wxrecon.wechatpay.keys import CredentialError
    from wxrecon.wechatpay.resources import check_bal_account_no, check_mchid

    try:
        check_mchid(mchid, "--mchid")
        check_bal_account_no(bal_account_no)
    except InvalidRequest as exc:
        raise bad_input(str(exc).replace("bal_account_no", "--bal-account-no")) from None
    s = settings()
    try:
        with build_client(s) as client:
            result = client.query_balance(mchid=mchid, bal_account_no=bal_account_no)
    except (CredentialError, WeChatPayError) as exc:
        raise CliError(one_line(exc)) from None
    out = Output(json_out)
    if json_out:
        out.json(
            {
                "mchid": mchid,
                "bal_account_no": mask(bal_account_no),
                "balance": result.balance,
                "in_transit_reduction_exist": result.in_transit_reduction_exist,
                "request_id": result.request_id,
            }
        )
        return
    t = Table(show_header=False, box=None, padding=(0, 2))
    t.add_row("merchant", mchid)
    t.add_row("ledger", mask(bal_account_no))
    t.add_row("balance", f"[bold]{fen(result.balance)}[/]  ({result.balance} fen)")
    t.add_row(
        "in-transit reductions",
        "[yellow]yes[/]" if result.in_transit_reduction_exist else "none",
    )
    t.add_row("Request-ID", result.request_id or "-")
    out.print(t)


def metrics(
    host: str = typer.Option("127.0.0.1", help="Address to bind."),
    port: int = typer.Option(None, help="Port (default WXRECON_METRICS_PORT)."),
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
    if not once:
        configure_logging(s)
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


def register(app: typer.Typer) -> None:
    from wxrecon import cli_import, cli_stats

    app.command("balance")(balance)
    app.command("metrics")(metrics)
    app.command("stats")(cli_stats.stats)
    app.command("import")(cli_import.import_csv)

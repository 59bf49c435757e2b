"""The ``wxrecon`` command tree: every group and command, registered once."""

from __future__ import annotations

import typer

from wxrecon import __version__
from wxrecon.cli.api import app as api_app
from wxrecon.cli.bill import app as bill_app
from wxrecon.cli.db import app as db_app
from wxrecon.cli.errors import OneLineErrors
from wxrecon.cli.intake import app as intake_app
from wxrecon.cli.ledger import app as ledger_app
from wxrecon.cli.outcomes import app as outcomes_app
from wxrecon.cli.reduction import app as reduction_app
from wxrecon.cli.report import app as report_app
from wxrecon.demo import register as register_demo
from wxrecon.simulator.cli import app as sim_app

app = typer.Typer(
    cls=OneLineErrors,
    help="Reconciliation worker for WeChat Pay APIv3 special reductions and compensation bills.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"wxrecon {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        help="Print the version and exit.",
        is_eager=True,
        callback=_print_version,
    ),
) -> None:
    """Reconciliation worker for WeChat Pay APIv3 special reductions and compensation bills."""


def _register(root: typer.Typer) -> None:
    from wxrecon.cli import csv_import, ops, provider, stats

    root.add_typer(db_app, name="db", help="Database schema.")
    root.add_typer(reduction_app, name="reduction", help="Special reductions.")
    root.add_typer(bill_app, name="bill", help="Compensation bills.")
    root.add_typer(outcomes_app, name="outcomes", help="Outcome events told to the apps.")
    root.add_typer(intake_app, name="intake", help="Orders sent by name not written yet.")
    root.add_typer(ledger_app, name="ledger", help="Ledger balance snapshots and checks.")
    root.add_typer(report_app, name="report", help="Statements.")
    root.command("balance")(provider.balance)
    root.command("metrics")(ops.metrics)
    root.command("stats")(stats.stats)
    root.command("import")(csv_import.import_csv)
    register_demo(root)
    root.add_typer(sim_app, name="sim", help="The provider simulator (development, tests, demo).")
    from wxrecon.web.cli import app as web_app

    root.add_typer(web_app, name="web", help="The web console and admin API, and its tokens.")
    root.add_typer(
        api_app, name="api", help="Call the provider directly; print the verified answer."
    )


# Our own command modules import the engine lazily, inside each command, so that
# ``wxrecon --help`` is fast and one command's trouble never hides the others.
_register(app)

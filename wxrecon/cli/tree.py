"""The ``wxrecon`` command tree: every group and command, registered once.

The groups that need heavy modules most runs never use (the simulator, the demo, the web
console, the direct provider calls) are loaded when named, or for ``--help``
(:class:`LazyRoot`): ``wxrecon import`` of a big file, run by a script, should start in a
fraction of a second, not pay for a web framework first.
"""

from __future__ import annotations

import importlib
from typing import Any

import typer
from typer.core import TyperGroup

from wxrecon import __version__
from wxrecon.cli.bill import app as bill_app
from wxrecon.cli.db import app as db_app
from wxrecon.cli.errors import OneLineErrors
from wxrecon.cli.intake import app as intake_app
from wxrecon.cli.ledger import app as ledger_app
from wxrecon.cli.outcomes import app as outcomes_app
from wxrecon.cli.reduction import app as reduction_app
from wxrecon.cli.report import app as report_app

# name -> (module, attribute: a Typer group or a command function, the group's help)
LAZY: dict[str, tuple[str, str, str | None]] = {
    "demo": ("wxrecon.demo.command", "demo", None),
    "sim": (
        "wxrecon.simulator.cli",
        "app",
        "The provider simulator (development, tests, demo).",
    ),
    "web": ("wxrecon.web.cli", "app", "The web console and admin API, and its tokens."),
    "api": ("wxrecon.cli.api", "app", "Call the provider directly; print the verified answer."),
}
SETTINGS: dict[str, Any] = {
    "no_args_is_help": True,
    "pretty_exceptions_enable": False,
    "add_completion": False,
    "rich_markup_mode": "rich",
}


def load(name: str) -> Any:
    """The lazy entry ``name`` as the click command Typer would have built in the tree."""
    module, attribute, help_text = LAZY[name]
    target = getattr(importlib.import_module(module), attribute)
    holder = typer.Typer(**SETTINGS)
    if not isinstance(target, typer.Typer):
        holder.command(name)(target)
        return typer.main.get_command(holder)  # one command: Typer builds just that
    holder.add_typer(target, name=name, help=help_text)
    group = typer.main.get_command(holder)
    assert isinstance(group, TyperGroup)
    return group.commands[name]


class LazyRoot(OneLineErrors):
    """The root group: the :data:`LAZY` entries are listed always, imported when used."""

    def list_commands(self, ctx: Any) -> list[str]:
        """As Typer lists a tree: commands first, then groups (a lazy entry without a help
        of its own is a command)."""
        names = [*super().list_commands(ctx), *(n for n in LAZY if n not in self.commands)]

        def is_group(name: str) -> bool:
            if name in LAZY:
                return LAZY[name][2] is not None
            return isinstance(self.commands[name], TyperGroup)

        return sorted(names, key=is_group)  # stable: the order within each kept

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name in LAZY and cmd_name not in self.commands:
            self.add_command(load(cmd_name), cmd_name)
        return super().get_command(ctx, cmd_name)

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        if args and args[0] not in self.commands and args[0] not in LAZY:
            for name in LAZY:  # an unknown name: suggest among all of them
                self.get_command(ctx, name)
        return super().resolve_command(ctx, args)


app = typer.Typer(
    cls=LazyRoot,
    help="Reconciliation worker for WeChat Pay APIv3 special reductions and compensation bills.",
    **SETTINGS,
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


# Our own command modules import the engine lazily, inside each command, so that
# ``wxrecon --help`` is fast and one command's trouble never hides the others.
_register(app)

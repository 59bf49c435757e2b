"""``wxrecon``: the operator's command line (Typer + Rich).

Every command takes ``--json``. Errors, whether bad input or a failed operation, are one line
on stderr (a JSON object with ``--json``) and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import typer
from typer.core import TyperGroup

from wxrecon import __version__
from wxrecon.cli_api import app as api_app
from wxrecon.cli_bill import app as bill_app
from wxrecon.cli_common import ABORTS, CLICK_ERRORS, one_line
from wxrecon.cli_db import app as db_app
from wxrecon.cli_ops import register as register_ops
from wxrecon.cli_reduction import app as reduction_app
from wxrecon.demo import register as register_demo
from wxrecon.simulator.cli import app as sim_app


class OneLineErrors(TyperGroup):
    """Runs the command tree and turns every failure into one line and an exit code."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        try:
            rv = super().main(
                argv, prog_name or "wxrecon", complete_var, standalone_mode=False, **extra
            )
        except ABORTS:
            _fail("aborted", 1, argv)
        except CLICK_ERRORS as exc:
            _fail(one_line(exc), getattr(exc, "exit_code", 1), argv)
        except KeyboardInterrupt:
            _fail("interrupted", 130, argv)
        except Exception as exc:  # a bug or an unexpected failure: still one line
            _fail(one_line(exc), 1, argv)
        code = rv if isinstance(rv, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


def _fail(message: str, code: int, argv: Sequence[str]) -> None:
    if "--json" in argv:
        line = json.dumps({"error": message}, ensure_ascii=False)
    else:
        line = f"error: {message}"
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
    sys.exit(code)


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


# Our own command modules import the engine lazily, inside each command, so that
# ``wxrecon --help`` is fast and one command's trouble never hides the others.
app.add_typer(db_app, name="db", help="Database schema.")
app.add_typer(reduction_app, name="reduction", help="Special reductions.")
app.add_typer(bill_app, name="bill", help="Compensation bills.")
register_ops(app)
register_demo(app)
app.add_typer(sim_app, name="sim", help="The provider simulator (development, tests, demo).")
app.add_typer(api_app, name="api", help="Call the provider directly; print the verified answer.")


def main() -> None:
    app()


if __name__ == "__main__":
    main()

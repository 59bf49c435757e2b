"""``wxrecon``: the operator's command line (Typer + Rich).

Every command takes ``--json``. Errors, whether bad input or a failed operation, are one line
on stderr (a JSON object with ``--json``) and a documented exit code, never a traceback
(:mod:`wxrecon.cli.errors`). Values are parsed by one rule each (:mod:`wxrecon.cli.params`)
and printed by one output stack (:mod:`wxrecon.cli.output`). The command tree is built in
:mod:`wxrecon.cli.tree`, on first use: importing a helper module of this package (the demo
uses ``errors`` and ``output``) must not build the tree that registers the demo itself.
"""

from __future__ import annotations

from typing import Any


def main() -> None:
    from wxrecon.cli.tree import app

    app()


def __getattr__(name: str) -> Any:
    if name == "app":  # ``from wxrecon.cli import app``
        from wxrecon.cli.tree import app

        return app
    raise AttributeError(name)

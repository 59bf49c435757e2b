"""``wxrecon demo``: the main job on embedded defaults (see :mod:`wxrecon.demo.run`)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    from wxrecon.demo.command import demo

    app.command("demo")(demo)

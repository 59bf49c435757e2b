"""Transitional: the demo still imports its CLI helpers from here. They live in
:mod:`wxrecon.cli.errors` and :mod:`wxrecon.cli.output` now; drop this module once
``wxrecon/demo/run.py`` imports from there."""

from __future__ import annotations

from wxrecon.cli.errors import CliError, describe
from wxrecon.cli.output import JsonOpt, Output, ago, fen, safe_url, state_text


def one_line(exc: BaseException) -> str:
    """A single, secret-free line describing ``exc``."""
    return describe(exc)[1]


__all__ = ["CliError", "JsonOpt", "Output", "ago", "fen", "one_line", "safe_url", "state_text"]

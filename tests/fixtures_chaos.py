"""Figures of the chaos suite, printed in pytest's terminal summary (visible in CI logs even
without ``-s``). A test appends lines with ``report_figures``."""

from __future__ import annotations

from typing import Any

FIGURES: list[str] = []


def report_figures(line: str) -> None:
    print(line, flush=True)
    FIGURES.append(line)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    if FIGURES:
        terminalreporter.write_sep("=", "chaos and benchmark figures")
        for line in FIGURES:
            terminalreporter.write_line(line)

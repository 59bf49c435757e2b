"""Figures of the chaos suite, printed in pytest's terminal summary (visible in CI logs even
without ``-s``). A test appends lines with ``report_figures``. Under xdist the lines are
recorded in a worker; each worker hands them to the controller when it finishes, which prints
them."""

from __future__ import annotations

from typing import Any

import pytest

FIGURES: list[str] = []
_KEY = "wxrecon_figures"


def report_figures(line: str) -> None:
    print(line, flush=True)
    FIGURES.append(line)


def pytest_sessionfinish(session: pytest.Session) -> None:
    output = getattr(session.config, "workeroutput", None)  # set in an xdist worker only
    if output is not None:
        output[_KEY] = list(FIGURES)


@pytest.hookimpl(optionalhook=True)  # an xdist hook: absent without pytest-xdist
def pytest_testnodedown(node: Any, error: Any) -> None:
    FIGURES.extend(getattr(node, "workeroutput", {}).get(_KEY, []))


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    if FIGURES:
        terminalreporter.write_sep("=", "chaos and benchmark figures")
        for line in FIGURES:
            terminalreporter.write_line(line)

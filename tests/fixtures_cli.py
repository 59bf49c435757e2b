"""Fixtures for the operator CLI: a migrated SQLite database behind ``WXRECON_*``, a runner
that checks the one-line error contract, and a recorder of what would be enqueued."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from click.testing import Result
from sqlalchemy import func, select
from typer.testing import CliRunner

from tests.services import SEALING_ENV
from wxrecon import config
from wxrecon.cli import app, waiting
from wxrecon.store.db import Database


@dataclass
class Cli:
    db: Database
    monkeypatch: pytest.MonkeyPatch
    sent: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    runner: CliRunner = field(default_factory=CliRunner)

    def run(self, *args: str, input: str | None = None) -> Result:
        result = self.runner.invoke(app, list(args), input=input)
        assert "Traceback" not in result.output, result.output
        return result

    def ok(self, *args: str, input: str | None = None) -> Result:
        result = self.run(*args, input=input)
        assert result.exit_code == 0, result.output
        return result

    def fails(self, *args: str, code: int | None = None, input: str | None = None) -> str:
        """Run a command that must fail: non-zero exit and exactly one line on stderr.
        Returns that line."""
        result = self.run(*args, input=input)
        assert result.exit_code != 0, result.output
        if code is not None:
            assert result.exit_code == code, (result.exit_code, result.output)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, result.stderr
        return lines[0]

    def count(self, model: Any) -> int:
        with self.db.read() as session:
            return int(session.execute(select(func.count()).select_from(model)).scalar_one())

    def setenv(self, **values: str) -> None:
        for key, value in values.items():
            self.monkeypatch.setenv(key, value)
        config.get_settings.cache_clear()


def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    keep = ("WXRECON_TEST_", "WXRECON_REQUIRE_SERVICES")
    for key in list(os.environ):
        if key.startswith("WXRECON_") and not key.startswith(keep):
            monkeypatch.delenv(key)
    for key, value in SEALING_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.setenv("COLUMNS", "200")  # wide tables: whole values on one line


@pytest.fixture
def cli(sqlite_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Iterator[Cli]:
    """The CLI on a fresh migrated SQLite database; enqueued tasks are recorded, not sent."""
    _clean_env(monkeypatch)
    monkeypatch.chdir(tmp_path)  # no stray .env, and nothing written to the checkout
    monkeypatch.setenv("WXRECON_DATABASE_URL", sqlite_url)
    config.get_settings.cache_clear()
    db = Database(sqlite_url)
    c = Cli(db=db, monkeypatch=monkeypatch)
    monkeypatch.setattr(waiting, "ENQUEUE", lambda name, kwargs: c.sent.append((name, kwargs)))
    yield c
    db.dispose()
    config.get_settings.cache_clear()

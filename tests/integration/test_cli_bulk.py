"""Issue 20: the import streams in batches, reports every refusal, can be interrupted and run
again (SQLite and PostgreSQL), prints progress lines off a terminal; bulk retry resumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from tests.fixtures_cli import Cli, _clean_env
from tests.integration.test_cli import BAL, HEADER, add_reduction, set_state
from wxrecon import config, intake
from wxrecon.cli import bulk_import, csv_import, progress, waiting
from wxrecon.cli.progress import Stop
from wxrecon.engine.steps import MAX_CHUNK
from wxrecon.store.db import Database
from wxrecon.store.models import Event, SpecialReduction


@pytest.fixture
def cli_any(db_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Cli]:
    """The CLI on a fresh database, once SQLite and once PostgreSQL."""
    _clean_env(monkeypatch)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WXRECON_DATABASE_URL", db_url)
    config.get_settings.cache_clear()
    db = Database(db_url)
    c = Cli(db=db, monkeypatch=monkeypatch)
    monkeypatch.setattr(waiting, "ENQUEUE", lambda name, kwargs: c.sent.append((name, kwargs)))
    yield c
    db.dispose()


def csv_file(tmp_path: Path, n: int, *, bad: set[int] = frozenset(), name: str = "in.csv") -> Path:  # type: ignore[assignment]
    """n rows (row i on line i + 2); rows in ``bad`` have a fractional amount."""
    rows = [
        f"1900000101,{BAL},IMP{i:06d},FINANCIAL_PENALTY,{'1.5' if i in bad else 100 + i},r\n"
        for i in range(n)
    ]
    f = tmp_path / name
    f.write_text(HEADER + "".join(rows))
    return f


def stored(cli: Cli) -> tuple[int, int, int]:
    """(orders, distinct order numbers, intake events)."""
    with cli.db.read() as session:
        n = session.execute(select(func.count()).select_from(SpecialReduction)).scalar_one()
        distinct = session.execute(
            select(func.count(func.distinct(SpecialReduction.out_request_no)))
        ).scalar_one()
        events = session.execute(select(func.count()).select_from(Event)).scalar_one()
    return int(n), int(distinct), int(events)


def sent_ids(cli: Cli) -> list[int]:
    return [i for _, kwargs in cli.sent for i in kwargs["ids"]]


def record_batches(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(rows in the batch, bytes of the file read when it was written), per batch."""
    seen: list[tuple[int, int]] = []
    sources: list[csv_import.Source] = []
    real_init, real_submit = csv_import.Source.__init__, intake.submit_requests

    def init(self: csv_import.Source, raw: Any) -> None:
        real_init(self, raw)
        sources.append(self)

    def submit(session: Any, requests: Any, **kw: Any) -> Any:
        seen.append((len(requests), sources[-1].bytes_read))
        return real_submit(session, requests, **kw)

    monkeypatch.setattr(csv_import.Source, "__init__", init)
    monkeypatch.setattr(intake, "submit_requests", submit)
    return seen


def test_the_file_is_consumed_batch_by_batch(cli: Cli, tmp_path: Path, monkeypatch):
    f = csv_file(tmp_path, 95)
    batches = record_batches(monkeypatch)
    out = json.loads(cli.ok("import", str(f), "--json", "--batch-size", "10").stdout)
    assert out == {"created": 95, "existing": 0, "refused": []}
    assert [n for n, _ in batches] == [10] * 9 + [5]
    size = f.stat().st_size
    read = [b for _, b in batches]
    # each batch is written once its rows are read, not after the whole file
    assert read == sorted(read) and read[0] < size / 5 and read[-2] < size
    assert sorted(sent_ids(cli)) == sorted(set(sent_ids(cli))) and len(sent_ids(cli)) == 95


def test_each_batch_is_sent_as_few_messages_of_one_token(cli_any: Cli, tmp_path: Path):
    """One ``poll_reductions`` message per CHUNK new ids of a batch (not per poll_chunk);
    every id of a message is claimed by the message's token, each batch its own token."""
    cli = cli_any
    f = csv_file(tmp_path, 600)
    cli.ok("import", str(f), "--batch-size", "250")
    assert bulk_import.CHUNK == 100 and bulk_import.CHUNK <= MAX_CHUNK
    assert {name for name, _ in cli.sent} == {"wxrecon.poll_reductions"}
    assert [len(m["ids"]) for _, m in cli.sent] == [100, 100, 50, 100, 100, 50, 100]
    with cli.db.read() as session:
        found = session.execute(select(SpecialReduction.id, SpecialReduction.claim_token))
        claims = {order_id: token for order_id, token in found}
    for _, message in cli.sent:
        assert {claims[i] for i in message["ids"]} == {message["token"]}
    tokens = [m["token"] for _, m in cli.sent]
    assert len(set(tokens)) == 3 and tokens[0] == tokens[2] != tokens[3]
    assert sorted(sent_ids(cli)) == sorted(claims)


@contextmanager
def lookups_by_number() -> Iterator[list[str]]:
    """Every SELECT of orders by their number, on any engine (the command opens its own)."""
    seen: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        text = " ".join(statement.split()).lower()
        if text.startswith("select") and "out_request_no" in text.partition(" from ")[2]:
            seen.append(text)

    event.listen(Engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", before)


def test_a_rerun_looks_stored_rows_up_once_a_batch(cli_any: Cli, tmp_path: Path):
    cli = cli_any
    f = csv_file(tmp_path, 120)
    cli.ok("import", str(f), "--batch-size", "50")
    cli.sent.clear()
    with lookups_by_number() as seen:
        out = json.loads(cli.ok("import", str(f), "--json", "--batch-size", "50").stdout)
    assert out == {"created": 0, "existing": 120, "refused": []}
    assert len(seen) == 3  # one per batch (50, 50, 20), not one per row
    assert cli.sent == [] and stored(cli) == (120, 120, 120)


# Modules an import never needs: the simulator, the demo, the web console, the provider client
# and its HTTP stack (each costs start-up time, which a script importing many files pays).
HEAVY = ("wxrecon.simulator", "wxrecon.demo.", "wxrecon.web", "wxrecon.wechatpay.client", "httpx")


def test_an_import_starts_without_the_heavy_modules(cli: Cli, tmp_path: Path):
    f = csv_file(tmp_path, 3)
    code = (
        "import atexit, sys\n"
        f"heavy = {HEAVY!r}\n"
        "atexit.register(lambda: print('loaded:', sorted(m for m in sys.modules"
        " if m.startswith(heavy))))\n"
        f"sys.argv = ['wxrecon', 'import', {str(f)!r}, '--json']\n"
        "from wxrecon.cli import main\n"
        "main()\n"
    )
    env = {**os.environ, "WXRECON_BROKER_URL": "memory://"}  # the fixture's database, keys
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert json.loads(done.stdout.splitlines()[0]) == {"created": 3, "existing": 0, "refused": []}
    assert done.stdout.splitlines()[-1] == "loaded: []", done.stdout
    # ... and the lazy groups are still there when named.
    for group, inside in (
        ("sim", "serve"),
        ("web", "token"),
        ("api", "query-bill"),
        ("demo", "--orders"),
    ):
        assert inside in cli.ok(group, "--help").stdout


def test_every_refusal_is_reported_and_the_rest_written(cli: Cli, tmp_path: Path):
    bad = set(range(0, 300, 7))
    f = csv_file(tmp_path, 300, bad=bad)
    result = cli.run("import", str(f), "--batch-size", "50")
    assert result.exit_code == 1 and "✓" not in result.output
    refused_file = tmp_path / "in.csv.refused.csv"
    assert str(refused_file) in result.stdout.replace("\n", "")
    lines = refused_file.read_text().splitlines()
    assert lines[0] == "line,error"
    assert [int(x.split(",")[0]) for x in lines[1:]] == sorted(i + 2 for i in bad)
    assert stored(cli)[0] == 300 - len(bad)
    data = json.loads(cli.run("import", str(f), "--json").stdout)
    assert [r["line"] for r in data["refused"]] == sorted(i + 2 for i in bad)
    assert data["existing"] == 300 - len(bad) and data["created"] == 0


def test_refused_file_can_be_named(cli: Cli, tmp_path: Path):
    f = csv_file(tmp_path, 40, bad=set(range(30)))
    target = tmp_path / "elsewhere.csv"
    cli.run("import", str(f), "--refused-file", str(target))
    assert len(target.read_text().splitlines()) == 31


def test_a_conflict_refuses_only_its_row(cli: Cli, tmp_path: Path):
    f = csv_file(tmp_path, 30)
    cli.ok("import", str(f))
    text = f.read_text().replace("IMP000003,FINANCIAL_PENALTY,103", "IMP000003,FINANCIAL_PENALTY,9")
    f.write_text(text)
    data = json.loads(cli.run("import", str(f), "--json", "--batch-size", "8").stdout)
    assert data["existing"] == 29 and [r["line"] for r in data["refused"]] == [5]


@contextmanager
def stop_after(batches: int) -> Iterator[Stop]:
    """A Ctrl-C that arrives while batch number ``batches`` is written."""

    class Late(Stop):
        checks = 0

        def __bool__(self) -> bool:
            Late.checks += 1
            return Late.checks >= batches

    yield Late()


def test_ctrl_c_stops_at_a_batch_boundary_and_a_rerun_is_exact(cli_any: Cli, tmp_path, monkeypatch):
    cli = cli_any
    f = csv_file(tmp_path, 100)
    monkeypatch.setattr(csv_import, "stop_on_interrupt", lambda: stop_after(3))
    line = cli.fails("import", str(f), "--batch-size", "10", code=1)
    assert "interrupted after line 31" in line and "run the same command again" in line
    assert stored(cli)[:2] == (30, 30)
    first_sent = sent_ids(cli)
    monkeypatch.setattr(csv_import, "stop_on_interrupt", progress.stop_on_interrupt)
    out = json.loads(cli.ok("import", str(f), "--json", "--batch-size", "10").stdout)
    assert out == {"created": 70, "existing": 30, "refused": []}
    assert stored(cli) == (100, 100, 100)  # each order once, one intake event each
    ids = sent_ids(cli)
    assert len(ids) == len(set(ids)) == 100 and set(first_sent) <= set(ids)


def test_a_database_that_went_away_keeps_the_batches_before(cli_any: Cli, tmp_path, monkeypatch):
    cli = cli_any
    f = csv_file(tmp_path, 50)
    real = intake.submit_requests
    calls = {"n": 0}

    def flaky(session: Any, requests: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OperationalError("INSERT", {}, Exception("server closed the connection"))
        return real(session, requests, **kw)

    monkeypatch.setattr(intake, "submit_requests", flaky)
    line = cli.fails("import", str(f), "--batch-size", "10", code=1)
    assert "stopped after line 21" in line and "run the same command again" in line
    assert stored(cli)[0] == 20
    monkeypatch.setattr(intake, "submit_requests", real)
    out = json.loads(cli.ok("import", str(f), "--json").stdout)
    assert out == {"created": 30, "existing": 20, "refused": []}
    assert stored(cli) == (50, 50, 50)


def test_progress_lines_when_not_a_terminal(cli: Cli, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(progress, "EVERY", 0.0)
    f = csv_file(tmp_path, 30, bad={4})
    result = cli.run("import", str(f), "--batch-size", "10")
    lines = [s for s in result.stderr.splitlines() if s.startswith("importing:")]
    assert len(lines) >= 3
    assert "30 rows, 1 refused" in lines[-1] and "rows/s" in lines[-1]
    assert "100% done" in lines[-1]


def test_bulk_retry_interrupted_then_resumed(cli: Cli, monkeypatch):
    ids = [add_reduction(cli, f"PENR{i}") for i in range(5)]
    for order_id in ids:
        set_state(cli, SpecialReduction, order_id, "NEEDS_REVIEW")
    original = progress.stop_on_interrupt
    monkeypatch.setattr(progress, "stop_on_interrupt", lambda: stop_after(3))
    args = ("reduction", "retry", "--state", "NEEDS_REVIEW", "--yes", "--why", "bulk")
    line = cli.fails(*args, code=1)
    assert "interrupted after 2 of 5" in line
    with cli.db.read() as session:
        states = [session.get(SpecialReduction, i).state for i in ids]
    assert states.count("NEEDS_REVIEW") == 3
    monkeypatch.setattr(progress, "stop_on_interrupt", original)
    out = json.loads(cli.ok(*args, "--json").stdout)
    assert sorted(out["retried"]) == sorted(ids)[2:]
    with cli.db.read() as session:
        assert all(session.get(SpecialReduction, i).state != "NEEDS_REVIEW" for i in ids)

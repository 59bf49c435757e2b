"""Errors that tell and exit codes scripts can trust (issue 13 §3): ``--wait`` outcomes,
``--timeout`` refusals, import refusals, database errors that say which, settings errors,
a broker that is down. Real SQLite and PostgreSQL, real subprocesses for the broker and the
worker start."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from tests.fixtures_cli import Cli
from tests.fixtures_db import pg_admin
from tests.integration.test_cli import BAL, HEADER, submit_args
from tests.services import SEALING_ENV, unique_name
from wxrecon.cli.csv_import import SHOWN_REFUSALS
from wxrecon.store.models import CompensationBill, Event, SpecialReduction

# -- reduction submit --wait / bill track --wait ----------------------------------------------


def settle_when_written(cli: Cli, model: type, **values: Any) -> threading.Thread:
    """What a worker would do once the row exists: set its outcome."""

    def answer() -> None:
        for _ in range(600):
            with cli.db.transaction() as session:
                if session.execute(update(model).values(**values)).rowcount:
                    return
            time.sleep(0.05)

    thread = threading.Thread(target=answer)
    thread.start()
    return thread


@pytest.mark.parametrize(
    ("outcome", "code", "says"),
    [
        ({"state": "SUCCESS"}, 0, None),
        ({"state": "FAILED", "fail_reason": "BALANCE_NOT_ENOUGH"}, 3, "FAILED: BALANCE_NOT_ENOUGH"),
        (
            {"state": "REJECTED", "last_error": "HTTP 403 NO_AUTH 无权限"},
            3,
            "REJECTED: HTTP 403 NO_AUTH 无权限",
        ),
        ({"state": "NEEDS_REVIEW", "last_error": "attempts spent"}, 5, "needs review"),
    ],
)
def test_submit_wait_exit_code_is_the_outcome(cli: Cli, outcome, code, says) -> None:
    thread = settle_when_written(cli, SpecialReduction, **outcome)
    result = cli.run(*submit_args(), "--wait", "--timeout", "60", "--json")
    thread.join()
    assert result.exit_code == code, result.output
    assert json.loads(result.stdout)["state"] == outcome["state"]  # stdout stays one document
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    if says is None:
        assert errors == []
    else:
        assert len(errors) == 1 and says in json.loads(errors[0])["error"]


def test_bill_track_wait_closed_is_a_final_failure(cli: Cli) -> None:
    thread = settle_when_written(cli, CompensationBill, state="CLOSED", close_reason="NOT_ENOUGH")
    line = cli.fails("bill", "track", "BILL0001", "--wait", "--timeout", "1m", code=3)
    thread.join()
    assert "CLOSED: NOT_ENOUGH" in line


@pytest.mark.parametrize("timeout", ["0", "0s", "-1", "-5s", "soon", "nan"])
def test_timeout_must_be_positive_and_nothing_is_written(cli: Cli, timeout: str) -> None:
    line = cli.fails(*submit_args(), "--wait", "--timeout", timeout, code=2)
    assert "--timeout" in line
    assert cli.count(SpecialReduction) == 0 and cli.count(Event) == 0 and cli.sent == []
    cli.fails("bill", "track", "BILL1", "--timeout", timeout, code=2)
    assert cli.count(CompensationBill) == 0


# -- import: every refused line, and no ✓ on a file with refusals ------------------------------


def test_import_lists_every_refused_line(cli: Cli, tmp_path: Path) -> None:
    f = tmp_path / "in.csv"
    f.write_text(
        HEADER
        + f"1900000101,{BAL},IMP1,FINANCIAL_PENALTY,100,ok\n"
        + f"1900000101,{BAL},IMP2,FINANCIAL_PENALTY,12.50,bad amount\n"
        + f"1900000101,{BAL},IMP-3,FINANCIAL_PENALTY,300,bad number\n"
        + "1900000101,too,few\n"
    )
    result = cli.run("import", str(f))
    assert result.exit_code == 1
    assert "✓" not in result.output
    assert "1 new, 0 already known, 3 refused" in result.stdout
    for line, what in ((3, "amount"), (4, "out_request_no"), (5, "wrong number of fields")):
        assert any(f"line {line}:" in s and what in s for s in result.stdout.splitlines())
    assert BAL not in result.output


def test_import_with_many_refusals_shows_the_first_and_says_where_the_rest_are(
    cli: Cli, tmp_path: Path
) -> None:
    bad = SHOWN_REFUSALS + 7
    f = tmp_path / "in.csv"
    f.write_text(HEADER + "".join(f"1,{BAL},N{i},X,1,r\n" for i in range(bad)))
    result = cli.run("import", str(f))
    assert result.exit_code == 1 and "✓" not in result.output
    shown = [s for s in result.stdout.splitlines() if s.strip().startswith("line ")]
    assert len(shown) == SHOWN_REFUSALS
    assert "and 7 more refused lines" in result.stdout and "--json" in result.stdout
    data = json.loads(cli.run("import", str(f), "--json").stdout)
    assert len(data["refused"]) == bad


# -- database errors say which ---------------------------------------------------------------

READ_ONLY = [
    ["reduction", "list"],
    ["reduction", "show", "1"],
    ["bill", "list"],
    ["stats"],
    ["metrics", "--once"],
]


@pytest.mark.parametrize("args", [*READ_ONLY, submit_args(), ["bill", "track", "B1"]])
def test_a_missing_sqlite_file_is_refused_and_not_created(
    cli: Cli, tmp_path: Path, args: list[str]
) -> None:
    path = tmp_path / "absent" / "wxrecon.db"
    cli.setenv(WXRECON_DATABASE_URL=f"sqlite:///{path}")
    line = cli.fails(*args, code=1)
    assert f"no such database: {path}" in line and "wxrecon db upgrade" in line
    assert not path.exists() and not path.parent.exists()


def test_db_upgrade_still_creates_the_sqlite_file(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "new" / "wxrecon.db"
    cli.setenv(WXRECON_DATABASE_URL=f"sqlite:///{path}")
    cli.ok("db", "upgrade")
    assert path.is_file()
    assert json.loads(cli.ok("reduction", "list", "--json").stdout)["total"] == 0


def test_postgres_that_is_not_listening(cli: Cli, postgres_url: str) -> None:
    cli.setenv(WXRECON_DATABASE_URL="postgresql://postgres@127.0.0.1:1/wxrecon")
    line = cli.fails("reduction", "list", code=1)
    assert "cannot connect to the database server at 127.0.0.1:1" in line


def test_postgres_without_that_database(cli: Cli, postgres_url: str) -> None:
    from sqlalchemy.engine import make_url

    url = make_url(postgres_url).set(database="wxrecon_no_such_db")
    cli.setenv(WXRECON_DATABASE_URL=url.render_as_string(hide_password=False))
    line = cli.fails("stats", code=1)
    assert "no such database 'wxrecon_no_such_db'" in line
    assert f" on {url.host or 'localhost'}:" in line  # and which server


def test_postgres_without_the_schema(cli: Cli, postgres_url: str) -> None:
    from sqlalchemy.engine import make_url

    name = unique_name("wxrecon_cli_empty")
    pg_admin(
        postgres_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", f"CREATE DATABASE {name}"
    )
    try:
        url = make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
        cli.setenv(WXRECON_DATABASE_URL=url)
        for args in (["reduction", "list"], submit_args()):
            assert "run `wxrecon db upgrade`" in cli.fails(*args, code=1)
        assert cli.sent == []
    finally:
        pg_admin(postgres_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_a_missing_driver_names_the_package(cli: Cli) -> None:
    assert importlib.util.find_spec("MySQLdb") is None  # the premise: mysqlclient is absent
    cli.setenv(WXRECON_DATABASE_URL="mysql+mysqldb://u@db.example/wx")
    line = cli.fails("reduction", "list", code=1)
    assert "the database driver is not installed (pip install mysqlclient)" in line


def test_an_unknown_kind_of_database(cli: Cli) -> None:
    cli.setenv(WXRECON_DATABASE_URL="nosuchdb://somewhere/x")
    assert "unknown kind of database 'nosuchdb'" in cli.fails("reduction", "list", code=1)


# -- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("WXRECON_POLL_SCHEDULE", "banana", "WXRECON_POLL_SCHEDULE: not a duration: 'banana'"),
        ("WXRECON_LOG_LEVEL", "loud", "WXRECON_LOG_LEVEL: 'loud' is not a log level"),
        ("WXRECON_SWEEP_INTERVAL", "nan", "WXRECON_SWEEP_INTERVAL: not a duration"),
        ("WXRECON_CLAIM_LEASE", "5", "WXRECON_CLAIM_LEASE (5s) must be longer than the task"),
        ("WXRECON_REENTRY_WINDOW_DAYS", "40", "WXRECON_REENTRY_WINDOW_DAYS: Input should be less"),
        ("WXRECON_METRICS_PORT", "99999", "WXRECON_METRICS_PORT"),
    ],
)
def test_an_invalid_setting_is_one_line(cli: Cli, name: str, value: str, says: str) -> None:
    cli.setenv(**{name: value})
    for args in (["reduction", "list"], submit_args()):
        line = cli.fails(*args, code=1)
        assert line.startswith("error: configuration: ") and says in line
    assert cli.count(SpecialReduction) == 0


# -- subprocesses: the real entry points ------------------------------------------------------


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WXRECON_")}
    clean.update(SEALING_ENV)
    return subprocess.run(
        args, cwd=cwd, env={**clean, **env}, capture_output=True, text=True, timeout=120
    )


def test_broker_down_during_submit_keeps_the_row(sqlite_url: str, tmp_path: Path) -> None:
    env = {"WXRECON_DATABASE_URL": sqlite_url, "WXRECON_BROKER_URL": "redis://127.0.0.1:1/0"}
    done = run([sys.executable, "-m", "wxrecon.cli", *submit_args(), "--json"], tmp_path, **env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["state"] == "RECEIVED"
    (warning,) = done.stderr.splitlines()
    assert "will be swept" in json.loads(warning)["warning"] and "Traceback" not in done.stderr
    from wxrecon.store.db import Database

    db = Database(sqlite_url)
    with db.read() as session:
        assert session.execute(select(SpecialReduction.state)).scalars().all() == ["RECEIVED"]
    db.dispose()


CELERY = str(Path(sys.executable).with_name("celery"))


@pytest.mark.parametrize(
    ("name", "value"), [("WXRECON_POLL_SCHEDULE", "banana"), ("WXRECON_CLAIM_LEASE", "5")]
)
def test_worker_start_with_an_invalid_setting_is_one_line(
    tmp_path: Path, name: str, value: str
) -> None:
    done = run([CELERY, "-A", "wxrecon.worker", "worker"], tmp_path, **{name: value})
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and name in lines[0]

"""End to end: the simulator, a Celery worker, Celery beat with a short ledger snapshot
interval, Redis and PostgreSQL. A reduction settles (explained: no discrepancy); then a ¥3.00
debit outside any order is flagged as an unexplained debit by the first snapshot after it
(within one snapshot interval), and a top-up as an unexplained credit."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import select

from tests.fixtures_e2e import Processes
from tests.fixtures_sim import make_sim_dir, sim_material, start_sim_process
from wxrecon.simulator import LedgerSeed, SimulatorProcess
from wxrecon.store import ledgers
from wxrecon.store.db import Database
from wxrecon.store.models import LedgerDiscrepancy, LedgerSnapshot, Outcome, SpecialReduction
from wxrecon.store.sealed import generate_key
from wxrecon.worker import INTAKE_QUEUE

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(240)]

MCHID = "1900000101"
LEDGER = "6222010100001111"
START = 100_000
INTERVAL = "1s"
WAIT = 90.0


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[SimulatorProcess]:
    sim_material()
    directory = make_sim_dir(tmp_path / "sim", ledgers=[LedgerSeed(MCHID, LEDGER, START)])
    process = start_sim_process(directory)
    try:
        yield process
    finally:
        process.stop()


def until(what: str, probe: Callable[[], Any], processes: Processes) -> Any:
    deadline = time.monotonic() + WAIT
    while True:
        processes.check_alive()
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached\n{processes.logs()}")
        time.sleep(0.2)


def test_external_debit_and_top_up_are_flagged(
    tmp_path: Path, pg_url: str, broker_url: str, processes: Processes, sim: SimulatorProcess
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WXRECON_")}
    env.update(sim.client_env())
    env.update(
        {
            "WXRECON_DATABASE_URL": pg_url,
            "WXRECON_BROKER_URL": broker_url,
            "WXRECON_DATA_DIR": str(work / "data"),
            "WXRECON_POLL_SCHEDULE": "200ms,400ms",
            "WXRECON_SWEEP_INTERVAL": "0.5",
            "WXRECON_LEDGER_SNAPSHOT_INTERVAL": INTERVAL,
            "WXRECON_DATA_KEYS": f"k1:{generate_key()}",
            "WXRECON_LOOKUP_KEY": generate_key(),
            "WXRECON_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }
    )
    celery = [sys.executable, "-m", "celery", "-A", "wxrecon.worker"]
    worker = [*celery, "worker", "-c", "2", "-n", "e2e-ledger@%h", "--without-gossip"]
    processes.start("worker", [*worker, "--without-mingle", "-l", "INFO"], env, work)
    processes.start("beat", [*celery, "beat", "-l", "INFO"], env, work)

    app = Celery("business-app", broker=broker_url)
    app.conf.update(task_serializer="json", accept_content=["json"])
    app.send_task(
        "wxrecon.submit_special_reduction",
        kwargs={
            "mchid": MCHID,
            "bal_account_no": LEDGER,
            "out_request_no": "LEDGER0001",
            "reduction_type": "FINANCIAL_PENALTY",
            "amount": 500,
        },
        queue=INTAKE_QUEUE,
    )
    db = Database(pg_url)

    def snaps() -> list[LedgerSnapshot]:
        with db.read() as s:
            return list(s.execute(select(LedgerSnapshot).order_by(LedgerSnapshot.id)).scalars())

    def found() -> list[LedgerDiscrepancy]:
        with db.read() as s:
            return list(
                s.execute(select(LedgerDiscrepancy).order_by(LedgerDiscrepancy.id)).scalars()
            )

    def state() -> str | None:
        with db.read() as s:
            return s.execute(select(SpecialReduction.state)).scalar()

    until("the reduction succeeds", lambda: state() == "SUCCESS", processes)
    # Two check points after it settled: the reduction explained its 500 fen.
    until(
        "two snapshots after the reduction",
        lambda: sum(1 for x in snaps() if x.balance == START - 500 and x.in_transit is False) >= 2,
        processes,
    )
    assert found() == []

    def first_seeing(balance: int) -> int:
        return next(x.id for x in snaps() if x.balance == balance)

    with sim.admin() as admin:
        admin.adjust_ledger(MCHID, LEDGER, -300)  # ¥3.00 leaves outside any order
    [debit] = until("the debit is flagged", found, processes)
    # Flagged by the first snapshot that sees it: within one snapshot interval.
    assert debit.end_snapshot_id == first_seeing(START - 800)
    assert (debit.kind, debit.amount, debit.observed, debit.explained) == (
        "unexplained_debit",
        300,
        -300,
        0,
    )

    with sim.admin() as admin:
        admin.adjust_ledger(MCHID, LEDGER, 2_000)  # a top-up
    credits = until("the top-up is flagged", lambda: found()[1:], processes)
    assert credits[0].end_snapshot_id == first_seeing(START - 800 + 2_000)
    assert (credits[0].kind, credits[0].amount) == ("unexplained_credit", 2_000)

    with db.read() as s:
        events = [
            json.loads(o.payload)
            for o in s.execute(select(Outcome).where(Outcome.kind == "ledger")).scalars()
        ]
    assert [(e["type"], e["amount"]) for e in events] == [
        ("ledger.unexplained_debit", 300),
        ("ledger.unexplained_credit", 2_000),
    ]
    assert ledgers.unexplained_debit_totals(db)[0][2] == 300
    assert all(LEDGER not in x.ledger_sealed for x in snaps())
    db.dispose()

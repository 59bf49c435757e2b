"""No order sent by name is lost when workers die.

Two workers are SIGKILLed (the whole process group: main process, pool, intake pump) one
after the other every second while a business app sends 600 reductions by name at 40 a
second. kombu's own Redis consumer loses a message whenever a kill lands between its BRPOP
and its unacknowledged bookkeeping (a plain Celery app with trivial tasks lost 6 of 1,200 in 20
kills here); wxrecon's intake pump must not lose one: every order sent ends with exactly one
row. With the pump switched off this test lost orders in 1 of 4 runs (a busy machine; wxrecon's
intake tasks keep a worker busy, so its BRPOP is outstanding less often than in the plain app):
the deterministic proofs of each crash point are in tests/integration/test_inbox.py.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import func, select

from tests.fixtures_chaos import report_figures
from tests.fixtures_e2e import Processes
from tests.fixtures_sim import SIM_BAL_ACCOUNT_NO, SIM_MCHID, make_sim_dir, start_sim_process
from wxrecon.store.db import Database
from wxrecon.store.models import SpecialReduction
from wxrecon.worker import INTAKE_QUEUE

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(300)]

ORDERS = 600
BATCH = 4  # per SEND_EVERY: 40 a second
SEND_EVERY = 0.1
KILL_EVERY = 1.0
ROWS_WITHIN = 120.0  # a dead pump's messages come back once its liveness key expires


def test_no_order_sent_by_name_is_lost_when_workers_are_killed(
    tmp_path: Path, pg_url: str, broker_url: str, processes: Processes
) -> None:
    sim = start_sim_process(make_sim_dir(tmp_path / "sim"))
    try:
        work = tmp_path / "work"
        work.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("WXRECON_")}
        env.update(sim.client_env())
        env.update(
            {
                "WXRECON_DATABASE_URL": pg_url,
                "WXRECON_BROKER_URL": broker_url,
                "WXRECON_DATA_DIR": str(work / "data"),
                "WXRECON_CLAIM_LEASE": "20",
                "PYTHONUNBUFFERED": "1",
            }
        )
        starts = {"w0": 0, "w1": 0}

        def start(node: str) -> str:
            starts[node] += 1
            name = f"{node}.{starts[node]}"
            processes.start(
                name,
                [
                    *(sys.executable, "-m", "celery", "-A", "wxrecon.worker", "worker"),
                    *("-c", "1", "-P", "prefork", "-n", f"{node}@%h"),
                    *("--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "INFO"),
                ],
                env,
                work,
            )
            return name

        alive = {node: start(node) for node in starts}
        ready_by = time.monotonic() + 60
        while not all(" ready." in (work / f"{n}.log").read_text() for n in alive.values()):
            processes.check_alive()
            assert time.monotonic() < ready_by, processes.logs()
            time.sleep(0.2)

        app = Celery("business-app", broker=broker_url)
        app.conf.update(task_serializer="json", accept_content=["json"])
        numbers = [f"KILLS{i:04d}" for i in range(ORDERS)]
        next_kill, kills = time.monotonic() + KILL_EVERY, 0
        for i in range(0, ORDERS, BATCH):
            for number in numbers[i : i + BATCH]:
                kwargs = {
                    "mchid": SIM_MCHID,
                    "bal_account_no": SIM_BAL_ACCOUNT_NO,
                    "out_request_no": number,
                    "reduction_type": "FINANCIAL_PENALTY",
                    "amount": 1,
                }
                app.send_task("wxrecon.submit_special_reduction", kwargs=kwargs, queue=INTAKE_QUEUE)
            if time.monotonic() >= next_kill:
                node = sorted(starts)[kills % 2]
                processes.kill9(alive[node])
                alive[node] = start(node)
                kills += 1
                next_kill += KILL_EVERY
            time.sleep(SEND_EVERY)
        app.close()

        db = Database(pg_url)
        try:
            deadline = time.monotonic() + ROWS_WITHIN
            while True:
                with db.read() as session:
                    count = session.scalar(select(func.count()).select_from(SpecialReduction))
                if count == ORDERS or time.monotonic() > deadline:
                    break
                processes.check_alive()
                time.sleep(0.5)
            with db.read() as session:
                stored = list(session.scalars(select(SpecialReduction.out_request_no)))
        finally:
            db.dispose()
        missing = sorted(set(numbers) - set(stored))
        assert not missing, f"{len(missing)} orders sent by name were lost: {missing[:10]}"
        assert sorted(stored) == numbers  # each exactly once
        assert kills >= 10
        logs = "".join(p.read_text(errors="replace") for p in work.glob("w*.log"))
        recovered = logs.count("of a stopped pump put back")
        report_figures(
            f"intake under kills: {ORDERS} sent by name, {kills} worker SIGKILLs, every order "
            f"stored once; recoveries of a dead pump's messages: {recovered}"
        )
    finally:
        sim.stop()

"""End to end with two caller identities: the simulator (an ordinary and a platform merchant,
like the provider refusing each the other's endpoints with 403 NO_AUTH), a Celery worker,
beat, Redis and PostgreSQL, configured from the client.env `sim init` writes.

Reductions are signed by the ordinary merchant and bills by the platform one. The proof
that routing matters: the same bill queried with the reduction merchant's keys is refused
NO_AUTH; tracked through wxrecon it settles, and no NO_AUTH was ever answered to it.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import select

from tests.fixtures_e2e import Processes
from tests.fixtures_sim import (
    SIM_BAL_ACCOUNT_NO,
    SIM_MCHID,
    SIM_SP_MCHID,
    make_sim_client,
    make_sim_dir,
    start_sim_process,
)
from wxrecon.store.db import Database
from wxrecon.store.models import CompensationBill, SpecialReduction
from wxrecon.wechatpay import errors
from wxrecon.worker import INTAKE_QUEUE

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(300)]

BILLS = [f"CALLBILL{i}" for i in range(4)]
REDUCTIONS = [f"CALLRED{i}" for i in range(3)]
SETTLE_TIMEOUT = 120.0


def test_bills_go_to_the_platform_merchant_and_reductions_to_the_ordinary_one(
    tmp_path: Path, pg_url: str, broker_url: str, processes: Processes
) -> None:
    directory = make_sim_dir(tmp_path / "sim", roles=True)
    process = start_sim_process(directory)
    try:
        with process.admin() as admin:
            for number in BILLS:
                admin.seed_bill(number, 250, "SUCCESS")
        # The bill signed by the reduction merchant would fail: the provider's NO_AUTH.
        with make_sim_client(process, attempts=1) as ordinary:
            with pytest.raises(errors.Rejected) as info:
                ordinary.query_compensation_bill(BILLS[0])
            assert info.value.code == "NO_AUTH"
        with process.admin() as admin:
            refused_before = admin.stats()["requests"]["query_bill"].get("403", 0)
        assert refused_before == 1

        work = tmp_path / "work"
        work.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("WXRECON_")}
        env.update(process.client_env())  # two identities: a callers file, bills -> platform
        assert env["WXRECON_BILL_CALLER"] == "platform"
        env.update(
            {
                "WXRECON_DATABASE_URL": pg_url,
                "WXRECON_BROKER_URL": broker_url,
                "WXRECON_DATA_DIR": str(work / "data"),
                "WXRECON_POLL_SCHEDULE": "200ms,400ms",
                "WXRECON_POLL_JITTER": "0",
                "WXRECON_SWEEP_INTERVAL": "0.5",
                "WXRECON_CLAIM_LEASE": "20",
                "WXRECON_HTTP_RETRIES": "2",
                "PYTHONUNBUFFERED": "1",
            }
        )
        celery = [sys.executable, "-m", "celery", "-A", "wxrecon.worker"]
        processes.start(
            "worker",
            [
                *celery,
                "worker",
                "-c",
                "1",
                "-P",
                "solo",
                "-n",
                "e2e-callers@%h",
                "--without-gossip",
                "--without-mingle",
                "-l",
                "INFO",
            ],
            env,
            work,
        )
        processes.start("beat", [*celery, "beat", "-l", "INFO"], env, work)

        app = Celery("business-app", broker=broker_url)
        app.conf.update(task_serializer="json", accept_content=["json"])
        for number in BILLS:  # no caller named: WXRECON_BILL_CALLER routes them
            app.send_task(
                "wxrecon.track_compensation_bill",
                kwargs={"out_bill_no": number},
                queue=INTAKE_QUEUE,
            )
        for number in REDUCTIONS:
            kwargs = {
                "mchid": SIM_MCHID,
                "bal_account_no": SIM_BAL_ACCOUNT_NO,
                "out_request_no": number,
                "reduction_type": "FINANCIAL_PENALTY",
                "amount": 100,
            }
            app.send_task("wxrecon.submit_special_reduction", kwargs=kwargs, queue=INTAKE_QUEUE)

        db = Database(pg_url)
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while True:
            processes.check_alive()
            with db.read() as session:
                bills = list(session.execute(select(CompensationBill)).scalars())
                reductions = list(session.execute(select(SpecialReduction)).scalars())
            if (
                len(bills) == len(BILLS)
                and len(reductions) == len(REDUCTIONS)
                and all(b.state == "SUCCESS" for b in bills)
                and all(r.state == "SUCCESS" for r in reductions)
            ):
                break
            states = sorted(b.state for b in bills), sorted(r.state for r in reductions)
            assert time.monotonic() < deadline, f"not settled: {states}\n{processes.logs()}"
            time.sleep(0.3)
        db.dispose()

        assert {b.caller for b in bills} == {"platform"}
        assert {b.sp_mchid for b in bills} == {SIM_SP_MCHID}
        assert {r.caller for r in reductions} == {"default"}
        with process.admin() as admin:
            requests = admin.stats()["requests"]
        # Not one more NO_AUTH: every bill query wxrecon sent was the platform merchant's.
        assert requests["query_bill"].get("403", 0) == refused_before
        assert requests["submit_reduction"].get("403", 0) == 0
        assert "NO_AUTH" not in processes.logs()
    finally:
        process.stop()

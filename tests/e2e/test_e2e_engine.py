"""End to end with real processes: the simulator, a Celery worker with two processes, Celery
beat, a Redis broker and PostgreSQL, with the simulator's faults switched on.

300 special reductions over 3 target merchants (some beyond their balance, some beyond it
from the start), sent by name like a business app that does not import wxrecon, plus some
through the Python helper, some twice, one conflicting and one invalid; 20 compensation
bills. Every order must reach the state the simulator's ground truth holds, each applied at
most once, and every submit of one out_request_no must have carried the same parameters.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import select

from tests.fixtures_e2e import Processes
from tests.fixtures_sim import make_sim_dir, sim_material, start_sim_process
from tests.workload import FAULTS, Order, all_in, make_orders, order_states
from wxrecon import intake
from wxrecon.domain.states import BILL_TERMINAL, REDUCTION_TERMINAL
from wxrecon.simulator import LedgerSeed, SimulatorProcess
from wxrecon.store.db import Database
from wxrecon.store.models import CompensationBill, SpecialReduction
from wxrecon.worker import INTAKE_QUEUE

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(420)]

MERCHANTS = ["1900000101", "1900000102", "1900000103"]
PER_MERCHANT = 100
HELPER_EVERY = 10  # every 10th order goes through the Python helper instead of send_task
TOO_BIG_PER_MERCHANT = 4  # beyond the whole balance: 403 NOT_ENOUGH at submit
BILLS = 20
SETTLE_TIMEOUT = 180.0


def account(mchid: str) -> str:
    return f"6222{mchid[-4:]}00001111"


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[tuple[SimulatorProcess, list[Order], dict[str, int]]]:
    orders, balances = make_orders(
        random.Random(20260105),
        prefix="E2E",
        merchants=MERCHANTS,
        account=account,
        per_merchant=PER_MERCHANT,
        too_big=TOO_BIG_PER_MERCHANT,
        max_amount=10000,
        fits_tenths=6,
    )
    seeds = [LedgerSeed(m, account(m), balances[m]) for m in MERCHANTS]
    sim_material()  # keys made once per session
    directory = make_sim_dir(tmp_path / "sim", ledgers=seeds)
    process = start_sim_process(directory, *(f"--fault={f}" for f in FAULTS), "--hang", "1500ms")
    try:
        yield process, orders, balances
    finally:
        process.stop()


def test_engine_end_to_end(
    tmp_path: Path,
    pg_url: str,
    broker_url: str,
    processes: Processes,
    sim: tuple[SimulatorProcess, list[Order], dict[str, int]],
) -> None:
    process, orders, balances = sim
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WXRECON_")}
    env.update(process.client_env())
    env.update(
        {
            "WXRECON_DATABASE_URL": pg_url,
            "WXRECON_BROKER_URL": broker_url,
            "WXRECON_DATA_DIR": str(work / "data"),
            "WXRECON_POLL_SCHEDULE": "200ms,400ms,800ms,1500ms",
            "WXRECON_POLL_JITTER": "0.2",
            "WXRECON_POLL_MAX_ATTEMPTS": "400",
            "WXRECON_SWEEP_INTERVAL": "0.5",
            "WXRECON_CLAIM_LEASE": "20",
            "WXRECON_REENTRY_GRACE": "1s",
            "WXRECON_HTTP_READ_TIMEOUT": "1",
            "WXRECON_HTTP_CONNECT_TIMEOUT": "1",
            "WXRECON_HTTP_RETRIES": "2",
            "WXRECON_LOG_LEVEL": "INFO",
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
            "2",
            "-P",
            "prefork",
            "-n",
            "e2e-engine@%h",
            "--without-gossip",
            "--without-mingle",
            "-l",
            "INFO",
        ],
        env,
        work,
    )
    processes.start("beat", [*celery, "beat", "-l", "INFO"], env, work)

    ready = time.monotonic() + 30
    while len(processes.children("worker")) < 2:  # the pool is up
        processes.check_alive()
        assert time.monotonic() < ready, f"worker pool did not start\n{processes.logs()}"
        time.sleep(0.2)

    # A business app that does not import wxrecon: send_task by name, JSON kwargs.
    app = Celery("business-app", broker=broker_url)
    app.conf.update(task_serializer="json", accept_content=["json"])
    db = Database(pg_url)

    def send(order: Order) -> None:
        app.send_task("wxrecon.submit_special_reduction", kwargs=order.kwargs(), queue=INTAKE_QUEUE)

    def enqueue(name: str, kwargs: dict[str, Any]) -> None:
        app.send_task(name, kwargs=kwargs, queue=INTAKE_QUEUE)

    killed = False
    for i, order in enumerate(orders):
        if i == len(orders) // 2:
            # A pool process dies mid-work (OOM, kill -9): its message is requeued, its
            # claim expires, and nothing is lost or applied twice.
            time.sleep(1.0)
            pool = processes.children("worker")
            if pool:
                os.kill(pool[0], signal.SIGKILL)  # a child of the worker this test started
                killed = True
        if i % HELPER_EVERY == 0:
            with db.transaction() as session:
                intake.submit_reduction(session, **order.kwargs(), enqueue=enqueue)
        else:
            send(order)
    for order in orders[:30]:  # duplicates: the same order again
        send(order)
    conflicting = orders[1]
    app.send_task(
        "wxrecon.submit_special_reduction",
        kwargs={**conflicting.kwargs(), "amount": conflicting.amount + 1},
        queue=INTAKE_QUEUE,
    )
    app.send_task(  # invalid: amount as a string; refused, nothing written, not retried
        "wxrecon.submit_special_reduction",
        kwargs={**orders[2].kwargs(), "out_request_no": "E2EINVALID", "amount": "12"},
        queue=INTAKE_QUEUE,
    )

    outcomes = ["SUCCESS", "CLOSED", "CANCELLED", "SUCCESS"]
    with process.admin() as admin:
        for b in range(BILLS):
            admin.seed_bill(
                f"E2EBILL{b:03d}",
                1000 + b,
                outcomes[b % len(outcomes)],
                confirm_after=0.2 + 0.05 * b,
                final_after=0.6 + 0.1 * b,
                **({"close_reason": "USER_REJECTED"} if outcomes[b % 4] == "CLOSED" else {}),
            )
    for b in range(BILLS):
        app.send_task(
            "wxrecon.track_compensation_bill",
            kwargs={"out_bill_no": f"E2EBILL{b:03d}"},
            queue=INTAKE_QUEUE,
        )

    # Wait until every order is final in the database.
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        processes.check_alive()
        reductions, bills = order_states(db)
        # Out of flight (final, or waiting for a person): the ground-truth checks follow.
        terminal = (REDUCTION_TERMINAL, BILL_TERMINAL)
        if all_in((reductions, bills), len(orders), BILLS, terminal):
            break
        if time.monotonic() > deadline:
            raise AssertionError(
                f"not settled: reductions {reductions}, bills {bills}\n{processes.logs()}"
            )
        time.sleep(0.5)

    with db.read() as session:
        rows = list(session.execute(select(SpecialReduction)).scalars())
        bill_rows = list(session.execute(select(CompensationBill)).scalars())
    db.dispose()
    with process.admin() as admin:
        truth = {(t["mchid"], t["out_request_no"]): t for t in admin.reductions()}
        bill_truth = {b["out_bill_no"]: b for b in admin.bills()}
        final_balances = {m: admin.balance(m, account(m)) for m in MERCHANTS}
        sim_stats = admin.stats()

    # Exactly the orders sent; the conflicting resend changed nothing; the invalid one is absent.
    by_key = {(r.mchid, r.out_request_no): r for r in rows}
    assert set(by_key) == {(o.mchid, o.out_request_no) for o in orders}
    assert by_key[(conflicting.mchid, conflicting.out_request_no)].amount == conflicting.amount

    # Every order reached the provider's ground-truth state, with its fail_reason.
    wrong = [
        (key, r.state, truth.get(key, {}).get("state"))
        for key, r in by_key.items()
        if key not in truth
        or r.state != truth[key]["state"]
        or r.fail_reason != truth[key]["fail_reason"]
    ]
    assert not wrong, f"{len(wrong)} orders disagree with the provider: {wrong[:10]}"
    # Applied at most once, and every submit for one out_request_no had the same parameters.
    assert all(t["applied_count"] <= 1 for t in truth.values())
    assert sum(t["mismatched_param_submits"] for t in truth.values()) == 0
    # Some of each outcome happened, including closed-at-submit NOT_ENOUGH.
    states = Counter(r.state for r in rows)
    assert states["SUCCESS"] > 0 and states["FAILED"] > 0, states
    assert (
        sum(1 for t in truth.values() if t["closed_at_submit"])
        >= len(MERCHANTS) * TOO_BIG_PER_MERCHANT
    )
    # The money: each ledger went down by exactly what we recorded as SUCCESS.
    for mchid in MERCHANTS:
        applied = sum(r.amount for r in rows if r.mchid == mchid and r.state == "SUCCESS")
        assert final_balances[mchid] == balances[mchid] - applied

    # Bills: every one in its final provider state, close_info recorded.
    assert {b.out_bill_no: b.state for b in bill_rows} == {
        k: v["state"] for k, v in bill_truth.items()
    }
    for bill_row in bill_rows:
        truth_bill = bill_truth[bill_row.out_bill_no]
        expected = truth_bill["close_reason"] if bill_row.state == "CLOSED" else None
        assert bill_row.close_reason == expected
    # The faults really fired, and some orders were re-entered (same parameters, see above).
    faults = sim_stats["faults"]
    assert sim_stats["faults_total"] >= 20, faults
    assert any(k.startswith("apply_then") for k in faults), faults
    assert any(t["submit_count"] > 1 for t in truth.values())
    assert killed, "no pool process was found to kill"
    print(
        f"e2e: {dict(states)}; bills {Counter(b.state for b in bill_rows)}; "
        f"requests {sim_stats['requests_total']}; faults {faults}"
    )

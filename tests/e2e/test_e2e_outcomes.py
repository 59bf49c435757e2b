"""Outcome delivery end to end with real processes: the simulator (faults on), wxrecon's
worker, beat and relay worker, PostgreSQL and Redis; a second Celery app that does not import
wxrecon consuming the outcome task; and a webhook receiver process that verifies signatures
and answers 500 to every tenth delivery.

Every terminal order's final event, and every refused intake, must reach both receivers at
least once; deduplicated by event_id, each receiver sees each exactly once, and every event
the outbox holds is delivered.
"""

from __future__ import annotations

import json
import os
import random
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
from wxrecon.demo.env import free_port
from wxrecon.domain.states import BILL_TERMINAL, REDUCTION_TERMINAL
from wxrecon.simulator import LedgerSeed, SimulatorProcess
from wxrecon.store.db import Database
from wxrecon.store.models import CompensationBill, Outcome, SpecialReduction
from wxrecon.worker import INTAKE_QUEUE

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(420)]

MERCHANTS = ["1900000201", "1900000202"]
PER_MERCHANT = 30
BILLS = 8
SETTLE_TIMEOUT = 180.0
SECRET = "e2e-webhook-secret-0123456789"
OUTCOME_QUEUE = "billing.outcomes"

# The business app: a plain Celery app that knows only the task name and its queue.
BILLING_APP = """
import json, os, sys
from celery import Celery

app = Celery("billing", broker=os.environ["BILLING_BROKER"])
app.conf.update(accept_content=["json"], task_acks_late=True, worker_hijack_root_logger=False)


@app.task(name="billing.on_wxrecon_outcome")
def on_wxrecon_outcome(**event):
    imported = any(m == "wxrecon" or m.startswith("wxrecon.") for m in sys.modules)
    with open(os.environ["BILLING_LOG"], "a") as out:
        out.write(json.dumps({"event": event, "wxrecon_imported": imported}) + "\\n")
"""


def account(mchid: str) -> str:
    return f"6222{mchid[-4:]}00002222"


def read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[tuple[SimulatorProcess, list[Order]]]:
    orders, balances = make_orders(
        random.Random(20260109),
        prefix="OUT",
        merchants=MERCHANTS,
        account=account,
        per_merchant=PER_MERCHANT,
        too_big=2,
        max_amount=10000,
        fits_tenths=6,
    )
    seeds = [LedgerSeed(m, account(m), balances[m]) for m in MERCHANTS]
    sim_material()
    directory = make_sim_dir(tmp_path / "sim", ledgers=seeds)
    process = start_sim_process(directory, *(f"--fault={f}" for f in FAULTS))
    try:
        yield process, orders
    finally:
        process.stop()


def test_outcomes_reach_a_task_app_and_a_webhook_receiver(
    tmp_path: Path,
    pg_url: str,
    broker_url: str,
    processes: Processes,
    sim: tuple[SimulatorProcess, list[Order]],
) -> None:
    process, orders = sim
    work = tmp_path / "work"
    work.mkdir()
    port = free_port()
    hooks_log, billing_log = work / "webhook.jsonl", work / "billing.jsonl"
    base = {k: v for k, v in os.environ.items() if not k.startswith("WXRECON_")}
    base["PYTHONUNBUFFERED"] = "1"

    # The receivers first: a webhook process and the business app's own worker.
    receiver = Path(__file__).parent.parent / "webhook_receiver.py"
    processes.start(
        "webhook",
        [sys.executable, str(receiver), str(port), SECRET, str(hooks_log), "10"],
        base,
        work,
    )
    billing_dir = tmp_path / "billing"
    billing_dir.mkdir()
    (billing_dir / "billing_app.py").write_text(BILLING_APP)
    billing_env = {**base, "BILLING_BROKER": broker_url, "BILLING_LOG": str(billing_log)}
    processes.start(
        "billing",
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "billing_app",
            "worker",
            "-Q",
            OUTCOME_QUEUE,
            "-c",
            "1",
            "-n",
            "billing@%h",
            "--without-gossip",
            "--without-mingle",
        ],
        billing_env,
        billing_dir,
    )

    env = {**base, **process.client_env()}
    env.update(
        {
            "WXRECON_DATABASE_URL": pg_url,
            "WXRECON_BROKER_URL": broker_url,
            "WXRECON_DATA_DIR": str(work / "data"),
            "WXRECON_POLL_SCHEDULE": "200ms,400ms,800ms",
            "WXRECON_POLL_MAX_ATTEMPTS": "400",
            "WXRECON_SWEEP_INTERVAL": "0.5",
            "WXRECON_CLAIM_LEASE": "20",
            "WXRECON_REENTRY_GRACE": "1s",
            "WXRECON_HTTP_READ_TIMEOUT": "1",
            "WXRECON_HTTP_RETRIES": "2",
            "WXRECON_OUTCOME_TASK": "billing.on_wxrecon_outcome",
            "WXRECON_OUTCOME_QUEUE": OUTCOME_QUEUE,
            "WXRECON_WEBHOOK_URL": f"http://127.0.0.1:{port}/hooks/wxrecon",
            "WXRECON_WEBHOOK_SECRET": SECRET,
            "WXRECON_WEBHOOK_TIMEOUT": "2",
            "WXRECON_OUTCOME_RETRY_SCHEDULE": "200ms,500ms",
            "WXRECON_OUTCOME_RELAY_INTERVAL": "0.5",
        }
    )
    celery = [sys.executable, "-m", "celery", "-A", "wxrecon.worker"]
    quiet = ["--without-gossip", "--without-mingle", "-l", "INFO"]
    processes.start("worker", [*celery, "worker", "-c", "2", "-n", "engine@%h", *quiet], env, work)
    processes.start(
        "relay",
        [*celery, "worker", "-Q", "wxrecon.outcomes", "-c", "1", "-n", "relay@%h", *quiet],
        env,
        work,
    )
    processes.start("beat", [*celery, "beat", "-l", "INFO"], env, work)

    app = Celery("business-app", broker=broker_url)
    app.conf.update(task_serializer="json", accept_content=["json"])
    for order in orders:
        app.send_task("wxrecon.submit_special_reduction", kwargs=order.kwargs(), queue=INTAKE_QUEUE)
    conflicting = orders[1]
    app.send_task(
        "wxrecon.submit_special_reduction",
        kwargs={**conflicting.kwargs(), "amount": conflicting.amount + 1},
        queue=INTAKE_QUEUE,
    )
    app.send_task(
        "wxrecon.submit_special_reduction",
        kwargs={**orders[2].kwargs(), "out_request_no": "OUTINVALID", "amount": "12"},
        queue=INTAKE_QUEUE,
    )
    finals = ["SUCCESS", "CLOSED", "CANCELLED", "SUCCESS"]
    with process.admin() as admin:
        for b in range(BILLS):
            admin.seed_bill(
                f"OUTBILL{b:03d}",
                1000 + b,
                finals[b % 4],
                confirm_after=0.2,
                final_after=0.5 + 0.1 * b,
                **({"close_reason": "USER_REJECTED"} if finals[b % 4] == "CLOSED" else {}),
            )
    for b in range(BILLS):
        app.send_task(
            "wxrecon.track_compensation_bill",
            kwargs={"out_bill_no": f"OUTBILL{b:03d}"},
            queue=INTAKE_QUEUE,
        )

    db = Database(pg_url)
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:  # every order out of flight, and every outbox event delivered
        processes.check_alive()
        counts = order_states(db)
        with db.read() as session:
            deliveries = Counter(session.execute(select(Outcome.delivery)).scalars())
        settled = all_in(counts, len(orders), BILLS, (REDUCTION_TERMINAL, BILL_TERMINAL))
        if settled and set(deliveries) == {"delivered"}:
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"not settled: {counts} {deliveries}\n{processes.logs()}")
        time.sleep(0.5)
    # The task's receiver takes its messages a little after the relay sent them.
    with db.read() as session:
        stored = list(session.execute(select(Outcome)).scalars())
        reductions = list(session.execute(select(SpecialReduction)).scalars())
        bills = list(session.execute(select(CompensationBill)).scalars())
    db.dispose()
    expected = {o.event_id for o in stored}
    while {e["event"]["event_id"] for e in read_lines(billing_log)} != expected:
        processes.check_alive()
        got = {e["event"]["event_id"] for e in read_lines(billing_log)}
        assert time.monotonic() < deadline + 30, (
            f"task receiver lacks {len(expected - got)} events\n{processes.logs()}"
        )
        time.sleep(0.3)

    # Every terminal order's last state was told, with its number and amount.
    last = {}
    for o in sorted(stored, key=lambda o: o.id):
        if o.order_id is not None:
            last[(o.kind, o.order_id)] = o
    for r in reductions:
        told = last[("reduction", r.id)]
        assert (told.state, json.loads(told.payload)["amount"]) == (r.state, r.amount)
    for b in bills:
        assert last[("bill", b.id)].state == b.state
    refused = [o for o in stored if o.type == "reduction.refused"]
    assert len(refused) == 2, [json.loads(o.payload)["reason"] for o in refused]

    for path in (hooks_log, billing_log):
        lines = read_lines(path)
        received = Counter(line["event"]["event_id"] for line in lines)
        # At least once each, and nothing else; deduplicated by event_id, exactly once.
        assert set(received) == expected, path
        # No ledger number (whole: a bare "6222" turns up in hex ids by chance).
        numbers = {o.bal_account_no for o in orders}
        assert not any(n in json.dumps(line) for line in lines for n in numbers)
    first = [line for line in read_lines(hooks_log) if not line["duplicate"]]
    assert sorted(line["event"]["event_id"] for line in first) == sorted(expected)
    assert not any(line["wxrecon_imported"] for line in read_lines(billing_log))
    # The receiver's 500s were retried: some events needed more than one attempt.
    assert any(o.attempts > 0 for o in stored)
    assert sum(1 for o in stored if o.last_error is None) == len(stored)  # delivered clears it
    print(
        f"e2e outcomes: {len(stored)} events, {Counter(o.type for o in stored)}, "
        f"retried {sum(1 for o in stored if o.attempts)}"
    )

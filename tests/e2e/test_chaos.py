"""Chaos: every order stays safe while the processes around it break.

Real processes: the simulator (faults on: 500s, 429s, hangs, resets, bad and SIGNTEST
signatures, stale timestamps, malformed bodies, apply-then-fail), two Celery workers, the
outcome relay worker (``-Q wxrecon.outcomes``), beat, a webhook receiver that answers 500 to
every tenth delivery, a private redis-server (append-only file, fsync always) and a private
PostgreSQL cluster of its own (stopping the machine's shared server would break everything
else on it). 2,000 special reductions over 10 target merchants and 100 compensation bills:
half sent by name (``send_task`` through a plain Celery app, as a business app does), half
through wxrecon's intake helpers. While they run: a worker's whole process group (the relay's
in turn) is SIGKILLed every four seconds and restarted, PostgreSQL is stopped (a crash) for two
minutes while by-name orders keep arriving, Redis is killed and restarted once, and beat is
restarted once. Then the faults stop and the orders must converge.

Afterwards: every order, by-name ones included, final and equal to the simulator's ground
truth; nothing applied twice; every POST of one out_request_no with the same parameters; no
claim left behind; an unbroken event story for each order; no secret in any log; every
outbox event delivered (none dead), every final order's final event received by the webhook
at least once, and, deduplicated by event_id, each exactly once.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import select

from benchmarks import harness
from tests.fixtures_chaos import report_figures
from tests.fixtures_sim import make_sim_dir, sim_material, start_sim_process
from tests.services import PrivatePostgres
from tests.workload import FAULTS, Order, all_in, make_orders, order_states
from wxrecon import intake
from wxrecon.demo.env import free_port
from wxrecon.demo.procs import Child, Supervisor
from wxrecon.domain.states import BILL_FINAL, REDUCTION_FINAL, BState, RState
from wxrecon.simulator import LedgerSeed, SimulatorProcess
from wxrecon.store.db import Database
from wxrecon.store.models import CompensationBill, Event, Outcome, SpecialReduction

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.e2e,
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.timeout(900),
]

# Unique per run: two suites running at once (a developer's and CI's) must not share a database.
DB_NAME = f"wxrecon_chaos_{os.getpid()}_{uuid.uuid4().hex[:8]}"
MERCHANTS = [f"19000002{i:02d}" for i in range(10)]
PER_MERCHANT = 200
TOO_BIG_PER_MERCHANT = 3  # larger than the whole ledger: 403 NOT_ENOUGH at submit
BILLS = 100
WORKERS = 2
CONCURRENCY = 2

# Intake is spread over most of the chaos period, so every blow lands on work in flight:
# each INTAKE_EVERY seconds a batch by name (~125 s for half the orders) and, while
# PostgreSQL answers, a batch through the helpers (larger after the outage, to catch up).
INTAKE_BATCH = 4
CATCH_UP_BATCH = 32
INTAKE_EVERY = 0.5
KILL_EVERY = 4.0
FIRST_KILL = 2.0
PG_STOP_AT = 10.0
PG_DOWN_FOR = 120.0
REDIS_RESTART_AT = 70.0  # while PostgreSQL is down: by-name intakes wait in Redis
BEAT_RESTART_AT = 90.0
CHAOS_FOR = 170.0
INTAKE_GRACE = 120.0
FAULTS_WANTED = 100
FAULTS_WAIT = 120.0  # on a loaded machine the catch-up after the outage may take longer
CONVERGE_WITHIN = 300.0
# The business app's view of wxrecon: a task name and a queue, nothing imported.
SUBMIT_TASK = "wxrecon.submit_special_reduction"
BY_NAME_QUEUE = "wxrecon.intake"
WEBHOOK_SECRET = f"chaos-{uuid.uuid4().hex}"
WEBHOOK_FAIL_EVERY = 10


ENGINE_SETTINGS = {
    "POLL_SCHEDULE": "200ms,400ms,800ms,1500ms",
    "POLL_JITTER": "0.2",
    "POLL_MAX_ATTEMPTS": "400",
    "SWEEP_INTERVAL": "0.5",
    "SWEEP_BATCH": "200",
    "CLAIM_LEASE": "15",
    "REENTRY_GRACE": "1s",
    "HTTP_READ_TIMEOUT": "1",
    "HTTP_CONNECT_TIMEOUT": "1",
    "HTTP_RETRIES": "2",
    "LOG_LEVEL": "INFO",
    "WEBHOOK_TIMEOUT": "2",
    "OUTCOME_RETRY_SCHEDULE": "200ms,500ms,1s",
    "OUTCOME_RELAY_INTERVAL": "0.5",
}
RELAY = "relay"


def account(mchid: str) -> str:
    return f"6217{mchid}55"  # 16 digits, unique per merchant; must never reach a log


@dataclass
class Rig:
    """Everything the chaos run started; ``sup`` reaps it all."""

    sup: Supervisor
    work: Path
    logs: Path
    redis: harness.RedisServer
    pg: PrivatePostgres
    sim: SimulatorProcess
    env: dict[str, str]
    workers: dict[str, Child]
    beat: Child
    starts: Counter[str]

    def start_worker(self, name: str) -> None:
        self.starts[name] += 1
        log_path = self.logs / f"{name}.{self.starts[name]}.log"
        if name == RELAY:  # the outcome relay: its own queue, one process
            self.workers[name] = self.sup.start(
                name,
                [
                    *harness.CELERY,
                    "worker",
                    "-Q",
                    "wxrecon.outcomes",
                    "--concurrency",
                    "1",
                    "--hostname",
                    f"{name}@%h",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                    "--loglevel",
                    "INFO",
                ],
                env=self.env,
                log_path=log_path,
            )
            return
        self.workers[name] = harness.start_worker(
            self.sup, name, self.env, log_path, concurrency=CONCURRENCY
        )

    def start_beat(self) -> None:
        self.starts["beat"] += 1
        self.beat = harness.start_beat(
            self.sup, self.env, self.logs / f"beat.{self.starts['beat']}.log", self.work / "data"
        )

    def check_alive(self) -> None:
        for child in [*self.workers.values(), self.beat]:
            if not child.alive():
                raise AssertionError(
                    f"{child.name} exited with {child.popen.returncode}: {child.log_tail(20)}"
                )


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    """The chaos suite's own PostgreSQL cluster: it is stopped for two minutes."""
    pg = PrivatePostgres()
    try:
        yield pg.start()
    finally:
        pg.close()


@pytest.fixture
def chaos_db(private_pg: PrivatePostgres) -> str:
    return harness.fresh_database(private_pg.url, DB_NAME)


def test_chaos(tmp_path: Path, private_pg: PrivatePostgres, chaos_db: str) -> None:
    orders, balances = make_orders(
        random.Random(20261125),
        prefix="CHAOS",
        merchants=MERCHANTS,
        account=account,
        per_merchant=PER_MERCHANT,
        too_big=TOO_BIG_PER_MERCHANT,
        max_amount=20000,
        fits_tenths=7,
    )
    work = tmp_path / "chaos"
    logs = work / "logs"
    logs.mkdir(parents=True)
    seeds = [LedgerSeed(m, account(m), balances[m]) for m in MERCHANTS]
    sim_material()
    sim_dir = make_sim_dir(work / "sim", ledgers=seeds)
    figures: Counter[str] = Counter()

    with Supervisor(stop_timeout=10) as sup:
        redis_server = harness.RedisServer(sup, work / "redis", appendonly=True).start()
        hook_port = free_port()
        hooks = sup.start(
            "webhook",
            [
                sys.executable,
                str(Path(__file__).parent.parent / "webhook_receiver.py"),
                str(hook_port),
                WEBHOOK_SECRET,
                str(work / "webhook.jsonl"),
                str(WEBHOOK_FAIL_EVERY),
            ],
            env=harness.base_env(),
            log_path=logs / "webhook.log",
        )
        sim = start_sim_process(
            sim_dir,
            *(f"--fault={f}" for f in FAULTS),
            "--hang",
            "1500ms",
            "--fail-rate",
            "0.03",
            log_path=logs / "simulator.log",
        )
        try:
            rig = Rig(
                sup=sup,
                work=work,
                logs=logs,
                redis=redis_server,
                sim=sim,
                env=harness.engine_env(
                    sim.client_env(),
                    chaos_db,
                    redis_server.url,
                    work / "data",
                    **ENGINE_SETTINGS,
                    WEBHOOK_URL=f"http://127.0.0.1:{hook_port}/hooks/wxrecon",
                    WEBHOOK_SECRET=WEBHOOK_SECRET,
                ),
                pg=private_pg,
                workers={},
                beat=None,  # type: ignore[arg-type]
                starts=Counter(),
            )
            for w in range(WORKERS):
                rig.start_worker(f"chaos{w}")
            rig.start_worker(RELAY)
            rig.start_beat()
            harness.wait_for(
                lambda: all(harness.worker_ready(c) for c in rig.workers.values()),
                60,
                "the workers",
                every=0.2,
            )
            run_chaos(rig, orders, chaos_db, figures)
            assert hooks.alive(), hooks.log_tail(20)
            check_outcome(rig, orders, balances, chaos_db, figures)
            check_delivery(work / "webhook.jsonl", chaos_db, figures)
        finally:
            sim.stop()


def business_app(broker: str) -> Celery:
    """What a business app has: a plain Celery app (JSON), wxrecon's task name and queue; it
    retries a publish while the broker restarts, as its own code would."""
    app = Celery("business-app", broker=broker)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
    )
    return app


def run_chaos(rig: Rig, orders: list[Order], db_url: str, figures: Counter[str]) -> None:
    db = Database(db_url)
    app, enqueue = harness.producer(rig.redis.url)
    business = business_app(rig.redis.url)
    outcomes = ["SUCCESS", "CLOSED", "CANCELLED", "SUCCESS"]
    with rig.sim.admin() as admin:
        for b in range(BILLS):
            outcome = outcomes[b % len(outcomes)]
            admin.seed_bill(
                f"CHAOSBILL{b:03d}",
                1000 + b,
                outcome,
                confirm_after=0.5 + 0.02 * b,
                final_after=2.0 + 0.1 * b,
                **({"close_reason": "USER_REJECTED"} if outcome == "CLOSED" else {}),
            )
    by_name, helped = orders[::2], orders[1::2]
    bills = [f"CHAOSBILL{b:03d}" for b in range(BILLS)]
    started = time.monotonic()
    next_intake = started
    next_kill = started + FIRST_KILL
    victim = 0
    victims = [*(f"chaos{w}" for w in range(WORKERS)), RELAY]
    done = {"pg down": False, "pg up": False, "redis": False, "beat": False}
    try:
        while True:
            now = time.monotonic()
            t = now - started
            pg_down = done["pg down"] and not done["pg up"]
            if now >= next_intake:
                batch, by_name = by_name[:INTAKE_BATCH], by_name[INTAKE_BATCH:]
                for order in batch:
                    business.send_task(
                        SUBMIT_TASK,
                        kwargs=order.kwargs(),
                        queue=BY_NAME_QUEUE,
                        retry=True,
                        retry_policy={
                            "max_retries": 30,
                            "interval_start": 0.2,
                            "interval_step": 0.2,
                            "interval_max": 1,
                        },
                    )
                    figures["orders sent by name"] += 1
                    if pg_down:
                        figures["orders sent by name while PostgreSQL was down"] += 1
                if (helped or bills) and not pg_down:
                    size = CATCH_UP_BATCH if done["pg up"] else INTAKE_BATCH
                    last = len(helped) <= size
                    chunked = bool(figures["helper transactions"] % 2)
                    submit_batch(db, helped[:size], enqueue, chunked, bills if last else [])
                    figures["helper transactions"] += 1
                    helped = helped[size:]
                    if not helped:
                        bills = []
                next_intake += INTAKE_EVERY
            if t >= CHAOS_FOR and not (by_name or helped or bills):
                break  # the blows go on until every order has been handed in
            assert t < CHAOS_FOR + INTAKE_GRACE, (
                f"intake not finished {t:.0f}s in: {len(by_name)} by name, {len(helped)} "
                f"through the helpers, {len(bills)} bills left"
            )
            if now >= next_kill:
                name = victims[victim % len(victims)]
                victim += 1
                harness.kill9(rig.sup, rig.workers[name])
                figures["relay kills (SIGKILL)" if name == RELAY else "worker kills (SIGKILL)"] += 1
                if pg_down:
                    figures["kills while PostgreSQL was down"] += 1
                rig.start_worker(name)
                next_kill += KILL_EVERY
            if t >= PG_STOP_AT and not done["pg down"]:
                done["pg down"] = True
                rig.pg.stop()
                down_at = time.monotonic()
            if done["pg down"] and not done["pg up"] and now - down_at >= PG_DOWN_FOR:
                done["pg up"] = True
                rig.pg.start()
                figures["seconds PostgreSQL was down"] = round(time.monotonic() - down_at)
            if t >= REDIS_RESTART_AT and not done["redis"]:
                done["redis"] = True
                rig.redis.restart()
                figures["Redis restarts (append-only file)"] += 1
            if t >= BEAT_RESTART_AT and not done["beat"]:
                done["beat"] = True
                harness.stop_child(rig.sup, rig.beat)
                rig.start_beat()
                figures["beat restarts"] += 1
            rig.check_alive()
            time.sleep(0.1)
        assert done["pg up"], "PostgreSQL was not started again"
        with rig.sim.admin() as admin:
            # The outage leaves the provider idle for two minutes: the faults stay on, while
            # the backlog is worked off, until FAULTS_WANTED have landed (on a loaded machine
            # fewer requests fit in the chaos period), then stop so the orders can converge.
            faults_by = time.monotonic() + FAULTS_WAIT
            while admin.stats()["faults_total"] < FAULTS_WANTED and time.monotonic() < faults_by:
                rig.check_alive()
                time.sleep(0.5)
            figures["faults injected"] = int(admin.stats()["faults_total"])
            admin.clear_faults()
        chaos_end = time.monotonic()
        wait_converged(rig, db, len(orders), chaos_end)
        figures["seconds of chaos"] = round(chaos_end - started)
        figures["seconds to converge after"] = round(time.monotonic() - chaos_end)
    finally:
        db.dispose()
        app.close()
        business.close()


def submit_batch(
    db: Database, batch: list[Order], enqueue: Any, chunked: bool, bills: list[str]
) -> None:
    """One transaction through wxrecon's helpers: one message per chunk of orders, or one per
    order; the bills with the last batch."""
    with db.transaction() as session:
        if chunked:
            kwargs = [order.kwargs() for order in batch]
            intake.submit_reductions(session, kwargs, enqueue=enqueue, lease=15, chunk=4)
        else:
            for order in batch:
                intake.submit_reduction(session, **order.kwargs(), enqueue=enqueue, lease=15)
        for number in bills:
            intake.track_bill(session, number, enqueue=enqueue, lease=15)


def wait_converged(rig: Rig, db: Database, expected: int, since: float) -> None:
    while True:
        rig.check_alive()
        reductions, bills = order_states(db)
        if all_in((reductions, bills), expected, BILLS):
            return
        if time.monotonic() - since > CONVERGE_WITHIN:
            raise AssertionError(
                f"not converged {CONVERGE_WITHIN:.0f}s after the chaos: reductions {reductions}, "
                f"bills {bills}\n{stuck_report(db)}"
            )
        time.sleep(0.5)


def stuck_report(db: Database, limit: int = 10) -> str:
    """The rows that are not final, with their events: what the engine owner needs to see."""
    lines = []
    with db.read() as session:
        tables: list[tuple[Any, frozenset[Any]]] = [
            (SpecialReduction, REDUCTION_FINAL),
            (CompensationBill, BILL_FINAL),
        ]
        for model, final in tables:
            rows = list(
                session.execute(
                    select(model).where(model.state.notin_([str(s) for s in final])).limit(limit)
                ).scalars()
            )
            kind = "reduction" if model is SpecialReduction else "bill"
            for row in rows:
                number = getattr(row, "out_request_no", None) or row.out_bill_no
                lines.append(
                    f"{kind} #{row.id} {number}: {row.state} attempts={row.attempts} "
                    f"next_poll_at={row.next_poll_at} claimed_until={row.claimed_until} "
                    f"last_error={row.last_error!r}"
                )
                events = session.execute(
                    select(Event).where(Event.kind == kind, Event.order_id == row.id)
                ).scalars()
                for e in events:
                    lines.append(
                        f"    {e.at:%H:%M:%S.%f} {e.from_state} -> {e.to_state}: {e.reason}"
                    )
    return "\n".join(lines)


def check_outcome(
    rig: Rig,
    orders: list[Order],
    balances: dict[str, int],
    db_url: str,
    figures: Counter[str],
) -> None:
    db = Database(db_url)
    try:
        with db.read() as session:
            rows = list(session.execute(select(SpecialReduction)).scalars())
            bill_rows = list(session.execute(select(CompensationBill)).scalars())
            events = list(session.execute(select(Event).order_by(Event.id)).scalars())
    finally:
        db.dispose()
    with rig.sim.admin() as admin:
        truth = {(t["mchid"], t["out_request_no"]): t for t in admin.reductions()}
        bill_truth = {b["out_bill_no"]: b for b in admin.bills()}
        final_balances = {m: admin.balance(m, account(m)) for m in MERCHANTS}
        stats = admin.stats()

    # Every order final and equal to the provider's ground truth (state and fail reason).
    by_key = {(r.mchid, r.out_request_no): r for r in rows}
    assert set(by_key) == {(o.mchid, o.out_request_no) for o in orders}
    wrong = [
        f"#{r.id} {key[1]}: local {r.state}/{r.fail_reason}, provider "
        f"{truth.get(key, {}).get('state')}/{truth.get(key, {}).get('fail_reason')}"
        for key, r in by_key.items()
        if key not in truth
        or r.state != truth[key]["state"]
        or r.fail_reason != truth[key]["fail_reason"]
    ]
    assert not wrong, f"{len(wrong)} orders disagree with the provider: {wrong[:10]}"
    assert {b.out_bill_no: b.state for b in bill_rows} == {
        k: v["state"] for k, v in bill_truth.items()
    }
    for b in bill_rows:
        expected = bill_truth[b.out_bill_no]["close_reason"] if b.state == BState.CLOSED else None
        assert b.close_reason == expected, b.out_bill_no

    # Nothing applied twice; every POST of one out_request_no carried the same parameters.
    twice = [k for k, t in truth.items() if t["applied_count"] > 1]
    assert not twice, f"applied more than once: {twice[:10]}"
    mismatched = [k for k, t in truth.items() if t["mismatched_param_submits"]]
    assert not mismatched, f"re-entered with different parameters: {mismatched[:10]}"
    for mchid in MERCHANTS:
        applied = sum(r.amount for r in rows if r.mchid == mchid and r.state == RState.SUCCESS)
        assert final_balances[mchid] == balances[mchid] - applied, mchid

    # No claim left behind.
    now = datetime.now(UTC)
    everything: list[Any] = [*rows, *bill_rows]
    claimed = [
        f"{type(r).__name__} #{r.id}: claimed_until={r.claimed_until}"
        for r in everything
        if r.claimed_until is not None or r.claim_token is not None or r.next_poll_at is not None
    ]
    assert not claimed, f"final orders still holding a claim at {now}: {claimed[:10]}"

    # Each order's story, without gaps.
    stories: defaultdict[tuple[str, int], list[Event]] = defaultdict(list)
    for e in events:
        stories[(e.kind, e.order_id)].append(e)
    gaps = []
    for kind, all_rows, initial in (
        ("reduction", rows, RState.RECEIVED),
        ("bill", bill_rows, BState.TRACKING),
    ):
        for row in all_rows:
            story = stories.get((kind, row.id), [])
            gaps.extend(story_gaps(kind, row.id, row.state, initial, story))
    assert not gaps, f"{len(gaps)} broken stories: {gaps[:10]}"

    # No secret in any log.
    accounts = {account(m) for m in MERCHANTS}
    secrets = [*secret_lines(rig.sim.dir.path), *sorted(accounts)]
    log_files = sorted(p for p in rig.logs.rglob("*.log"))
    leaks = [
        f"{p.name}: {'a plaintext bal_account_no' if s in accounts else 'a private key line'}"
        for p in log_files
        for s in secrets
        if s in p.read_text(errors="replace")
    ]
    assert not leaks, leaks[:10]
    assert len(log_files) >= 2 + WORKERS

    # The faults and the chaos really happened.
    assert stats["faults_total"] >= FAULTS_WANTED, stats["faults"]
    assert any(k.startswith("apply_then") for k in stats["faults"]), stats["faults"]
    resubmitted = sum(t["submit_count"] - 1 for t in truth.values())
    assert resubmitted > 0

    logs_text = "\n".join(p.read_text(errors="replace") for p in log_files)
    states = Counter(r.state for r in rows)
    report_figures(
        f"chaos: {len(rows)} reductions {dict(states)}, {len(bill_rows)} bills "
        f"{dict(Counter(b.state for b in bill_rows))}; all equal to the provider's ground truth"
    )
    report_figures(
        f"chaos: provider requests {stats['requests_total']}, faults injected "
        f"{stats['faults_total']} {dict(sorted(stats['faults'].items()))}"
    )
    report_figures(
        "chaos: "
        + ", ".join(f"{k} {v}" for k, v in figures.items() if k != "faults injected")
        + f"; in-call retries {len(re.findall(r'; retrying in', logs_text))}, "
        f"engine re-schedules {len(re.findall(r'next try in', logs_text))}, "
        f"POST re-entries {resubmitted}, closed at submit "
        f"{sum(1 for t in truth.values() if t['closed_at_submit'])}, "
        f"events {len(events)}"
    )


def check_delivery(hooks_log: Path, db_url: str, figures: Counter[str]) -> None:
    """Every outbox event delivered (none dead); the webhook received each at least once,
    every final order's final event among them; deduplicated by event_id, exactly once."""
    db = Database(db_url)
    deadline = time.monotonic() + CONVERGE_WITHIN
    try:
        while True:
            with db.read() as session:
                deliveries = Counter(session.execute(select(Outcome.delivery)).scalars())
            if set(deliveries) == {"delivered"}:
                break
            assert "dead" not in deliveries, deliveries
            assert time.monotonic() < deadline, f"outcomes not delivered: {deliveries}"
            time.sleep(0.5)
        with db.read() as session:
            stored = list(session.execute(select(Outcome).order_by(Outcome.id)).scalars())
            finals = {
                ("reduction", r.id): r.state
                for r in session.execute(select(SpecialReduction)).scalars()
            } | {
                ("bill", b.id): b.state for b in session.execute(select(CompensationBill)).scalars()
            }
    finally:
        db.dispose()
    lines = [json.loads(line) for line in hooks_log.read_text().splitlines() if line.strip()]
    received = Counter(line["event"]["event_id"] for line in lines)
    expected = {o.event_id for o in stored}
    # At least once each, and nothing the outbox does not hold.
    assert set(received) == expected, (len(expected - set(received)), len(set(received) - expected))
    # Each final order's last event says its final state, and it arrived.
    last = {(o.kind, o.order_id): o for o in stored if o.order_id is not None}
    assert set(last) == set(finals), "an order without an outcome event"
    wrong = [k for k, state in finals.items() if last[k].state != state]
    assert not wrong, f"{len(wrong)} orders whose last event is not their final state"
    # A receiver deduplicating by event_id sees each exactly once.
    first = [line["event"]["event_id"] for line in lines if not line["duplicate"]]
    assert sorted(first) == sorted(expected)
    retried = sum(1 for o in stored if o.attempts)
    assert retried > 0  # the receiver's 500s landed and were retried
    assert not any("6217" + m in hooks_log.read_text() for m in MERCHANTS)
    report_figures(
        f"chaos: outcomes {len(stored)} events {dict(Counter(o.type for o in stored))}, "
        f"webhook deliveries {len(lines)} accepted ({sum(received.values()) - len(received)} "
        f"duplicates), events retried {retried}, all delivered, none dead"
    )


def story_gaps(kind: str, order_id: int, state: str, initial: str, story: list[Event]) -> list[str]:
    """What is wrong with one order's events (empty when its story is whole)."""
    label = f"{kind} #{order_id}"
    if not story:
        return [f"{label}: no events"]
    out = []
    if story[0].from_state is not None or story[0].to_state != initial:
        out.append(f"{label}: starts {story[0].from_state} -> {story[0].to_state}")
    for before, after in itertools.pairwise(story):
        if after.from_state != before.to_state:
            out.append(
                f"{label}: event {after.id} {after.from_state} -> {after.to_state} follows "
                f"{before.to_state}"
            )
    if story[-1].to_state != state:
        out.append(f"{label}: the last event ends in {story[-1].to_state}, the row is {state}")
    return out


def secret_lines(sim_path: Path) -> list[str]:
    """The body lines of every private key PEM in the simulator directory (long enough not to
    match by chance)."""
    out: list[str] = []
    for pem in sim_path.glob("*.pem"):
        text = pem.read_text()
        if "PRIVATE KEY" not in text:
            continue
        out.extend(
            line.strip()
            for line in text.splitlines()
            if len(line.strip()) >= 16 and "-----" not in line
        )
    return out

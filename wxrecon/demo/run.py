"""``wxrecon demo``: simulator, worker and beat as real processes, a realistic mix of orders,
a live table while they converge, and a verdict against the simulator's ground truth.

Runs on embedded defaults (SQLite, kombu's server-less ``filesystem://`` transport, all under
one directory); ``WXRECON_DATABASE_URL`` / ``WXRECON_BROKER_URL`` in the environment make the
same flow run on PostgreSQL / Redis. Every child runs in its own process group and is stopped
on exit, on error, on Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

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
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from wxrecon.cli_common import (
    CliError,
    JsonOpt,
    Output,
    ago,
    fen,
    one_line,
    safe_url,
    state_text,
)
from wxrecon.demo import mix
from wxrecon.demo.procs import ChildDied, Supervisor

REDUCTION_FINAL = ("SUCCESS", "FAILED")
BILL_FINAL = ("SUCCESS", "CLOSED", "CANCELLED")
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
class Tracked:
    """One demo order as the live view sees it."""

    kind: str  # "reduction" or "bill"
    number: str
    category: str
    target: str
    amount: int
    state: str = "-"
    attempts: int = 0
    order_id: int | None = None
    first_seen: float | None = None
    final_at: float | None = None
    detail: str = ""

    @property
    def final(self) -> bool:
        return self.state in (REDUCTION_FINAL if self.kind == "reduction" else BILL_FINAL)


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


def demo_env(base: dict[str, str], work: Path, sim_env: dict[str, str]) -> dict[str, str]:
    """The environment of every demo process (and of the demo itself)."""
    env = {k: v for k, v in base.items() if not k.startswith("WXRECON_")}
    env.update(sim_env)
    env.update(
        {
            "WXRECON_DATABASE_URL": base.get(
                "WXRECON_DATABASE_URL", f"sqlite:///{work / 'wxrecon-demo.db'}"
            ),
            "WXRECON_BROKER_URL": base.get("WXRECON_BROKER_URL", "filesystem://"),
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
        self.env: dict[str, str] = {}
        self.faults_fired: dict[str, int] = {}

    # -- set-up ----------------------------------------------------------------------------

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
        self.env = demo_env(dict(os.environ), self.work, sim_dir.client_env())
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

        from wxrecon.store.models import CompensationBill, SpecialReduction

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
        items = list(self.tracked.values())
        done = sum(t.final for t in items)
        elapsed = time.monotonic() - self.started
        header = Text.assemble(
            ("wxrecon demo ", "bold"),
            f"run {self.run_id} · simulator {self.sim_url or '…'} · ",
            (self.phase, "cyan"),
            f" · {elapsed:4.0f}s",
        )
        bar = Table.grid(padding=(0, 1))
        bar.add_row(
            ProgressBar(total=max(1, len(items)), completed=done, width=40),
            Text(f"{done}/{len(items)} final"),
        )
        counts = Counter(t.state for t in items)
        tally = Text("  ").join(
            Text.assemble(state_text(s), f" {n}") for s, n in sorted(counts.items())
        )
        fired = sum(self.faults_fired.values())
        faults = Text(
            f"provider faults injected so far: {fired}"
            + (
                " (" + ", ".join(f"{k} ×{n}" for k, n in sorted(self.faults_fired.items())) + ")"
                if fired
                else ""
            ),
            style="dim",
        )
        # The orders still moving first, then the most recently finished ones.
        now = time.monotonic()
        moving = [t for t in items if not t.final]
        finished = sorted((t for t in items if t.final), key=lambda t: -(t.final_at or 0))
        shown = (moving + finished)[:18]
        table = Table(header_style="bold", expand=False, show_edge=False, pad_edge=False)
        for name in (
            "kind",
            "number",
            "category",
            "target",
            "amount",
            "state",
            "tries",
            "age",
            "detail",
        ):
            table.add_column(name, no_wrap=True)
        for t in shown:
            age = (t.final_at or now) - (t.first_seen or now)
            table.add_row(
                t.kind,
                t.number,
                t.category,
                t.target,
                fen(t.amount),
                state_text(t.state),
                str(t.attempts),
                ago(age),
                Text(t.detail, style="dim"),
            )
        hidden = len(items) - len(shown)
        footer = Text(f"… and {hidden} more" if hidden > 0 else "", style="dim")
        return Group(Panel(Group(header, bar, tally, faults), expand=False), table, footer)

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


def render_summary(console: Console, s: dict[str, Any]) -> None:
    t = Table(title="summary", title_justify="left", header_style="bold")
    for name in ("category", "orders", "final states", "median s to final", "max s"):
        t.add_column(name)
    for category, states in s["by_category"].items():
        timing = s["seconds_to_final"].get(category, {})
        t.add_row(
            category,
            str(sum(states.values())),
            Text(", ").join(
                Text.assemble(state_text(k), f" {n}") for k, n in sorted(states.items())
            ),
            str(timing.get("median", "-")),
            str(timing.get("max", "-")),
        )
    console.print(t)
    if s["faults_injected"]:
        faults = ", ".join(f"{k} ×{n}" for k, n in sorted(s["faults_injected"].items()))
        console.print(f"provider faults injected and survived: {faults}")
    verdict = (
        f"[bold green]✓ all {s['orders']} orders converged and match the provider's ground "
        f"truth[/] in {s['elapsed_seconds']}s"
        if s["ok"]
        else f"[bold red]✗ {len(s['problems'])} order(s) did not converge or disagree:[/] "
        + "; ".join(s["problems"][:5])
    )
    console.print(verdict)


def run(demo: Demo, sup: Supervisor) -> dict[str, Any]:
    from wxrecon.store import db as dbmod

    console = demo.out.console
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
    try:
        with Supervisor() as sup:
            if not json_out:
                db_url = os.environ.get("WXRECON_DATABASE_URL", "SQLite")
                broker = os.environ.get("WXRECON_BROKER_URL", "filesystem://")
                out.print(
                    f"[bold]wxrecon demo[/]: {orders} reductions + {len(d.plan.bills)} bills · "
                    f"database {safe_url(db_url)} · broker {safe_url(broker)} · "
                    f"work dir {work}"
                )
            summary = run(d, sup)
    except ChildDied as exc:
        raise CliError(f"demo aborted: {exc} (logs in {work / 'logs'})") from None
    except (KeyboardInterrupt, CliError):
        raise
    except Exception as exc:
        raise CliError(f"demo failed: {one_line(exc)} (logs in {work / 'logs'})") from None
    finally:
        if summary is not None and summary["ok"] and not keep:
            shutil.rmtree(work, ignore_errors=True)
    if json_out:
        out.json(summary)
    else:
        render_summary(out.console, summary)
        if not summary["ok"] or keep:
            out.print(f"logs, database and metrics: {work}")
    if not summary["ok"]:
        raise typer.Exit(1)

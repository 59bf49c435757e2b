"""Outcome delivery on against off: the throughput phase again with a webhook target, its
relay worker (``-Q wxrecon.outcomes``, one process) and a beat that schedules the relay; a
receiver process (``benchmarks/receiver.py``: verifies, deduplicates, answers 200) takes
the deliveries. Orders finalised per second with delivery on ÷ the same figure with delivery
off (the outbox rows are written, nothing is sent), same N: the mean of two ``off`` phases,
right before and right after it, each on fresh workers and a vacuumed database as delivery
on is, so that the three differ in delivery alone and a drift of the machine's speed over
them cancels."""

from __future__ import annotations

import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import text

from benchmarks import crypto_floor, e2e, harness
from wxrecon.demo.env import free_port
from wxrecon.demo.procs import Child, Supervisor
from wxrecon.store.db import Database

RECEIVER = Path(__file__).resolve().parent / "receiver.py"


def delivered(log: Path) -> int:
    """Distinct events the receiver accepted."""
    try:
        return sum(1 for line in log.read_text().splitlines() if '"duplicate": false' in line)
    except OSError:
        return 0


@dataclass
class Rig:
    """What the delivery phases run on; ``workers`` and ``beat`` are restarted in place."""

    sup: Supervisor
    env: dict[str, str]
    workers: list[Child]
    beat: list[Child]
    logs: Path
    data: Path
    db: Database
    admin: Any
    enqueue: Callable[..., None]
    concurrency: int
    timeout: float
    progress: Callable[[int, int], None] | None = None

    def phase(
        self, orders: list[e2e.Planned], prefix: str, check: Callable[[], None], floor: Any
    ) -> tuple[e2e.PhaseResult, Any]:
        """Run ``orders`` to the end; the phase and the machine's speed sampled over it
        (report._normalized), if ``floor`` samples it."""
        if floor is not None:
            floor.start()
        phase = e2e.run_phase(
            self.db,
            self.admin,
            orders,
            prefix,
            self.enqueue,
            timeout=self.timeout,
            check=check,
            progress=self.progress,
        )
        return phase, floor.stop() if floor is not None else None


def with_floor(phase: e2e.PhaseResult, sampled: Any) -> dict[str, Any]:
    out = phase.to_json()
    if sampled:
        out["crypto_floor"] = sampled.to_json(phase.requests / max(1, phase.final))
    return out


def run(
    rig: Rig,
    orders: list[e2e.Planned],
    prefix: str,
    *,
    simulator_pid: int | None = None,
    floor: crypto_floor.During | None = None,
) -> dict[str, Any]:
    """Restart the workers and beat with a webhook target (``workers`` and ``beat`` are
    replaced in place), run the phase, wait until every final order's outcome arrived.
    The earlier phases' outbox rows (written, never sent) are marked dead first, so the relay
    delivers this phase's events only, and the database vacuumed."""
    with rig.db.begin() as conn:
        conn.execute(text("UPDATE outcomes SET delivery = 'dead' WHERE delivery = 'pending'"))
    harness.vacuum(rig.db)  # that UPDATE's dead rows too
    port, secret = free_port(), secrets.token_hex(16)
    log = rig.logs / "webhook-events.jsonl"
    receiver = rig.sup.start(
        "receiver",
        [sys.executable, str(RECEIVER), str(port), secret, str(log)],
        env=harness.base_env(),
        log_path=rig.logs / "receiver.log",
    )
    on = {
        **rig.env,
        "WXRECON_WEBHOOK_URL": f"http://127.0.0.1:{port}/hooks/wxrecon",
        "WXRECON_WEBHOOK_SECRET": secret,
    }
    for child in [*rig.workers, *rig.beat]:
        harness.stop_child(rig.sup, child)
    rig.workers[:] = [
        harness.start_worker(
            rig.sup, "benchD", on, rig.logs / "workerD.log", concurrency=rig.concurrency
        )
    ]
    relay = harness.start_worker(
        rig.sup, "relay", on, rig.logs / "relay.log", concurrency=1, queues="wxrecon.outcomes"
    )
    rig.beat[:] = [harness.start_beat(rig.sup, on, rig.logs / "beatD.log", rig.data)]
    harness.wait_for(
        lambda: all(harness.worker_ready(c) for c in [*rig.workers, relay]),
        120,
        "workers",
        every=0.2,
    )

    def check() -> None:
        for child in [*rig.workers, *rig.beat, relay, receiver]:
            if not child.alive():
                raise RuntimeError(f"{child.name} died: {child.log_tail(10)}")

    # Where delivery's cost goes, over the phase and its wait for the last deliveries: the
    # engine's workers, the relay worker, the receiver (a stand-in for the business app,
    # which would not share these cores) and the simulator.
    engine = harness.ProcSampler(lambda: [w.pid for w in rig.workers]).start()
    relayed = harness.ProcSampler(lambda: [relay.pid]).start()
    singles = {k: p for k, p in (("receiver", receiver.pid), ("simulator", simulator_pid)) if p}
    spent = harness.cpu_from_now(singles)
    phase, sampled = rig.phase(orders, prefix, check, floor)
    final_at = time.monotonic()
    deadline = final_at + rig.timeout
    while delivered(log) < phase.final and time.monotonic() < deadline:
        check()
        time.sleep(0.5)
    engine.stop()
    relayed.stop()
    out = with_floor(phase, sampled)
    out["delivered"] = delivered(log)
    out["all_delivered_after_last_final_s"] = round(time.monotonic() - final_at, 1)
    cpu = {
        "engine_workers": engine.cpu - engine.samples[0].cpu,
        "relay": relayed.cpu - relayed.samples[0].cpu,
        **spent(),
    }
    out["cpu_seconds"] = {k: round(v, 2) for k, v in cpu.items()}
    out["cpu_ms_per_event"] = {
        k: round(1000 * cpu[k] / max(1, out["delivered"]), 3)
        for k in ("relay", "receiver")
        if k in cpu
    }
    out["problems"] = e2e.ground_truth_problems(rig.admin, orders)
    for child in (relay, receiver):
        harness.stop_child(rig.sup, child)
    return out


def off(
    rig: Rig,
    orders: list[e2e.Planned],
    prefix: str,
    *,
    name: str,
    floor: crypto_floor.During | None = None,
) -> dict[str, Any]:
    """The throughput phase once more with delivery off, right before or after delivery on
    (``name`` tells their workers' logs apart): the workers and beat restarted without a
    target and the database vacuumed, as for delivery on."""
    workers, beat = rig.workers, rig.beat
    for child in [*workers, *beat]:
        harness.stop_child(rig.sup, child)
    harness.vacuum(rig.db)
    workers[:] = [
        harness.start_worker(
            rig.sup,
            f"bench{name}",
            rig.env,
            rig.logs / f"worker{name}.log",
            concurrency=rig.concurrency,
        )
    ]
    beat[:] = [harness.start_beat(rig.sup, rig.env, rig.logs / f"beat{name}.log", rig.data)]
    harness.wait_for(lambda: all(harness.worker_ready(c) for c in workers), 120, "workers")

    def check() -> None:
        for child in [*workers, *beat]:
            if not child.alive():
                raise RuntimeError(f"{child.name} died: {child.log_tail(10)}")

    phase, sampled = rig.phase(orders, prefix, check, floor)
    out = with_floor(phase, sampled)
    out["problems"] = e2e.ground_truth_problems(rig.admin, orders)
    return out

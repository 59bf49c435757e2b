"""Outcome delivery on against off: the throughput phase again with a webhook target, its
relay worker (``-Q wxrecon.outcomes``, one process) and a beat that schedules the relay; a
receiver process (``benchmarks/receiver.py``: verifies, deduplicates, answers 200) takes
the deliveries. Orders finalised per second with delivery on ÷ the same figure of the
throughput phase (delivery off: the outbox rows are written, nothing is sent), same N."""

from __future__ import annotations

import secrets
import sys
import time
from collections.abc import Callable
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


def run(
    sup: Supervisor,
    env: dict[str, str],
    workers: list[Child],
    beat: list[Child],
    logs: Path,
    data: Path,
    db: Database,
    admin: Any,
    orders: list[e2e.Planned],
    prefix: str,
    enqueue: Callable[..., None],
    *,
    concurrency: int,
    timeout: float,
    simulator_pid: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    floor: crypto_floor.During | None = None,
) -> dict[str, Any]:
    """Restart the workers and beat with a webhook target (``workers`` and ``beat`` are
    replaced in place), run the phase, wait until every final order's outcome arrived.
    The earlier phases' outbox rows (written, never sent) are marked dead first, so the relay
    delivers this phase's events only, and the database vacuumed."""
    with db.begin() as conn:
        conn.execute(text("UPDATE outcomes SET delivery = 'dead' WHERE delivery = 'pending'"))
    harness.vacuum(db)  # that UPDATE's dead rows too
    port, secret = free_port(), secrets.token_hex(16)
    log = logs / "webhook-events.jsonl"
    receiver = sup.start(
        "receiver",
        [sys.executable, str(RECEIVER), str(port), secret, str(log)],
        env=harness.base_env(),
        log_path=logs / "receiver.log",
    )
    on = {
        **env,
        "WXRECON_WEBHOOK_URL": f"http://127.0.0.1:{port}/hooks/wxrecon",
        "WXRECON_WEBHOOK_SECRET": secret,
    }
    for child in [*workers, *beat]:
        harness.stop_child(sup, child)
    workers[:] = [
        harness.start_worker(sup, "benchD", on, logs / "workerD.log", concurrency=concurrency)
    ]
    relay = harness.start_worker(
        sup, "relay", on, logs / "relay.log", concurrency=1, queues="wxrecon.outcomes"
    )
    beat[:] = [harness.start_beat(sup, on, logs / "beatD.log", data)]
    harness.wait_for(
        lambda: all(harness.worker_ready(c) for c in [*workers, relay]), 120, "workers", every=0.2
    )

    def check() -> None:
        for child in [*workers, *beat, relay, receiver]:
            if not child.alive():
                raise RuntimeError(f"{child.name} died: {child.log_tail(10)}")

    # Where delivery's cost goes, over the phase and its wait for the last deliveries: the
    # engine's workers, the relay worker, the receiver (a stand-in for the business app,
    # which would not share these cores) and the simulator.
    engine = harness.ProcSampler(lambda: [w.pid for w in workers]).start()
    relayed = harness.ProcSampler(lambda: [relay.pid]).start()
    singles = {k: p for k, p in (("receiver", receiver.pid), ("simulator", simulator_pid)) if p}
    spent = harness.cpu_from_now(singles)
    if floor is not None:
        floor.start()  # the machine's speed over the phase (report._normalized)
    phase = e2e.run_phase(
        db, admin, orders, prefix, enqueue, timeout=timeout, check=check, progress=progress
    )
    sampled = floor.stop() if floor is not None else None
    final_at = time.monotonic()
    deadline = final_at + timeout
    while delivered(log) < phase.final and time.monotonic() < deadline:
        check()
        time.sleep(0.5)
    engine.stop()
    relayed.stop()
    out = phase.to_json()
    if sampled:
        out["crypto_floor"] = sampled.to_json(phase.requests / max(1, phase.final))
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
    out["problems"] = e2e.ground_truth_problems(admin, orders)
    return out

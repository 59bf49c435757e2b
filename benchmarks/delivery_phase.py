"""Outcome delivery on against off, interleaved: blocks of orders run one after another on
the same engine workers, with delivery off (the outbox rows are written, nothing is sent)
and on (a relay worker, ``-Q wxrecon.outcomes``, one process, delivering to a receiver,
``benchmarks/receiver.py``, which verifies, deduplicates and answers 200) in the order
``PATTERN``. Orders finalised per second over the on blocks ÷ over the off blocks.

Why blocks and not one phase each: this shared machine's speed drifts by up to ±25 % over
minutes (docs/benchmarks.md), more than delivery costs, and whole phases a few minutes apart
compared that drift as much as delivery. The pattern is balanced (a linear or quadratic drift
over it cancels), nothing is restarted between blocks (the relay is frozen with SIGSTOP
through the off blocks, so on and off differ only by the relay's and the receiver's work), and
an off block's outbox rows are marked dead after it, so that no on block delivers another
block's events."""

from __future__ import annotations

import os
import secrets
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import text

from benchmarks import e2e, harness
from wxrecon.demo.env import free_port
from wxrecon.demo.procs import Child, Supervisor
from wxrecon.store.db import Database

RECEIVER = Path(__file__).resolve().parent / "receiver.py"
OUTCOMES = "wxrecon.outcomes"  # the relay worker's queue


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
        self, orders: list[e2e.Planned], prefix: str, check: Callable[[], None]
    ) -> e2e.PhaseResult:
        return e2e.run_phase(
            self.db,
            self.admin,
            orders,
            prefix,
            self.enqueue,
            timeout=self.timeout,
            check=check,
            progress=self.progress,
        )


PATTERN = "ABBABAAB"  # A: delivery off, B: on


def blocks(per_side: int) -> list[tuple[bool, int]]:
    """(delivery on, orders) for each block of ``PATTERN``: ``per_side`` orders on each side."""
    per_block, extra = divmod(per_side, PATTERN.count("A"))
    out, seen = [], {"A": 0, "B": 0}
    for letter in PATTERN:
        out.append((letter == "B", per_block + (1 if seen[letter] < extra else 0)))
        seen[letter] += 1
    return out


def side(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The blocks of one side as one: their orders over their seconds."""
    final = sum(r["final"] for r in results)
    seconds = sum(r["seconds"] for r in results)
    machine: dict[str, float] = {}
    for r in results:
        for k, v in r.get("machine_cpu_seconds", {}).items():
            machine[k] = machine.get(k, 0.0) + v
    return {
        "orders": sum(r["orders"] for r in results),
        "final": final,
        "seconds": round(seconds, 2),
        "orders_per_second": round(final / seconds, 1) if seconds else 0.0,
        "blocks": [r["orders_per_second"] for r in results],
        "machine_cpu_ms_per_order": {
            k: round(1000 * v / max(1, final), 3) for k, v in machine.items()
        },
        "problems": [p for r in results for p in r["problems"]],
    }


def alternate(
    rig: Rig,
    plan: Callable[[int, str], list[e2e.Planned]],
    per_side: int,
    prefix: str,
    *,
    simulator_pid: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Restart the workers and beat once with a webhook target (``workers`` and ``beat`` are
    replaced in place) and run the blocks; the relay runs during the on blocks only, each
    until the block's every final order's outcome arrived. Earlier phases' outbox rows (written,
    never sent) are marked dead first and the database vacuumed. ``{"on": ..., "off": ...}``."""
    _bury_pending(rig.db)
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
    rig.beat[:] = [harness.start_beat(rig.sup, on, rig.logs / "beatD.log", rig.data)]
    harness.wait_for(lambda: all(harness.worker_ready(c) for c in rig.workers), 120, "workers")
    # Started and warmed once (its first run opens its connections and loads its keys),
    # then frozen (SIGSTOP) through the off blocks: a restart per block cost more CPU than
    # the deliveries. The receiver idles through them; its CPU and the relay's are per event.
    relay = harness.start_worker(
        rig.sup, "relay", on, rig.logs / "relay.log", concurrency=1, queues=OUTCOMES
    )
    harness.wait_for(lambda: harness.worker_ready(relay), 120, "relay", every=0.2)
    harness.wait_for(lambda: "succeeded" in relay.log_tail(50), 60, "relay's first run")
    relayed = harness.ProcSampler(lambda: [relay.pid]).start()
    spent = harness.cpu_from_now(
        {k: p for k, p in (("receiver", receiver.pid), ("simulator", simulator_pid)) if p}
    )
    waits: list[float] = []
    done: dict[bool, list[dict[str, Any]]] = {True: [], False: []}

    def check() -> None:
        for child in [*rig.workers, *rig.beat, receiver, relay]:
            if not child.alive():
                raise RuntimeError(f"{child.name} died: {child.log_tail(10)}")

    try:
        for i, (delivering, n) in enumerate(blocks(per_side)):
            os.killpg(relay.pid, signal.SIGCONT if delivering else signal.SIGSTOP)
            orders = plan(n, f"{prefix}{i}")
            machine0 = harness.machine_cpu()
            phase = rig.phase(orders, f"{prefix}{i}", check)
            machine1 = harness.machine_cpu()
            out = phase.to_json()
            # Where a block's time went, machine-wide: what delivery costs beyond the relay's
            # and receiver's own CPU (PostgreSQL, the hypervisor's steal) shows here.
            out["machine_cpu_seconds"] = {k: machine1[k] - v for k, v in machine0.items()}
            out["problems"] = e2e.ground_truth_problems(rig.admin, orders)
            if delivering:  # this block's outcomes all in before the next block
                final_at = time.monotonic()
                want = sum(r["final"] for r in done[True]) + phase.final
                while delivered(log) < want and time.monotonic() < final_at + rig.timeout:
                    check()
                    time.sleep(0.2)
                waits.append(round(time.monotonic() - final_at, 1))
            else:
                _bury_pending(rig.db)
            done[delivering].append(out)
    finally:
        os.killpg(relay.pid, signal.SIGCONT)  # a stopped process would not see the SIGTERM
    relayed.stop()
    relay_cpu = relayed.cpu - relayed.samples[0].cpu
    harness.stop_child(rig.sup, relay)
    cpu = {"relay": relay_cpu, **spent()}
    harness.stop_child(rig.sup, receiver)
    result = {"on": side(done[True]), "off": side(done[False])}
    events = delivered(log)
    result["on"] |= {
        "delivered": events,
        "all_delivered_after_last_final_s": max(waits, default=0.0),
        "cpu_seconds": {k: round(v, 2) for k, v in cpu.items()},
        "cpu_ms_per_event": {
            k: round(1000 * cpu[k] / max(1, events), 3) for k in ("relay", "receiver") if k in cpu
        },
    }
    return result


def _bury_pending(db: Database) -> None:
    """Outbox rows no relay is to send (delivery was off when they were written)."""
    with db.begin() as conn:
        conn.execute(
            text(
                "UPDATE outcomes SET delivery = 'dead', claim_token = NULL"
                " WHERE delivery = 'pending'"
            )
        )

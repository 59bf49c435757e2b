"""The end-to-end workload: N special reductions over M target merchants through the real
engine (Celery workers, beat, Redis, PostgreSQL) against the simulator (no faults).

Two phases on the same processes:

- *throughput*: the orders of every merchant interleaved; how fast they become final, what
  the workers spend (CPU, RSS), and how many provider requests that took.
- *one hot merchant*: a backlog for a single target merchant, so the shared rate limiter is
  the bottleneck; its requests within any one second must stay at or under 100, and close
  to it.

Order intake uses the Python helper (row first, task after commit), in batches.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select, text

from benchmarks import harness
from wxrecon import intake
from wxrecon.domain.states import REDUCTION_FINAL
from wxrecon.simulator import AdminClient
from wxrecon.store.db import Database
from wxrecon.store.models import SpecialReduction

INTAKE_BATCH = 500
LEASE = 900.0  # long: a backlog of tens of thousands must not outlive its intake claims


def account(mchid: str) -> str:
    return f"6217{mchid}88"


def merchants(m: int, prefix: str = "1900004") -> list[str]:
    return [f"{prefix}{i:03d}" for i in range(m)]


@dataclass(frozen=True)
class Planned:
    mchid: str
    out_request_no: str
    amount: int

    def kwargs(self) -> dict[str, Any]:
        return {
            "mchid": self.mchid,
            "bal_account_no": account(self.mchid),
            "out_request_no": self.out_request_no,
            "reduction_type": "FINANCIAL_PENALTY",
            "amount": self.amount,
            "reason": None,
        }


def plan(n: int, mchids: list[str], tag: str, rng: random.Random) -> list[Planned]:
    """``n`` orders spread evenly over ``mchids``, interleaved (every merchant busy at once)."""
    orders = [
        Planned(mchids[i % len(mchids)], f"{tag}{i:08d}", rng.randint(100, 10_000))
        for i in range(n)
    ]
    rng.shuffle(orders)
    return orders


@dataclass
class PhaseResult:
    orders: int
    final: int
    not_final: dict[str, int]
    intake_seconds: float
    seconds: float  # first intake to last final
    requests: int
    requests_by_endpoint: dict[str, dict[str, int]]
    peak_per_second: dict[str, Any]
    latency_ms: dict[str, float]
    worker_cpu_seconds: float = 0.0
    rss: dict[str, float] = field(default_factory=dict)

    @property
    def orders_per_second(self) -> float:
        return self.final / self.seconds if self.seconds else 0.0

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "orders": self.orders,
            "final": self.final,
            "not_final": self.not_final,
            "intake_seconds": round(self.intake_seconds, 2),
            "seconds": round(self.seconds, 2),
            "orders_per_second": round(self.orders_per_second, 1),
            "requests": self.requests,
            "requests_per_second": round(self.requests_per_second, 1),
            "requests_by_endpoint": self.requests_by_endpoint,
            "peak_per_second": self.peak_per_second,
            "latency_ms": self.latency_ms,
            "worker_cpu_seconds": round(self.worker_cpu_seconds, 2),
            "cpu_ms_per_order": round(1000 * self.worker_cpu_seconds / max(1, self.final), 3),
            "rss": self.rss,
        }


def submit_all(db: Database, orders: list[Planned], enqueue: Callable[..., None]) -> float:
    started = time.perf_counter()
    for i in range(0, len(orders), INTAKE_BATCH):
        with db.transaction() as session:
            batch = [o.kwargs() for o in orders[i : i + INTAKE_BATCH]]
            intake.submit_reductions(session, batch, enqueue=enqueue, lease=LEASE)
    return time.perf_counter() - started


def count_final(db: Database, prefix: str) -> dict[str, int]:
    with db.read() as session:
        return dict(
            session.execute(
                select(SpecialReduction.state, func.count())
                .where(SpecialReduction.out_request_no.like(f"{prefix}%"))
                .group_by(SpecialReduction.state)
            ).all()
        )


def latency(db: Database, prefix: str) -> tuple[float, dict[str, float]]:
    """(seconds from first intake to last final, intake-to-final percentiles in ms)."""
    with db.read() as session:
        row = session.execute(
            text(
                "SELECT extract(epoch FROM max(updated_at) - min(created_at)), "
                "percentile_cont(ARRAY[0.5, 0.9, 0.99]) WITHIN GROUP "
                "(ORDER BY extract(epoch FROM updated_at - created_at)), "
                "max(extract(epoch FROM updated_at - created_at)) "
                "FROM special_reductions WHERE out_request_no LIKE :p AND state IN "
                "('SUCCESS', 'FAILED')"
            ),
            {"p": f"{prefix}%"},
        ).one()
    span, (p50, p90, p99), worst = row
    return float(span or 0), {
        "p50": round(1000 * float(p50 or 0), 1),
        "p90": round(1000 * float(p90 or 0), 1),
        "p99": round(1000 * float(p99 or 0), 1),
        "max": round(1000 * float(worst or 0), 1),
    }


def run_phase(
    db: Database,
    admin: AdminClient,
    orders: list[Planned],
    prefix: str,
    enqueue: Callable[..., None],
    *,
    timeout: float,
    check: Callable[[], None],
    sampler: harness.ProcSampler | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> PhaseResult:
    admin.reset("stats")
    cpu0 = sampler.sample().cpu if sampler else 0.0
    intake_seconds = submit_all(db, orders, enqueue)
    deadline = time.monotonic() + timeout
    warm_rss = 0
    while True:
        check()
        states = count_final(db, prefix)
        final = sum(n for s, n in states.items() if s in REDUCTION_FINAL)
        if progress:
            progress(final, len(orders))
        if sampler and not warm_rss and final >= len(orders) // 10:
            warm_rss = sampler.sample().rss  # after start-up and warm-up: the baseline
        if final >= len(orders) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    end = sampler.sample() if sampler else None
    stats = admin.stats()
    seconds, lat = latency(db, prefix)
    result = PhaseResult(
        orders=len(orders),
        final=final,
        not_final={s: n for s, n in states.items() if s not in REDUCTION_FINAL},
        intake_seconds=intake_seconds,
        seconds=seconds,
        requests=int(stats["requests_total"]),
        requests_by_endpoint=stats["requests"],
        peak_per_second=stats["peak_per_second"],
        latency_ms=lat,
    )
    if sampler and end:
        result.worker_cpu_seconds = end.cpu - cpu0
        warm = warm_rss or end.rss
        result.rss = {
            "after_warmup_mb": round(warm / 2**20, 1),
            "end_mb": round(end.rss / 2**20, 1),
            "peak_mb": round(sampler.peak_rss / 2**20, 1),
            "growth_pct": round(100 * (end.rss - warm) / warm, 1) if warm else 0.0,
        }
    return result


def ground_truth_problems(admin: AdminClient, orders: Iterable[Planned]) -> list[str]:
    """Every order known to the provider once, applied at most once."""
    truth = {t["out_request_no"]: t for t in admin.reductions()}
    problems = []
    for o in orders:
        t = truth.get(o.out_request_no)
        if t is None:
            problems.append(f"{o.out_request_no}: unknown to the provider")
        elif t["applied_count"] > 1 or t["mismatched_param_submits"]:
            problems.append(f"{o.out_request_no}: applied {t['applied_count']} times")
    return problems

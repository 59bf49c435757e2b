"""The rate-limit phase: the limit lowered (both in the workers and in the simulator) and a
backlog for several target merchants, so that the limit and not the CPU bounds the rate.

Efficiency is the rate sustained while the backlog lasts, on each endpoint, divided by the
limit. The simulator counts admitted requests per whole second of its clock for each
(endpoint, merchant); the backlog of one endpoint lasts, for one merchant, from its first
request there to its last (every order of the phase is handed in at once, and each needs a
submit and at least one query). The first and last seconds of that span are partial and left
out. The peak is the simulator's highest count of requests, admitted or
not, for one merchant and endpoint in any one-second window: it must never exceed the limit.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rich.console import Console

from benchmarks import e2e, harness
from wxrecon.demo.procs import Supervisor
from wxrecon.store.db import Database

ENDPOINTS = ("submit_reduction", "query_reduction")
SETTLE = (4.0, 8.0)  # seconds an order of this phase stays PROCESSING at the provider


def backlog_seconds(series: Mapping[str, int]) -> list[int]:
    """The whole seconds strictly inside the span of a merchant's requests on an endpoint."""
    seconds = sorted(int(s) for s, n in series.items() if n > 0)
    if len(seconds) < 3:
        return []
    return list(range(seconds[0] + 1, seconds[-1]))


def efficiency(
    admitted: Mapping[str, Mapping[str, Mapping[str, int]]], mchids: list[str], limit: int
) -> dict[str, Any]:
    """Per endpoint: the requests per second sustained by each merchant while its backlog
    lasted, and their mean ÷ ``limit``; ``min`` is the worst endpoint's."""
    by_endpoint: dict[str, Any] = {}
    for endpoint in ENDPOINTS:
        rates: dict[str, float | None] = {}
        spans: dict[str, int] = {}
        for mchid in mchids:
            series = admitted.get(endpoint, {}).get(mchid, {})
            window = backlog_seconds(series)
            spans[mchid] = len(window)
            rates[mchid] = (
                sum(series.get(str(s), 0) for s in window) / len(window) if window else None
            )
        known = [r for r in rates.values() if r is not None]
        by_endpoint[endpoint] = {
            "sustained_per_merchant": {
                m: None if r is None else round(r, 2) for m, r in rates.items()
            },
            "backlog_seconds": spans,
            "efficiency": round(sum(known) / len(known) / limit, 3) if known else None,
            "worst_merchant_efficiency": round(min(known) / limit, 3) if known else None,
        }
    found = [v["efficiency"] for v in by_endpoint.values() if v["efficiency"] is not None]
    return {"limit": limit, "by_endpoint": by_endpoint, "min": min(found) if found else None}


def run(
    args: argparse.Namespace,
    sup: Supervisor,
    env: dict[str, str],
    workers: list[Any],
    logs: Path,
    admin: Any,
    db: Database,
    enqueue: Any,
    check: Any,
    console: Console,
    progress: Callable[[int, int], None],
    report: dict[str, Any],
    *,
    orders: list[e2e.Planned],
    prefix: str,
    mchids: list[str],
) -> None:
    """The limit lowered to ``--limit-rate`` in the simulator and in fresh workers (the limit
    is a worker setting), a backlog for each of ``mchids``. The simulator gets its limit back
    afterwards; the workers keep the lowered one (nothing after this phase calls through
    them)."""
    rate = args.limit_rate

    def restart(settings: dict[str, str], tag: str) -> None:  # the limit is read at start-up
        for w in workers:
            harness.stop_child(sup, w)
        workers[:] = [
            harness.start_worker(
                sup,
                f"bench{tag}{i}",
                settings,
                logs / f"worker{tag}{i}.log",
                concurrency=args.concurrency,
            )
            for i in range(args.workers)
        ]
        harness.wait_for(
            lambda: all(harness.worker_ready(c) for c in workers), 120, "workers", every=0.2
        )

    config = admin.config()
    before = {k: config[k] for k in ("rate_limit", "settle_delay_min", "settle_delay_max")}
    console.print(
        f"[bold]rate limit {rate}/s[/]: {len(orders):,} reductions over {len(mchids)} merchants"
    )
    # Orders stay PROCESSING a while, so each is queried several times on the poll schedule
    # and the query endpoint has a backlog beside the submits' (its first query alone would
    # only follow the submits' pace).
    admin.set_config(rate_limit=rate, settle_delay_min=SETTLE[0], settle_delay_max=SETTLE[1])
    harness.vacuum(db)  # the earlier phases' dead rows: cleared now, not on this phase's cores
    restart({**env, "WXRECON_RATE_LIMIT_PER_SECOND": str(rate)}, "L")
    try:
        load0 = os.getloadavg()
        sampler = harness.ProcSampler(lambda: [w.pid for w in workers]).start()
        phase = e2e.run_phase(
            db,
            admin,
            orders,
            prefix,
            enqueue,
            timeout=args.timeout,
            check=check,
            sampler=sampler,
            progress=progress,
        )
        sampler.stop()
        r = phase.to_json()
        # What waiting for grants costs: the workers' CPU per provider request of this phase
        # beside the throughput phase's (where nothing waits).
        r["cpu_ms_per_request"] = round(1000 * phase.worker_cpu_seconds / max(1, phase.requests), 3)
        r["load_average"] = [round(x, 2) for x in (*load0, *os.getloadavg())]
        admitted = admin.admitted_per_second()
        r["admitted_per_second"] = admitted
        r["efficiency"] = efficiency(admitted, mchids, rate)
        r["refused_429"] = sum(e.get("429", 0) for e in phase.requests_by_endpoint.values())
        r["problems"] = e2e.ground_truth_problems(admin, orders)
        report["rate_limit"] = r
    finally:
        admin.set_config(**before)

"""``python -m benchmarks``: the end-to-end workload, the client baselines and the sweep claim
cost in one run; prints a table and writes JSON to ``benchmarks/results/``.

Needs PostgreSQL (``WXRECON_BENCH_POSTGRES_URL``, default the local server) and
``redis-server`` on the PATH (a private one is started on a free port).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from benchmarks import (
    baselines,
    bulk_import,
    claim,
    crypto_floor,
    delivery_phase,
    e2e,
    harness,
    limit_phase,
)
from benchmarks.report import GOALS, LIMIT, goals, ratios, render
from wxrecon.demo.procs import Supervisor
from wxrecon.simulator import LedgerSeed, init_dir, start_subprocess
from wxrecon.store.db import Database
from wxrecon.store.sealed import Keyring

RESULTS = Path(__file__).resolve().parent / "results"
POSTGRES_URL = os.environ.get(
    "WXRECON_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
DB_NAME = "wxrecon_bench"
CLAIM_DB = "wxrecon_bench_claim"
HOT_MCHID = "1900004999"
LIMITED_PREFIX = "1900005"  # the rate-limit phase's merchants
__all__ = ["GOALS", "LIMIT", "main"]

ENGINE_SETTINGS = {
    "POLL_SCHEDULE": "250ms,500ms,1s,2s",
    "POLL_JITTER": "0.1",
    "POLL_MAX_ATTEMPTS": "200",
    "SWEEP_INTERVAL": "0.5",
    "SWEEP_BATCH": "500",
    "CLAIM_LEASE": str(int(e2e.LEASE)),
    "HTTP_READ_TIMEOUT": "10",
    "HTTP_RETRIES": "3",
    "LOG_LEVEL": "INFO",  # as in production: one line per transition
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    p.add_argument("--orders", type=int, default=20_000, help="reductions (throughput phase)")
    p.add_argument("--merchants", type=int, default=20, help="target merchants")
    p.add_argument("--hot-orders", type=int, default=2_000, help="reductions for one merchant")
    p.add_argument(
        "--limit-rate", type=int, default=20, help="rate-limit phase: requests/s (0: skip it)"
    )
    p.add_argument("--limit-merchants", type=int, default=3, help="rate-limit phase: merchants")
    p.add_argument(
        "--limit-orders", type=int, default=600, help="rate-limit phase: orders per merchant"
    )
    p.add_argument(
        "--delivery-orders",
        type=int,
        default=10_000,
        help="delivery blocks: reductions with delivery on, and as many off (-1: as many as "
        "--orders; 0: skip them)",
    )
    p.add_argument("--workers", type=int, default=1, help="celery worker nodes")
    p.add_argument("--concurrency", type=int, default=4, help="processes per worker node")
    p.add_argument("--baseline-requests", type=int, default=3_000, help="queries per baseline")
    p.add_argument("--baseline-threads", type=int, default=0, help="0: workers × concurrency")
    p.add_argument(
        "--baseline-rounds", type=int, default=3, help="interleaved rounds; the median is kept"
    )
    p.add_argument(
        "--claim-rows", default="10000,1000000", help="table sizes for the claim cost, SMALL,LARGE"
    )
    p.add_argument("--claim-batch", type=int, default=500)
    p.add_argument("--claim-repeats", type=int, default=9)
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per phase, at most")
    p.add_argument("--out-dir", type=Path, default=RESULTS, help="where the JSON goes")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    p.add_argument(
        "--skip", action="append", default=[], choices=["e2e", "baselines", "claim", "import"]
    )
    p.add_argument(
        "--import-rows",
        default="1000000,100000",
        help="CSV sizes for the import phase, LARGE,SMALL",
    )
    p.add_argument("--import-batch", type=int, default=2000, help="import --batch-size")
    p.add_argument("--import-kill-rows", type=int, default=100_000, help="kill-half-way file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    console = Console(stderr=False)
    work = Path(tempfile.mkdtemp(prefix="wxrecon-bench-"))
    report: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "note": "shared machine: other processes used the CPU during the run",
        },
        "parameters": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    ok = False
    try:
        if "e2e" not in args.skip or "baselines" not in args.skip:
            run_processes(args, work, report, console)
        if "claim" not in args.skip:
            console.print("[bold]sweep claim cost[/]")
            small, large = (int(x) for x in args.claim_rows.split(","))
            results = {}
            for size in (small, large):
                r = claim.measure(
                    POSTGRES_URL,
                    CLAIM_DB,
                    size,
                    batch=args.claim_batch,
                    repeats=args.claim_repeats,
                )
                results[str(size)] = r.to_json()
                console.print(f"  {size:>9,} rows: median {r.median_ms:.2f} ms per claim")
            report["claim"] = {
                "small": results[str(small)],
                "large": results[str(large)],
            }
        if "import" not in args.skip:
            report["import"] = bulk_import.phase(args, work, console, POSTGRES_URL, IMPORT_DB)
        report["ratios"] = ratios(report)
        report["goals"] = goals(report["ratios"])
        ok = True
    finally:
        if args.keep or not ok:
            console.print(f"work directory (logs): {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    render(console, report)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = args.out_dir / f"bench-{stamp}.json"
    target.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    console.print(f"written: {target}")
    report["json_path"] = str(target)
    return report


IMPORT_DB = "wxrecon_bench_import"


def run_processes(
    args: argparse.Namespace, work: Path, report: dict[str, Any], console: Console
) -> None:
    rng = random.Random(20261125)
    tag = datetime.now(UTC).strftime("B%H%M%S")
    mchids = e2e.merchants(args.merchants)
    rich_balance = 10**13  # nothing here should fail for want of balance
    limited = e2e.merchants(args.limit_merchants, LIMITED_PREFIX) if args.limit_rate else []
    seeds = [LedgerSeed(m, e2e.account(m), rich_balance) for m in [*mchids, HOT_MCHID, *limited]]
    sim_dir = init_dir(work / "sim", ledgers=seeds)
    db_url = harness.fresh_database(POSTGRES_URL, DB_NAME)
    logs = work / "logs"
    logs.mkdir(parents=True)
    try:
        with Supervisor() as sup:
            redis_server = harness.RedisServer(sup, work / "redis").start()
            sim = start_subprocess(
                sim_dir, args=["--settle-delay", "50ms:150ms"], log_path=logs / "simulator.log"
            )
            keys = sim_dir.sealing_keys()  # the workers' keys (client.env): intake seals with them
            db = Database(
                db_url,
                keyring=Keyring.from_settings(
                    keys["WXRECON_DATA_KEYS"], keys["WXRECON_LOOKUP_KEY"]
                ),
            )
            app, enqueue = harness.producer(redis_server.url)
            try:
                env = harness.engine_env(
                    sim.client_env(), db_url, redis_server.url, work / "data", **ENGINE_SETTINGS
                )
                workers = [
                    harness.start_worker(
                        sup, f"bench{w}", env, logs / f"worker{w}.log", concurrency=args.concurrency
                    )
                    for w in range(args.workers)
                ]
                beat = harness.start_beat(sup, env, logs / "beat.log", work / "data")
                harness.wait_for(
                    lambda: all(harness.worker_ready(c) for c in workers), 120, "workers", every=0.2
                )

                def check() -> None:
                    for child in [*workers, beat]:
                        if not child.alive():
                            raise RuntimeError(f"{child.name} died: {child.log_tail(10)}")

                admin = sim.admin()
                orders = e2e.plan(args.orders, mchids, f"{tag}T", rng)
                if "e2e" not in args.skip:
                    sampler = harness.ProcSampler(lambda: [w.pid for w in workers]).start()
                    during = crypto_floor.During(sim_dir).start()
                    # CPU of the rest of the rig over the same phase (single processes).
                    redis_pid = redis_server.child.pid if redis_server.child else None
                    singles = {"simulator": sim.pid, "beat": beat.pid, "redis": redis_pid}
                    others = harness.cpu_from_now(
                        {k: pid for k, pid in singles.items() if pid is not None}
                    )
                    load0 = os.getloadavg()
                    console.print(
                        f"[bold]throughput[/]: {args.orders:,} reductions over {args.merchants} "
                        f"merchants, {args.workers}×{args.concurrency} worker processes"
                    )
                    phase = e2e.run_phase(
                        db,
                        admin,
                        orders,
                        f"{tag}T",
                        enqueue,
                        timeout=args.timeout,
                        check=check,
                        sampler=sampler,
                        progress=ticker(console),
                    )
                    sampler.stop()
                    sampled = during.stop()
                    others_cpu = others()
                    report["throughput"] = phase.to_json()
                    t = report["throughput"]
                    t["load_average"] = [round(x, 2) for x in (*load0, *os.getloadavg())]
                    # The floor during the phase (the ratio's), and right after it for
                    # comparison; the same keys and the same machine.
                    after = crypto_floor.measure(sim_dir)
                    per_order = phase.requests / max(1, phase.final)
                    t["crypto_floor"] = (sampled or after).to_json(per_order)
                    t["crypto_floor"]["when"] = "during the phase" if sampled else "after it"
                    t["crypto_floor_after"] = after.to_json(per_order)
                    t["simulator_cpu_ms_per_order"] = round(
                        1000 * others_cpu.get("simulator", 0.0) / max(1, phase.final), 3
                    )
                    main_pids = {w.pid for w in workers}
                    main_cpu = sum(c for p, c in sampler.cpu_by_pid.items() if p in main_pids)
                    report["throughput"]["cpu_seconds"] = {
                        "worker_main_processes": round(main_cpu, 2),
                        "worker_pool_processes": round(sampler.cpu - main_cpu, 2),
                        **{k: round(v, 2) for k, v in others_cpu.items()},
                    }
                    report["throughput"]["worker_peak_hwm_mb"] = round(
                        sum(sampler.hwm_by_pid.values()) / 2**20, 1
                    )
                    report["throughput"]["problems"] = e2e.ground_truth_problems(
                        admin, orders
                    ) + state_problems(db, admin, f"{tag}T")
                    hot = e2e.plan(args.hot_orders, [HOT_MCHID], f"{tag}H", rng)
                    console.print(f"[bold]one hot merchant[/]: {args.hot_orders:,} reductions")
                    hot_phase = e2e.run_phase(
                        db,
                        admin,
                        hot,
                        f"{tag}H",
                        enqueue,
                        timeout=args.timeout,
                        check=check,
                        progress=ticker(console),
                    )
                    report["hot_merchant"] = hot_phase.to_json()
                    report["hot_merchant"]["problems"] = e2e.ground_truth_problems(admin, hot)
                    if limited:
                        limit_phase.run(
                            args,
                            sup,
                            env,
                            workers,
                            logs,
                            admin,
                            db,
                            enqueue,
                            check,
                            console,
                            ticker(console),
                            report,
                            orders=e2e.plan(
                                args.limit_orders * len(limited), limited, f"{tag}L", rng
                            ),
                            prefix=f"{tag}L",
                            mchids=limited,
                        )
                    n = args.orders if args.delivery_orders < 0 else args.delivery_orders
                    if n:
                        rig = delivery_phase.Rig(
                            sup,
                            env,
                            workers,
                            [beat],  # restarted in place
                            logs,
                            work / "data",
                            db,
                            admin,
                            enqueue,
                            concurrency=args.concurrency,
                            timeout=args.timeout,
                            progress=ticker(console),
                        )
                        console.print(
                            f"[bold]delivery off and on[/]: {n:,} reductions each, in "
                            f"{len(delivery_phase.PATTERN)} blocks ({delivery_phase.PATTERN}, "
                            "B: webhook)"
                        )
                        blocks = delivery_phase.alternate(
                            rig,
                            lambda k, p: e2e.plan(k, mchids, p, rng),
                            n,
                            f"{tag}D",
                            simulator_pid=sim.pid,
                        )
                        report["delivery_on"], report["delivery_off"] = blocks["on"], blocks["off"]
                else:
                    e2e.submit_all(db, orders[: args.baseline_requests], enqueue)
                    wait_final(db, f"{tag}T", min(len(orders), args.baseline_requests), check)
                if "baselines" not in args.skip:
                    queries = [
                        baselines.Query(o.mchid, e2e.account(o.mchid), o.out_request_no)
                        for o in orders
                    ]
                    report["baselines"] = baselines.phase(
                        args, sim_dir, str(sim.url), admin, queries, console
                    )
                admin.close()
            finally:
                db.dispose()
                app.close()
                sim.stop()
    finally:
        harness.drop_database(POSTGRES_URL, DB_NAME)


def wait_final(db: Database, prefix: str, n: int, check: Any, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while sum(v for k, v in e2e.count_final(db, prefix).items() if k in ("SUCCESS", "FAILED")) < n:
        check()
        if time.monotonic() > deadline:
            raise TimeoutError("the baseline orders did not become final")
        time.sleep(0.5)


def state_problems(db: Database, admin: Any, prefix: str) -> list[str]:
    truth = {t["out_request_no"]: t["state"] for t in admin.reductions()}
    from sqlalchemy import select

    from wxrecon.store.models import SpecialReduction

    with db.read() as session:
        rows = session.execute(
            select(SpecialReduction.out_request_no, SpecialReduction.state).where(
                SpecialReduction.out_request_no.like(f"{prefix}%")
            )
        ).all()
    return [f"{n}: local {s}, provider {truth.get(n)}" for n, s in rows if truth.get(n) != s][:20]


def ticker(console: Console) -> Any:
    last = [0.0]
    interactive = console.is_terminal

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= (1 if interactive else 15) or done >= total:
            last[0] = now
            console.print(f"  {done:,}/{total:,} final", highlight=False)

    return progress


if __name__ == "__main__":
    main(sys.argv[1:])

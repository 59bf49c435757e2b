"""``python -m benchmarks.profile_engine``: the engine's CPU, function by function, in one
process without Celery (cProfile timed by this process's CPU clock), against the simulator
and PostgreSQL: N orders taken in through the bulk helper, their chunks stepped as the
``poll_reductions`` task steps them, then sweeps of the due ones until every order is final.
It shows where the worker's own code spends its CPU (the Celery consumer's is not in it)."""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import e2e, harness
from benchmarks.run import ENGINE_SETTINGS, POSTGRES_URL
from wxrecon.demo.procs import Supervisor
from wxrecon.simulator import LedgerSeed, init_dir, start_subprocess


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile_engine")
    p.add_argument("--orders", type=int, default=2000)
    p.add_argument("--merchants", type=int, default=20)
    p.add_argument("--top", type=int, default=45)
    p.add_argument("--out", type=Path, default=None, help="write the pstats file here")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="wxrecon-prof-"))
    mchids = e2e.merchants(args.merchants)
    sim_dir = init_dir(
        work / "sim", ledgers=[LedgerSeed(m, e2e.account(m), 10**13) for m in mchids]
    )
    db_url = harness.fresh_database(POSTGRES_URL, "wxrecon_prof")
    sim = start_subprocess(sim_dir, args=["--settle-delay", "50ms:150ms"])
    try:
        with Supervisor() as sup:
            redis_server = harness.RedisServer(sup, work / "redis").start()
            env = harness.engine_env(
                sim.client_env(), db_url, redis_server.url, work / "data", **ENGINE_SETTINGS
            )
            os.environ.update({k: v for k, v in env.items() if k.startswith("WXRECON_")})
            os.environ.update(sim_dir.sealing_keys())
            run(args, db_url)
    finally:
        sim.stop()
        harness.drop_database(POSTGRES_URL, "wxrecon_prof")


def run(args: argparse.Namespace, db_url: str) -> None:
    from wxrecon import intake, runtime
    from wxrecon.config import get_settings
    from wxrecon.domain.kinds import REDUCTION
    from wxrecon.domain.states import REDUCTION_FINAL
    from wxrecon.engine.sweep import claim_due

    get_settings.cache_clear()  # read again, with this run's environment
    runtime.reset()
    rt = runtime.get()
    db = rt.db
    messages: list[dict[str, Any]] = []
    orders = e2e.plan(args.orders, e2e.merchants(args.merchants), "P", random.Random(17))
    for i in range(0, len(orders), 500):
        with db.transaction() as session:
            intake.submit_reductions(
                session,
                [o.kwargs() for o in orders[i : i + 500]],
                enqueue=lambda name, kwargs: messages.append(kwargs),
                lease=e2e.LEASE,
            )
    rec = rt.reconciler()
    profile = cProfile.Profile(time.process_time)
    cpu0 = time.process_time()

    def chunk(ids: list[int], token: str) -> None:
        for _, step in rec.steps(REDUCTION, ids, token):
            step()

    profile.enable()
    for m in messages:
        chunk(m["ids"], m["token"])
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        counts = e2e.count_final(db, "P")
        if sum(n for s, n in counts.items() if s in REDUCTION_FINAL) >= len(orders):
            break
        claims = claim_due(db, REDUCTION, limit=500, lease=60)
        if not claims:
            profile.disable()
            time.sleep(0.05)
            profile.enable()
            continue
        ids = [c.id for c in claims]
        for i in range(0, len(ids), 10):
            chunk(ids[i : i + 10], claims[0].token)
    profile.disable()
    cpu = time.process_time() - cpu0
    print(f"{len(orders)} orders, {1000 * cpu / len(orders):.2f} ms CPU per order (profiled)")
    stats = pstats.Stats(profile)
    if args.out:
        stats.dump_stats(str(args.out))
    stats.sort_stats("cumulative").print_stats(args.top)
    stats.sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()

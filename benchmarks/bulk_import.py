"""The import phase: ``wxrecon import`` of a generated CSV into a fresh PostgreSQL database
with a private Redis broker, as a child process (its rows/s and peak RSS from wait4), at two
sizes; then an import SIGKILLed half-way and run again, counting the orders exactly.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis
from rich.console import Console

from benchmarks import harness
from wxrecon.store.sealed import key_setting
from wxrecon.worker import POLL_QUEUE

# One set of sealing keys for every import of this process: a re-run compares the ledger
# numbers by their keyed hash, so it must use the look-up key of the run it follows.
KEYS = key_setting("bench")

BAL = "6222020000123456789"
TYPES = ("FINANCIAL_PENALTY", "JUDICIAL_DEDUCTION")


def write_csv(path: Path, rows: int, prefix: str) -> Path:
    with path.open("w", encoding="utf-8") as f:
        f.write("mchid,bal_account_no,out_request_no,reduction_type,amount,reason\n")
        for i in range(rows):
            mchid = 1900001000 + i % 20
            f.write(f"{mchid},{BAL},{prefix}{i:09d},{TYPES[i % 2]},{100 + i % 900},bench\n")
    return path


@dataclass
class ImportRun:
    rows: int
    seconds: float
    rows_per_second: float
    peak_rss_mb: float
    exit_code: int
    created: int
    existing: int
    # The machine is shared: its 1-minute load average before and after the run.
    load_before: float = 0.0
    load_after: float = 0.0


def _env(database: str, broker: str, data_dir: Path) -> dict[str, str]:
    env = harness.base_env()
    env.update(
        {
            "WXRECON_DATABASE_URL": database,
            "WXRECON_BROKER_URL": broker,
            "WXRECON_DATA_DIR": str(data_dir),
            "WXRECON_LOG_LEVEL": "WARNING",
            **KEYS,
        }
    )
    return env


def _argv(csv: Path, batch: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "wxrecon.cli",
        "import",
        str(csv),
        "--json",
        "--batch-size",
        str(batch),
    ]


def run_import(
    csv: Path, rows: int, database: str, broker: str, work: Path, batch: int
) -> ImportRun:
    out = work / f"{csv.stem}.out"
    load_before = os.getloadavg()[0]
    with out.open("wb") as stdout, (work / f"{csv.stem}.err").open("wb") as stderr:
        start = time.perf_counter()
        proc = subprocess.Popen(
            _argv(csv, batch), env=_env(database, broker, work), stdout=stdout, stderr=stderr
        )
        peak_kib = 0
        while proc.poll() is None:  # VmHWM: the peak since exec (ru_maxrss counts the fork)
            peak_kib = max(peak_kib, _hwm_kib(proc.pid))
            time.sleep(0.2)
        seconds = time.perf_counter() - start
    try:
        summary = json.loads(out.read_text())
    except ValueError:
        summary = {}
    return ImportRun(
        rows=rows,
        seconds=round(seconds, 2),
        rows_per_second=round(rows / seconds, 1),
        peak_rss_mb=round(peak_kib / 1024, 1),
        exit_code=proc.returncode,
        created=int(summary.get("created", -1)),
        existing=int(summary.get("existing", -1)),
        load_before=round(load_before, 2),
        load_after=round(os.getloadavg()[0], 2),
    )


def _hwm_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def order_counts(server_url: str, name: str) -> tuple[int, int]:
    rows = harness.pg_execute(
        server_url,
        "SELECT count(*), count(DISTINCT (mchid, out_request_no)) FROM special_reductions",
        database=name,
    )
    return int(rows[0][0]), int(rows[0][1])


def enqueued_ids(broker: str) -> list[int]:
    """Every order id in the poll queue's messages, where the import's polls go (Celery's
    Redis transport: JSON with a base64 body of [args, kwargs, embed])."""
    client = redis.Redis.from_url(broker)
    ids: list[int] = []
    try:
        for raw in client.lrange(POLL_QUEUE, 0, -1):
            body = json.loads(base64.b64decode(json.loads(raw)["body"]))
            ids += body[1].get("ids", [body[1].get("id")])
    finally:
        client.close()
    return ids


def kill_and_rerun(
    server_url: str, name: str, broker: str, work: Path, rows: int, batch: int
) -> dict[str, Any]:
    """SIGKILL an import once half the rows are stored, run it again, count exactly."""
    database = harness.fresh_database(server_url, name)
    csv = write_csv(work / "kill.csv", rows, "K")
    proc = subprocess.Popen(
        _argv(csv, batch),
        env=_env(database, broker, work),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    stored_at_kill = 0
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        stored_at_kill = order_counts(server_url, name)[0]
        if stored_at_kill >= rows // 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    killed = proc.returncode == -signal.SIGKILL
    stored_at_kill = order_counts(server_url, name)[0]
    rerun = run_import(csv, rows, database, broker, work, batch)
    total, distinct = order_counts(server_url, name)
    ids = enqueued_ids(broker)
    return {
        "rows": rows,
        "killed": killed,
        "stored_when_killed": stored_at_kill,
        "rerun": asdict(rerun),
        "orders": total,
        "distinct_orders": distinct,
        "enqueued_ids": len(ids),
        "enqueued_distinct": len(set(ids)),
        "exact": total == distinct == rows
        and rerun.created + rerun.existing == rows
        and len(ids) == len(set(ids)),
    }


def measure(
    server_url: str, name: str, sizes: list[int], work: Path, batch: int, kill_rows: int
) -> dict[str, Any]:
    from wxrecon.demo.procs import Supervisor

    report: dict[str, Any] = {"batch_size": batch, "runs": {}}
    with Supervisor() as sup:
        for size in sizes:
            server = harness.RedisServer(sup, work / f"redis-{size}").start()
            database = harness.fresh_database(server_url, name)
            csv = write_csv(work / f"import-{size}.csv", size, "B")
            run = run_import(csv, size, database, server.url, work, batch)
            run_json = asdict(run)
            run_json["enqueued_ids"] = len(enqueued_ids(server.url))
            report["runs"][str(size)] = run_json
            csv.unlink()
            harness.stop_child(sup, server.child) if server.child else None
        server = harness.RedisServer(sup, work / "redis-kill").start()
        report["kill_and_rerun"] = kill_and_rerun(
            server_url, name, server.url, work, kill_rows, batch
        )
    harness.drop_database(server_url, name)
    return report


GOALS = {"rows_per_second": ("≥", 5000.0), "peak_rss_mb": ("≤", 150.0)}


def phase(
    args: argparse.Namespace, work: Path, console: Console, server_url: str, name: str
) -> dict[str, Any]:
    """``wxrecon import`` at two sizes (rows/s, peak RSS), and killed half-way then re-run,
    in database ``name`` of ``server_url``; printed as it goes."""
    console.print("[bold]bulk import[/]")
    sizes = [int(x) for x in args.import_rows.split(",")]
    r = measure(server_url, name, sizes, work, args.import_batch, args.import_kill_rows)
    large, small = (r["runs"][str(n)] for n in sizes)
    growth = (
        round((large["peak_rss_mb"] / small["peak_rss_mb"] - 1) * 100, 1)
        if small["peak_rss_mb"]
        else None
    )
    r["rss_large_vs_small_pct"] = growth
    goals = {
        "rows_per_second": (large["rows_per_second"], *GOALS["rows_per_second"]),
        "peak_rss_mb": (large["peak_rss_mb"], *GOALS["peak_rss_mb"]),
        "rss_large_vs_small_pct": (growth, "≤", 10.0),
    }
    r["goals"] = {}
    for name, (value, op, target) in goals.items():
        met = value is not None and (value >= target if op == "≥" else value <= target)
        r["goals"][name] = {"value": value, "goal": f"{op} {target:g}", "met": met}
        console.print(f"  {name}: {value} (goal {op} {target:g}) {'met' if met else 'NOT met'}")
    for n, run in r["runs"].items():
        console.print(
            f"  {int(n):>9,} rows: {run['rows_per_second']:,.0f} rows/s "
            f"({run['seconds']} s), peak RSS {run['peak_rss_mb']} MB, exit {run['exit_code']}, "
            f"load average {run['load_before']} -> {run['load_after']}"
        )
    if growth is not None:
        console.print(f"  peak RSS {sizes[0]:,} vs {sizes[1]:,} rows: {growth:+.1f} %")
    k = r["kill_and_rerun"]
    console.print(
        f"  killed at {k['stored_when_killed']:,} of {k['rows']:,}; after the re-run "
        f"{k['orders']:,} orders ({k['distinct_orders']:,} distinct): "
        f"{'exact' if k['exact'] else 'NOT exact'}; re-run {k['rerun']['created']:,} new + "
        f"{k['rerun']['existing']:,} known at {k['rerun']['rows_per_second']:,.0f} rows/s, "
        f"{k['enqueued_ids']:,} ids enqueued ({k['enqueued_distinct']:,} distinct)"
    )
    return r

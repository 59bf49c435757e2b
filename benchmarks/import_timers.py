"""``python -m benchmarks.import_timers import FILE.csv --json``: ``wxrecon import`` run in this
process with wall-clock timers around its known costs, printed on stderr at exit.

A profiler (pyinstrument, cProfile) shows where the CPU goes but inflates Python-heavy code
two- to threefold; these timers cost a few microseconds a call, so their sums are close to
the command's own wall time, waits on the database and the broker included (docs/benchmarks.md,
"Import phase").
"""

from __future__ import annotations

import atexit
import functools
import sys
import time
from typing import Any

START = time.perf_counter()
TOTALS: dict[str, list[float]] = {}


def timed(module: Any, name: str) -> None:
    real = getattr(module, name)

    @functools.wraps(real)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            total = TOTALS.setdefault(name, [0.0, 0])
            total[0] += time.perf_counter() - began
            total[1] += 1

    setattr(module, name, wrapper)


def report() -> None:
    wall = time.perf_counter() - START
    print(f"wall {wall:.2f} s, CPU {time.process_time():.2f} s", file=sys.stderr)
    for name, (seconds, calls) in sorted(TOTALS.items(), key=lambda kv: -kv[1][0]):
        each = seconds / calls * 1e6
        print(f"  {name:18} {seconds:7.3f} s {calls:8d} calls {each:9.1f} µs each", file=sys.stderr)


def main() -> None:
    import wxrecon.cli.tree  # noqa: F401 (the command tree's imports, timed as start-up)

    TOTALS["start-up imports"] = [time.perf_counter() - START, 1]
    from wxrecon import intake
    from wxrecon.cli import csv_import
    from wxrecon.cli import main as cli_main
    from wxrecon.engine import intake as engine_intake
    from wxrecon.store import sql

    timed(intake, "default_enqueue")  # one Celery send_task per message
    timed(sql, "insert_new")
    timed(sql, "find_by_numbers")  # rows stored before (a re-run)
    timed(engine_intake, "_record_new")  # first events, log lines, counts
    timed(engine_intake, "reduction_values")  # sealing and the look-up hash
    timed(csv_import, "check")  # validation
    atexit.register(report)
    sys.argv = ["wxrecon", *sys.argv[1:]]
    cli_main()


if __name__ == "__main__":
    main()

"""``wxrecon stats``: what is in flight, what is stuck, what finished, what failed."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import typer
from rich.columns import Columns
from rich.console import Group
from rich.live import Live
from rich.text import Text

from wxrecon.cli.database import database
from wxrecon.cli.output import JsonOpt, Output, ago, fen, state_text, table
from wxrecon.cli.params import Duration


def provider_errors(metrics_dir: str | None) -> dict[str, float] | None:
    """``endpoint/code -> count`` summed over every worker process's samples."""
    if not metrics_dir or not Path(metrics_dir).is_dir():
        return None
    from prometheus_client import CollectorRegistry, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=metrics_dir)
    out: dict[str, float] = {}
    for family in registry.collect():
        if family.name != "wxrecon_provider_errors":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.value:
                key = f"{sample.labels['endpoint']}/{sample.labels['code']}"
                out[key] = out.get(key, 0) + sample.value
    return out


def collect(db: Any, metrics_dir: str | None, now: datetime | None = None) -> dict[str, Any]:
    from wxrecon.store import reads

    now = now or datetime.now(UTC)
    with db.read() as session:
        base = reads.stats(session, now=now)
        by_merchant = reads.reductions_by_merchant(session)
        by_caller = reads.orders_by_caller(session)
        oldest = reads.oldest_overdue(session, now)
        finalised = reads.finalised_since(session, now - timedelta(hours=1))
    return {
        "reductions": base.reductions,
        "reduction_amounts": base.reduction_amounts,
        "bills": base.bills,
        "by_merchant": by_merchant,
        "by_caller": by_caller,
        "due_now": {"reductions": base.reductions_due, "bills": base.bills_due},
        "oldest_overdue": oldest,
        "finalised_last_hour": finalised,
        "provider_errors": provider_errors(metrics_dir),
        "stray_tasks": _strays(),
    }


def _strays() -> dict[str, int] | None:
    """wxrecon tasks on queues no wxrecon worker reads (None: not a Redis broker)."""
    from wxrecon.cli.database import settings
    from wxrecon.strays import stray_tasks

    s = settings()
    try:
        found = stray_tasks(s.broker_url, s.watch_queues)
    except Exception:  # the broker is down: stats still shows the database's side
        return None
    return None if found is None else {q: n for q, n in found.items() if n}


def render(data: dict[str, Any]) -> Group:
    reductions = table(
        "reductions by state",
        ["state", "orders", "amount"],
        (
            [state_text(s), n, fen(data["reduction_amounts"].get(s, 0))]
            for s, n in sorted(data["reductions"].items())
        ),
    )
    bills = table(
        "bills by state",
        ["state", "bills"],
        ([state_text(s), n] for s, n in sorted(data["bills"].items())),
    )
    states = sorted({s for m in data["by_merchant"].values() for s in m})
    merchants = table(
        "reductions by target merchant",
        ["mchid", *states],
        ([m, *(row.get(s, 0) for s in states)] for m, row in sorted(data["by_merchant"].items())),
    )
    callers = table(
        "orders by caller",
        ["caller", "reductions", "bills"],
        (
            [c, row.get("reduction", 0), row.get("bill", 0)]
            for c, row in sorted(data.get("by_caller", {}).items())
        ),
    )
    errors = data["provider_errors"]
    if errors is None:
        error_view: Any = Text("provider errors: set PROMETHEUS_MULTIPROC_DIR to see them", "dim")
    else:
        error_view = table(
            "provider errors by code",
            ["endpoint/code", "count"],
            ([k, int(v)] for k, v in sorted(errors.items(), key=lambda kv: -kv[1])),
        )
    oldest = data["oldest_overdue"]
    if oldest:
        line = Text.assemble(
            "oldest overdue: ",
            (f"{oldest['kind']} #{oldest['id']} {oldest['number']} ", "bold"),
            state_text(oldest["state"]),
            f" · {ago(oldest['overdue_seconds'])} overdue",
        )
    else:
        line = Text("nothing overdue", style="green")
    due = data["due_now"]
    fin = data["finalised_last_hour"]
    summary = Text(
        f"due now: {due['reductions']} reductions, {due['bills']} bills · finalised in the "
        f"last hour: {fin.get('reduction', 0)} reductions, {fin.get('bill', 0)} bills"
    )
    parts: list[Any] = [
        Columns([reductions, bills]),
        Columns([merchants, callers]),
        error_view,
        line,
        summary,
    ]
    for queue, count in sorted((data.get("stray_tasks") or {}).items()):
        parts.append(
            Text(
                f"! {count} wxrecon task(s) waiting on queue {queue!r}, which no wxrecon worker "
                "reads: the sender forgot queue= / task_routes (README: Enqueueing)",
                style="bold red",
            )
        )
    return Group(*parts)


def stats(
    watch: bool = typer.Option(False, "--watch", help="Refresh in place until Ctrl-C."),
    interval: float = typer.Option(
        2.0,
        "--interval",
        help="Time between refreshes (at least 0.2s).",
        parser=Duration(minimum=0.2),
    ),
    metrics_dir: str = typer.Option(
        None,
        "--metrics-dir",
        help="Where workers write metric samples (default: PROMETHEUS_MULTIPROC_DIR).",
    ),
    json_out: JsonOpt = False,
) -> None:
    """Orders by state and merchant, the oldest overdue, recent finals, provider errors.

    Provider errors by code come from the workers' metric samples (PROMETHEUS_MULTIPROC_DIR).
    """
    db = database()
    mdir = metrics_dir or os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    out = Output(json_out)
    if json_out:
        out.json(collect(db, mdir))
        return
    if not watch:
        out.print(render(collect(db, mdir)))
        return
    try:
        with Live(render(collect(db, mdir)), console=out.console, auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                live.update(render(collect(db, mdir)), refresh=True)
    except KeyboardInterrupt:
        pass

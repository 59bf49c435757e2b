"""What ``wxrecon demo`` shows: the live table while orders converge, and the summary.

Pure rendering of plain data. Built for an 80-column terminal: full state names and amounts
always fit (the order number is shown without the run id, which the header carries; the
categories have short labels); only the free-text ``detail`` column is shortened.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from rich.console import Console, Group, JustifyMethod
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from wxrecon.cli.output import ago, fen, state_text
from wxrecon.demo import mix
from wxrecon.domain.kinds import KINDS

SHOWN_ROWS = 18

# Short labels for the live table (the summary spells the categories out).
SHORT_CATEGORY = {
    mix.NORMAL: "normal",
    mix.SLOW_SETTLE: "slow settle",
    mix.NOT_ENOUGH: "low balance",
    mix.BILL: "bill",
}
# (header, width, justify): each width fits the column's widest value (the tail of an order
# number, a merchant id, an amount up to ¥99,999.99, WAIT_USER_CONFIRM, "2m30s").
COLUMNS: tuple[tuple[str, int, JustifyMethod], ...] = (
    ("order", 6, "left"),
    ("category", 11, "left"),
    ("target", 10, "left"),
    ("amount", 10, "right"),
    ("state", 17, "left"),
    ("tries", 5, "right"),
    ("age", 5, "right"),
)
MIN_DETAIL = 6


@dataclass
class Tracked:
    """One demo order as the live view sees it."""

    kind: str  # "reduction" or "bill"
    number: str
    category: str
    target: str
    amount: int
    state: str = "-"
    attempts: int = 0
    order_id: int | None = None
    first_seen: float | None = None
    final_at: float | None = None
    detail: str = ""

    @property
    def final(self) -> bool:
        return self.state in KINDS[self.kind].final


def short_number(number: str, run_id: str) -> str:
    """``DEMO<run>R00001`` → ``R00001``: the header names the run."""
    prefix = f"DEMO{run_id}"
    return number[len(prefix) :] if number.startswith(prefix) else number


def order_table(items: list[Tracked], run_id: str, now: float, width: int) -> Table:
    # The orders still moving first, then the most recently finished ones.
    moving = [t for t in items if not t.final]
    finished = sorted((t for t in items if t.final), key=lambda t: -(t.final_at or 0))
    table = Table(header_style="bold", box=None, pad_edge=False, padding=(0, 1))
    for name, fixed, justify in COLUMNS:
        table.add_column(name, no_wrap=True, justify=justify, min_width=fixed, max_width=fixed)
    rest = width - sum(fixed for _, fixed, _ in COLUMNS) - 2 * len(COLUMNS)
    if rest >= MIN_DETAIL:  # the only column that gives way on a narrow terminal
        table.add_column("detail", no_wrap=True, overflow="ellipsis", max_width=rest)
    for t in (moving + finished)[:SHOWN_ROWS]:
        age = (t.final_at or now) - (t.first_seen or now)
        cells: list[str | Text] = [
            short_number(t.number, run_id),
            SHORT_CATEGORY.get(t.category, t.category),
            t.target,
            fen(t.amount),
            state_text(t.state),
            str(t.attempts),
            ago(age),
        ]
        if rest >= MIN_DETAIL:
            cells.append(Text(t.detail, style="dim"))
        table.add_row(*cells)
    return table


def live_view(
    items: list[Tracked],
    *,
    run_id: str,
    sim_url: str,
    phase: str,
    elapsed: float,
    faults_fired: dict[str, int],
    outcomes: tuple[int, int, int] | None = None,
    width: int = 80,
    now: float | None = None,
) -> Group:
    now = time.monotonic() if now is None else now
    done = sum(t.final for t in items)
    header = Text.assemble(
        ("wxrecon demo ", "bold"),
        f"run {run_id} · simulator {sim_url or '…'} · ",
        (phase, "cyan"),
        f" · {elapsed:.0f}s",
    )
    bar = Table.grid(padding=(0, 1))
    bar.add_row(
        ProgressBar(total=max(1, len(items)), completed=done, width=40),
        Text(f"{done}/{len(items)} final"),
    )
    counts = Counter(t.state for t in items)
    tally = Text("  ").join(
        Text.assemble(state_text(s), f" {n}") for s, n in sorted(counts.items())
    )
    fired = sum(faults_fired.values())
    detail = ", ".join(f"{k} ×{n}" for k, n in sorted(faults_fired.items()))
    faults = Text(
        f"provider faults injected so far: {fired}" + (f" ({detail})" if fired else ""),
        style="dim",
    )
    lines: list[Any] = [header, bar, tally, faults]
    if outcomes is not None:
        lines.append(outcome_line(*outcomes, done))
    hidden = len(items) - min(len(items), SHOWN_ROWS)
    footer = Text(f"… and {hidden} more" if hidden > 0 else "", style="dim")
    return Group(
        Panel(Group(*lines), expand=False),
        order_table(items, run_id, now, width),
        footer,
    )


def outcome_line(told: int, received: int, duplicates: int, final: int) -> Text:
    """The webhook receiver's count: how many final orders it has been told about."""
    return Text(
        f"outcomes received: {told}/{final} final orders told, {received} events"
        + (f" ({duplicates} duplicates dropped)" if duplicates else ""),
        style="green" if told == final else "yellow",
    )


def render_summary(console: Console, s: dict[str, Any]) -> None:
    t = Table(title="summary", title_justify="left", header_style="bold")
    for name in ("category", "orders", "final states", "median s to final", "max s"):
        t.add_column(name)
    for category, states in s["by_category"].items():
        timing = s["seconds_to_final"].get(category, {})
        t.add_row(
            category,
            str(sum(states.values())),
            Text(", ").join(
                Text.assemble(state_text(k), f" {n}") for k, n in sorted(states.items())
            ),
            str(timing.get("median", "-")),
            str(timing.get("max", "-")),
        )
    console.print(t)
    if s["faults_injected"]:
        faults = ", ".join(f"{k} ×{n}" for k, n in sorted(s["faults_injected"].items()))
        console.print(f"provider faults injected and survived: {faults}")
    if "outcomes" in s:
        o = s["outcomes"]
        console.print(
            f"outcomes delivered to the webhook receiver: {o['final_orders_told']}/{s['orders']}"
            f" orders told, {o['events_received']} events"
            + (f", {o['duplicates']} duplicates dropped by event id" if o["duplicates"] else "")
        )
    verdict = (
        f"[bold green]✓ all {s['orders']} orders converged and match the provider's ground "
        f"truth[/] in {s['elapsed_seconds']}s"
        if s["ok"]
        else f"[bold red]✗ {len(s['problems'])} order(s) did not converge or disagree:[/] "
        + "; ".join(s["problems"][:5])
    )
    console.print(verdict)

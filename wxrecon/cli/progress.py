"""Progress of a long operator action (``import``, bulk ``retry``), and a clean Ctrl-C.

On a terminal: a Rich bar (rows done, refused, rate, ETA). Elsewhere (a log, a pipe, CI):
one summary line on stderr every :data:`EVERY` seconds, so a long run is never silent.
Ctrl-C sets a flag the action checks between batches: it stops at a batch boundary (what
is committed stays committed) and says how far it got, instead of dying mid-batch.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

EVERY = 5.0  # seconds between the summary lines when not on a terminal


class Stop:
    """Set by the first Ctrl-C (SIGINT); a second one interrupts at once, as usual."""

    def __init__(self) -> None:
        self.requested = False

    def __bool__(self) -> bool:
        return self.requested


@contextmanager
def stop_on_interrupt() -> Iterator[Stop]:
    stop = Stop()
    if threading.current_thread() is not threading.main_thread():
        yield stop  # signals reach the main thread only
        return

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        if stop.requested:
            raise KeyboardInterrupt
        stop.requested = True

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


class Reporter:
    """``update(completed, rows=, refused=)``: ``completed`` counts toward ``total`` (bytes
    of the file for an import, so the ETA needs no line count first; orders for a retry)."""

    def __init__(
        self,
        console: Console,
        what: str,
        total: int,
        *,
        quiet: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.console, self.what, self.total, self.clock = console, what, max(total, 1), clock
        self.start = self.last = clock()
        self.bar: Progress | None = None
        self.lines = not quiet and not console.is_terminal
        if not quiet and console.is_terminal:
            self.bar = Progress(
                TextColumn(f"{what} "),
                BarColumn(),
                TextColumn("{task.fields[rows]:,} rows, {task.fields[refused]:,} refused"),
                TextColumn("{task.fields[rate]:,.0f}/s"),
                TimeRemainingColumn(),
                console=console,
            )
            self.task = self.bar.add_task(what, total=self.total, rows=0, refused=0, rate=0.0)

    def __enter__(self) -> Reporter:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()

    def rate(self, rows: int) -> float:
        elapsed = self.clock() - self.start
        return rows / elapsed if elapsed > 0 else 0.0

    def update(self, completed: int, *, rows: int, refused: int) -> None:
        if self.bar is not None:
            rate = self.rate(rows)
            self.bar.update(self.task, completed=completed, rows=rows, refused=refused, rate=rate)
        elif self.lines and self.clock() - self.last >= EVERY:
            self.last = self.clock()
            self.console.print(self.line(completed, rows=rows, refused=refused), soft_wrap=True)

    def line(self, completed: int, *, rows: int, refused: int) -> str:
        """The one-line summary (also what an interrupted run ends with)."""
        done = min(completed / self.total, 1.0)
        rate = self.rate(rows)
        eta = ""
        if 0 < done < 1:
            left = (self.clock() - self.start) * (1 - done) / done
            eta = f", about {left:,.0f} s left"
        return (
            f"{self.what}: {rows:,} rows, {refused:,} refused, {rate:,.0f} rows/s, "
            f"{done:.0%} done{eta}"
        )

"""After ``reduction submit`` / ``bill track``: enqueue, optionally follow, say where it stands.

With ``--wait`` the exit code tells a script the outcome: 0 SUCCESS; 3 final failure
(FAILED/REJECTED, CLOSED/CANCELLED) with the reason; 5 NEEDS_REVIEW; 4 still in flight at
``--timeout`` (the order is kept and still reconciled: it must not be resubmitted).
A broker that cannot take the message is not a failure: the row is committed and the sweep
enqueues it; the command says so on stderr.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any

import typer

from wxrecon.cli.errors import (
    EXIT_FINAL_FAILURE,
    EXIT_IN_FLIGHT,
    EXIT_NEEDS_REVIEW,
    CliError,
    describe,
    warn,
)
from wxrecon.cli.kinds import Kind
from wxrecon.cli.output import Output, state_text
from wxrecon.cli.params import Duration

WaitOpt = Annotated[bool, typer.Option("--wait", help="Follow it until it is final.")]
TimeoutOpt = Annotated[
    float,
    typer.Option(
        "--timeout",
        help="With --wait: give up after this long (seconds, or 30s, 10m); more than 0.",
        parser=Duration(positive=True),
    ),
]

# Tests replace this to capture what would be sent; None means the engine's Celery app.
ENQUEUE: Callable[[str, dict[str, Any]], None] | None = None

NEEDS_REVIEW = "NEEDS_REVIEW"
SUCCESS = "SUCCESS"


class Sender:
    """The enqueue function given to intake: a failed send is recorded, never raised (the
    row is already committed), and once the broker failed the rest are left to the sweep."""

    def __init__(self) -> None:
        self.failure: str | None = None
        self.skipped = 0

    def __call__(self, name: str, kwargs: dict[str, Any]) -> None:
        if self.failure is not None:
            self.skipped += 1
            return
        try:
            if ENQUEUE is not None:
                ENQUEUE(name, kwargs)
            else:
                from wxrecon.intake import default_enqueue

                default_enqueue(name, kwargs)
        except Exception as exc:  # broker down, refused, misconfigured
            self.failure = describe(exc)[1]

    def warn_if_failed(self, json_mode: bool) -> None:
        if self.failure is not None:
            from wxrecon.cli.output import safe_url
            from wxrecon.config import get_settings

            broker = safe_url(get_settings().broker_url)
            warn(
                f"could not enqueue ({self.failure}; broker {broker}): the order is saved and "
                "will be swept (the next sweep enqueues it); do not submit it again",
                json_mode,
            )


def report_intake(
    kind: Kind,
    db: Any,
    result: Any,
    line: str,
    *,
    sender: Sender,
    wait: bool,
    timeout: float,
    json_out: bool,
) -> None:
    """Say where the new (or known) order stands; with ``wait``, follow it first."""
    sender.warn_if_failed(json_out)
    out = Output(json_out)
    state, order, last = result.state, None, ""
    if wait:
        state, order, last = follow(kind, db, result.order_id, timeout, json_out)
    if json_out:
        out.json({"id": result.order_id, "created": result.created, "state": state})
    else:
        out.print(f"{line}, now", state_text(state))
    if not wait or state == SUCCESS:
        return
    what = f"{kind.label} #{result.order_id}"
    if state in kind.active:
        raise CliError(
            f"{what} still {state} after {timeout:g}s: it is kept and still being reconciled; "
            f"do not submit it again (follow it with `wxrecon {kind.name} show "
            f"{result.order_id}`)",
            EXIT_IN_FLIGHT,
        )
    if state == NEEDS_REVIEW:
        raise CliError(
            f"{what} needs review: {kind.failure_reason(order, last)} (see the runbook; "
            f"`wxrecon {kind.name} show {result.order_id}`)",
            EXIT_NEEDS_REVIEW,
        )
    if state in kind.failed:
        raise CliError(f"{what} {state}: {kind.failure_reason(order, last)}", EXIT_FINAL_FAILURE)


def follow(kind: Kind, db: Any, order_id: int, timeout: float, quiet: bool) -> tuple[str, Any, str]:
    """Watch an order until it leaves the in-flight states or ``timeout`` passes, with a
    live status line; returns its state, the row and its last event's reason."""
    from wxrecon.store import reads as queries

    out = Output(quiet)
    deadline = time.monotonic() + timeout
    with out.err.status("", spinner="dots") as status:
        while True:
            with db.read() as session:
                order = kind.get(session, str(order_id))
                events = queries.events_of(session, kind.name, order.id)
            state = str(order.state)
            last = events[-1].reason if events else ""
            if not quiet:
                status.update(
                    f"{kind.label} #{order.id} [bold]{state}[/] · attempts {order.attempts}"
                    f" · {last}"
                )
            if state not in kind.active or time.monotonic() > deadline:
                return state, order, last or ""
            time.sleep(0.5)

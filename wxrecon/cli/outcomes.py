"""``wxrecon outcomes``: the outcome events told to the business apps, and re-delivery.

``outcomes list --json`` is also the pull contract (README, "Outcome delivery"): version 1
of its document is ``{"version": 1, "outcomes": [...], "next_after": <id or null>}``, each
outcome the stored event plus its delivery state.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from wxrecon.cli.database import database
from wxrecon.cli.errors import CliError, bad_input
from wxrecon.cli.output import JsonOpt, Output, ago, state_text, table
from wxrecon.cli.params import Duration, Since, State

app = typer.Typer(no_args_is_help=True)

CONTRACT_VERSION = 1
DELIVERY_COLUMNS = (
    "delivery",
    "attempts",
    "next_attempt_at",
    "last_error",
    "task_sent_at",
    "webhook_sent_at",
    "delivered_at",
)

StateOpt = Annotated[
    str | None,
    typer.Option(
        "--state",
        help="pending, delivered or dead.",
        parser=State(("PENDING", "DELIVERED", "DEAD")),
        metavar="STATE",
        show_default=False,
    ),
]
SinceOpt = Annotated[
    datetime | None,
    typer.Option(
        "--since",
        help="Occurred at or after: an ISO time (UTC) or a duration back (2h).",
        parser=Since(),
        metavar="SINCE",
        show_default=False,
    ),
]


def document(row: Any) -> dict[str, Any]:
    """One outcome as the contract shows it: ``id``, the event, its delivery."""
    return {
        "id": row["id"],
        "event": json.loads(row["payload"]),
        **{c: row[c] for c in DELIVERY_COLUMNS},
    }


@app.command("list")
def list_outcomes(
    state: StateOpt = None,
    since: SinceOpt = None,
    after: Annotated[
        int | None,
        typer.Option("--after", min=0, help="Only ids after this one (the pull cursor)."),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 100,
    json_out: JsonOpt = False,
) -> None:
    """Outcome events, oldest first."""
    from wxrecon.store import outbox

    rows = outbox.listing(
        database(),
        delivery=state.lower() if state else None,
        since=since,
        after=after,
        limit=limit,
    )
    out = Output(json_out)
    if json_out:
        out.json(
            {
                "version": CONTRACT_VERSION,
                "outcomes": [document(r) for r in rows],
                "next_after": rows[-1]["id"] if len(rows) == limit else None,
            }
        )
        return
    now = datetime.now(UTC)
    out.print(
        table(
            f"{len(rows)} outcome(s)",
            ["id", "type", "order", "state", "occurred", "delivery", "attempts", "last error"],
            (
                [
                    r["id"],
                    r["type"],
                    r["order_no"] or "-",
                    state_text(r["state"]),
                    ago((now - r["occurred_at"]).total_seconds()) + " ago",
                    r["delivery"],
                    r["attempts"],
                    r["last_error"] or "",
                ]
                for r in rows
            ),
        )
    )


def _ref(text: str) -> str:
    if not text or len(text) > 96 or not text.isprintable():
        raise bad_input("an outcome is named by its id or its event_id")
    return text


@app.command("show")
def show(
    ref: Annotated[str, typer.Argument(metavar="ID", help="Its id or its event_id.")],
    json_out: JsonOpt = False,
) -> None:
    """One outcome event and its delivery."""
    from wxrecon.store import outbox

    row = outbox.find(database(), _ref(ref))
    if row is None:
        raise CliError(f"no outcome {ref}")
    doc = document(row)
    out = Output(json_out)
    if json_out:
        out.json(doc)
    else:
        out.show(f"outcome {row['id']}", {**doc["event"], **{c: doc[c] for c in DELIVERY_COLUMNS}})


@app.command("redeliver")
def redeliver(
    ref: Annotated[
        str | None, typer.Argument(metavar="[ID]", help="Its id or event_id.", show_default=False)
    ] = None,
    dead: Annotated[bool, typer.Option("--dead", help="Every dead outcome.")] = False,
    since: SinceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Send outcomes again to every target (receivers deduplicate by event_id)."""
    from wxrecon.store import outbox

    if (ref is None) == (not dead):
        raise bad_input("give an ID or --dead, not both")
    if since is not None and not dead:
        raise bad_input("--since goes with --dead")
    db = database()
    now = datetime.now(UTC)
    if dead:
        ids = outbox.redeliver(db, dead=True, dead_since=since, now=now)
    else:
        assert ref is not None
        row = outbox.find(db, _ref(ref))
        if row is None:
            raise CliError(f"no outcome {ref}")
        ids = outbox.redeliver(db, ids=[row["id"]], now=now)
    out = Output(json_out)
    if json_out:
        out.json({"redelivered": ids})
    else:
        out.print(f"{len(ids)} outcome(s) pending delivery again")


@app.command("prune")
def prune(
    delivered_before: Annotated[
        float,
        typer.Option(
            "--delivered-before",
            help="Delete events delivered longer ago than this (at least 1d), e.g. 30d.",
            parser=Duration(minimum=86_400),
            metavar="AGE",
        ),
    ],
    batch: Annotated[int, typer.Option("--batch", min=1, max=100_000)] = 5_000,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Delete delivered outcome events older than an age, in committed batches (the outbox
    otherwise keeps every event forever); pending and dead ones are kept. Ctrl-C stops at a
    batch boundary."""
    from datetime import timedelta

    from wxrecon.cli.progress import stop_on_interrupt
    from wxrecon.store import outbox

    db = database()
    cutoff = datetime.now(UTC) - timedelta(seconds=delivered_before)
    if not yes and not json_out:
        typer.confirm(
            f"delete outcome events delivered before {cutoff:%Y-%m-%d %H:%M} UTC?", abort=True
        )
    pruned = 0
    with stop_on_interrupt() as stop:
        while not stop:
            done = outbox.prune(db, delivered_before=cutoff, batch=batch)
            pruned += done
            if done < batch:
                break
    out = Output(json_out)
    if json_out:
        out.json({"pruned": pruned, "delivered_before": cutoff, "interrupted": bool(stop)})
    else:
        tail = " (interrupted: run it again to go on)" if stop else ""
        out.print(f"{pruned} delivered outcome event(s) deleted{tail}")

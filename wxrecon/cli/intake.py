"""``wxrecon intake``: orders sent by name that are not written yet (Redis brokers).

``status`` shows what waits on ``wxrecon.intake`` and in each intake pump's hands; ``dead``
lists the messages a pump set aside (the takers failed on them for another reason than the
database: see the worker's log line naming the message id); ``replay`` puts them back.
Listings show message ids, task names and order numbers, never a ledger number.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer

from wxrecon.cli.errors import CliError, bad_input
from wxrecon.cli.output import JsonOpt, Output, table

app = typer.Typer(no_args_is_help=True)

LimitOpt = Annotated[int, typer.Option("--limit", min=1, max=10_000, help="At most this many.")]


@contextmanager
def _broker() -> Iterator[Any]:
    import redis

    from wxrecon.cli.database import settings
    from wxrecon.config import REDIS_SCHEMES

    url = settings().broker_url
    if not url.startswith(REDIS_SCHEMES):
        raise CliError("the intake pump runs on Redis brokers only (WXRECON_BROKER_URL)")
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        client.ping()
        yield client
    except redis.RedisError as exc:
        raise CliError(f"the broker does not answer ({type(exc).__name__})") from None
    finally:
        client.close()


def _tasks() -> list[str]:
    from wxrecon.takers import TAKERS

    return list(TAKERS)


@app.command("status")
def status(json_out: JsonOpt = False) -> None:
    """By-name intake waiting: on the queue, held by each pump, set aside."""
    from wxrecon.inbox import look
    from wxrecon.worker import INTAKE_QUEUE

    with _broker() as client:
        found = look(client, INTAKE_QUEUE)
    out = Output(json_out)
    if json_out:
        out.json(found)
        return
    out.print(f"on {INTAKE_QUEUE}: {found['queued']}    set aside (dead): {found['dead']}")
    rows = [
        (p, v["held"], "yes" if v["alive"] else "no (recovered soon)")
        for p, v in found["pumps"].items()
    ]
    out.print(table("intake pumps", ("pump", "held", "alive"), sorted(rows)))


@app.command("dead")
def dead(limit: LimitOpt = 100, json_out: JsonOpt = False) -> None:
    """Messages a pump set aside, oldest first."""
    from wxrecon.inbox import dead_messages, describe

    with _broker() as client:
        shown = [describe(raw, _tasks()) for raw in dead_messages(client, limit)]
    out = Output(json_out)
    if json_out:
        out.json({"dead": shown})
        return
    columns = ("id", "task", "out_request_no", "out_bill_no", "mchid")
    out.print(
        table(f"set aside: {len(shown)}", columns, [[m.get(c) for c in columns] for m in shown])
    )


@app.command("replay")
def replay_dead(
    ids: Annotated[
        list[str] | None, typer.Option("--id", help="A message id to put back (repeatable).")
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Put back every set-aside message.")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Put set-aside messages back on wxrecon.intake (fix what made them fail first)."""
    from wxrecon.inbox import dead_messages, describe, replay
    from wxrecon.worker import INTAKE_QUEUE

    if bool(ids) == all_:
        raise bad_input("name the messages with --id, or give --all")
    wanted = {i[:64] for i in ids or []}
    tasks = _tasks()
    with _broker() as client:
        named = [(raw, describe(raw, tasks)["id"]) for raw in dead_messages(client, 10_000)]
        chosen = [raw for raw, ident in named if all_ or ident in wanted]
        unknown = wanted - {ident for _, ident in named}
        if unknown:
            raise bad_input(f"not set aside: {', '.join(sorted(unknown))}")
        if not chosen:
            raise CliError("nothing is set aside")
        if not yes and not json_out:
            typer.confirm(f"put {len(chosen)} message(s) back on {INTAKE_QUEUE}?", abort=True)
        moved = replay(client, INTAKE_QUEUE, chosen)
    out = Output(json_out)
    if json_out:
        out.json({"replayed": moved})
    else:
        out.print(f"✓ {moved} message(s) back on {INTAKE_QUEUE}")

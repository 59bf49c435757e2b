"""What ``reduction`` and ``bill`` share: show, list, retry, requery, and their rendering.

Both kinds of order look the same to an operator (a state, polling columns, an event
history), so one set of commands serves both, parametrised by a :class:`~wxrecon.cli.kinds.Kind`;
:mod:`wxrecon.cli.reduction` and :mod:`wxrecon.cli.bill` add submit and track.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.table import Table
from rich.text import Text

from wxrecon.cli.database import database
from wxrecon.cli.errors import CliError, bad_input
from wxrecon.cli.kinds import Kind
from wxrecon.cli.output import (
    JsonOpt,
    Output,
    ago,
    default_actor,
    fen,
    fmt,
    record_cell,
    state_text,
    table,
)
from wxrecon.cli.params import CallerOpt, Duration, Since, State
from wxrecon.wechatpay.keys import mask

ActorOpt = Annotated[
    str | None, typer.Option("--actor", help="Who (default: the OS user).", show_default=False)
]
WhyOpt = Annotated[str, typer.Option("--why", help="Why: recorded in the event.")]


def order_row(kind: Kind, order: Any, now: datetime) -> dict[str, Any]:
    """The engine's JSON view of an order (``bal_account_no`` masked) plus how overdue it is."""
    row = kind.as_dict(order)
    row["kind"] = kind.name
    due = order.next_poll_at if order.state in kind.active else None
    row["overdue_seconds"] = max(0.0, (now - due).total_seconds()) if due else None
    return row


def cell(field: str, order: Any, now: datetime) -> Any:
    value = getattr(order, field, None)
    if field == "state":
        return state_text(value)
    if field == "amount":
        return fen(value)
    if field == "bal_account_no":  # sealed: opened only to be masked
        from wxrecon.store.reads import shown_ledger

        return shown_ledger(order) if hasattr(order, "bal_account_hash") else mask(value)
    if field == "receiver_detail":  # a JSON record: key=value pairs
        return record_cell(field, value)
    if field in ("updated_at", "created_at"):
        return ago((now - value).total_seconds()) + " ago" if value else "-"
    if field == "next_poll_at":
        if value is None:
            return "-"
        delta = (value - now).total_seconds()
        return Text(f"{ago(-delta)} overdue", style="yellow") if delta < 0 else f"in {ago(delta)}"
    return fmt(value)


def render_list(kind: Kind, orders: Sequence[Any], page: int, limit: int, total: int) -> Table:
    now = datetime.now(UTC)
    pages = max(1, -(-total // limit))
    return table(
        f"{kind.label}s: {total} matching, page {page} of {pages}",
        [h for h, _ in kind.list_columns],
        ([cell(f, o, now) for _, f in kind.list_columns] for o in orders),
    )


def render_show(kind: Kind, order: Any, events: Sequence[Any]) -> Group:
    now = datetime.now(UTC)
    fields = Table(show_header=False, box=None, padding=(0, 2), title_justify="left")
    fields.title = f"{kind.label} #{order.id}"
    for header, field in kind.show_fields:
        fields.add_row(Text(header, style="bold"), cell(field, order, now))
    history = table(
        "events",
        ["at (UTC)", "from", "to", "why", "Request-ID", "actor"],
        (
            [e.at, e.from_state, state_text(e.to_state), e.reason, e.request_id, e.actor]
            for e in events
        ),
    )
    return Group(fields, Text(""), history)


def select_orders(
    kind: Kind,
    *,
    state: str | None = None,
    mchid: str | None = None,
    since: datetime | None = None,
    stuck_for: float | None = None,
    now: datetime | None = None,
    caller: str | None = None,
) -> Any:
    """The filtered select behind ``list`` and bulk ``retry`` (newest first)."""
    from sqlalchemy import select

    m = kind.model
    stmt = select(m)
    if state is not None:
        stmt = stmt.where(m.state == state)
    if mchid is not None:
        stmt = stmt.where(m.mchid == mchid)
    if caller is not None:
        stmt = stmt.where(m.caller == caller)
    if since is not None:
        stmt = stmt.where(m.created_at >= since)
    if stuck_for is not None:
        cutoff = (now or datetime.now(UTC)) - timedelta(seconds=stuck_for)
        stmt = stmt.where(m.state.in_(sorted(kind.active)), m.updated_at <= cutoff)
    return stmt.order_by(m.id.desc())


def check_mchid_filter(kind: Kind, mchid: str | None) -> None:
    if mchid is not None and not kind.by_merchant:
        raise bad_input(f"--mchid: {kind.label}s have no target merchant")


# -- the commands, parametrised by kind ------------------------------------------------------


def add_common_commands(app: typer.Typer, kind: Kind) -> None:
    from wxrecon.cli.resolutions import add_resolution_commands

    add_resolution_commands(app, kind)  # four-eyes resolution: resolve, approve, withdraw
    mchid_help = "Target merchant (when the same number exists for several)."
    state_type = State(kind.states)

    @app.command("show")
    def show(
        ref: str = typer.Argument(..., help=f"Order id, or its {kind.number_field}."),
        mchid: str | None = typer.Option(None, "--mchid", help=mchid_help),
        json_out: JsonOpt = False,
    ) -> None:
        """All fields (account numbers masked) and the full event history with Request-IDs."""
        from wxrecon.store import reads as queries

        check_mchid_filter(kind, mchid)
        db = database()
        with db.read() as session:
            order = kind.get(session, ref, mchid)
            events = queries.events_of(session, kind.name, order.id)
        out = Output(json_out)
        if json_out:
            row = order_row(kind, order, datetime.now(UTC))
            row["events"] = [queries.event_dict(e) for e in events]
            out.json(row)
        else:
            out.print(render_show(kind, order, events))

    @app.command("list")
    def list_(
        state: str | None = typer.Option(
            None, "--state", help="Only this local state.", parser=state_type
        ),
        mchid: str | None = typer.Option(None, "--mchid", help="Only this target merchant."),
        caller: CallerOpt = None,
        since: datetime | None = typer.Option(
            None,
            "--since",
            help="Created since: ISO time (UTC) or a duration back (2h).",
            parser=Since(),
        ),
        stuck: float | None = typer.Option(
            None,
            "--stuck",
            help="In flight and unchanged for longer than this (e.g. 30m).",
            parser=Duration(),
        ),
        limit: int = typer.Option(50, "--limit", min=1, max=1000, help="Rows per page."),
        page: int = typer.Option(1, "--page", min=1, help="Page number (1 = newest)."),
        json_out: JsonOpt = False,
    ) -> None:
        """Orders, newest first, filtered and paginated."""
        from sqlalchemy import func, select

        check_mchid_filter(kind, mchid)
        stmt = select_orders(
            kind, state=state, mchid=mchid, since=since, stuck_for=stuck, caller=caller
        )
        db = database()
        with db.read() as session:
            total = session.execute(select(func.count()).select_from(stmt.subquery())).scalar_one()
            orders = list(session.execute(stmt.limit(limit).offset((page - 1) * limit)).scalars())
        out = Output(json_out)
        if json_out:
            now = datetime.now(UTC)
            out.json(
                {
                    "total": total,
                    "page": page,
                    "limit": limit,
                    "orders": [order_row(kind, o, now) for o in orders],
                }
            )
        else:
            out.print(render_list(kind, orders, page, limit, total))

    @app.command("retry")
    def retry(
        ref: str | None = typer.Argument(None, help="One order (id or number)."),
        state: str | None = typer.Option(
            None,
            "--state",
            help="Retry every order in this state (e.g. NEEDS_REVIEW).",
            parser=state_type,
        ),
        mchid: str | None = typer.Option(None, "--mchid", help="Only this target merchant."),
        force: bool = typer.Option(
            False, "--force", help="Also re-check a final order (it is only re-queried)."
        ),
        actor: ActorOpt = None,
        why: WhyOpt = "",
        yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
        json_out: JsonOpt = False,
    ) -> None:
        """Operator retry of one order, or of every order in a state; who and why are recorded."""
        if (ref is None) == (state is None):
            raise bad_input("give either one order or --state, not both")
        check_mchid_filter(kind, mchid)
        if json_out and not yes:
            raise bad_input("--json needs --yes for a retry (there is nobody to ask)")
        who = actor or default_actor()
        if ref is not None:
            retry_one(kind, ref, mchid, who=who, why=why, force=force, yes=yes, json_out=json_out)
        else:
            assert state is not None
            retry_all(kind, state, mchid, who=who, why=why, force=force, yes=yes, json_out=json_out)

    @app.command("requery")
    def requery(
        ref: str = typer.Argument(..., help="Order id or number."),
        mchid: str | None = typer.Option(None, "--mchid", help=mchid_help),
        actor: ActorOpt = None,
        why: WhyOpt = "",
        json_out: JsonOpt = False,
    ) -> None:
        """Query the provider for an in-flight order now (it becomes due immediately)."""
        check_mchid_filter(kind, mchid)
        db = database()
        with db.read() as session:
            order = kind.get(session, ref, mchid)
        state = kind.requery(db, order.id, actor=actor or default_actor(), why=why)
        out = Output(json_out)
        if json_out:
            out.json({"id": order.id, "state": state, "requeried": True})
        else:
            out.print(f"{kind.label} #{order.id} is due for a query now (", state_text(state), ")")


def retry_one(
    kind: Kind,
    ref: str,
    mchid: str | None,
    *,
    who: str,
    why: str,
    force: bool,
    yes: bool,
    json_out: bool,
) -> None:
    out = Output(json_out)
    db = database()
    with db.read() as session:
        order = kind.get(session, ref, mchid)
    if not yes:
        number = getattr(order, kind.number_field)
        _confirm(f"Retry {kind.label} #{order.id} ({number}, {order.state})?")
    new_state = kind.retry(db, order.id, actor=who, why=why, force=force)
    if json_out:
        out.json({"retried": [order.id], "skipped": {}, "state": new_state})
    else:
        out.print(f"[green]✓[/] {kind.label} #{order.id} retried: now ", state_text(new_state))


def retry_all(
    kind: Kind,
    state: str,
    mchid: str | None,
    *,
    who: str,
    why: str,
    force: bool,
    yes: bool,
    json_out: bool,
) -> None:
    out = Output(json_out)
    db = database()
    with db.read() as session:
        stmt = select_orders(kind, state=state, mchid=mchid).with_only_columns(kind.model.id)
        ids = list(session.execute(stmt).scalars())
    where = f" for merchant {mchid}" if mchid else ""
    if not ids:
        if json_out:
            out.json({"retried": [], "skipped": {}})
        else:
            out.print(f"no {kind.label} in {state}{where}")
        return
    if not yes:
        _confirm(f"Retry {len(ids)} {kind.label}(s) in {state}{where}?")
    from wxrecon.cli.progress import Reporter, stop_on_interrupt
    from wxrecon.domain.kinds import KINDS
    from wxrecon.engine import operator
    from wxrecon.logs import redact

    counts = {"rows": 0, "refused": 0}

    def done(_: int) -> None:
        counts["rows"] += 1
        bar.update(counts["rows"], **counts)

    with (
        stop_on_interrupt() as stop,
        Reporter(out.err, f"retrying {kind.label}s", len(ids), quiet=json_out) as bar,
    ):
        result = operator.retry_each(
            db,
            KINDS[kind.name],
            sorted(ids),
            actor=who,
            why=why,
            force=force,
            done=done,
            stop=lambda: bool(stop),
        )
        where = bar.line(counts["rows"], **counts)
    retried = result.retried
    skipped = {i: redact(reason) for i, reason in result.skipped.items()}  # changed meanwhile
    if json_out:
        out.json({"retried": retried, "skipped": skipped})
    else:
        mark = "[yellow]![/]" if result.stopped else "[green]✓[/]"
        out.print(f"{mark} retried {len(retried)} {kind.label}(s)")
        for order_id, reason in skipped.items():
            out.print(f"[yellow]skipped[/] #{order_id}: {reason}")
    if result.stopped:
        raise CliError(
            f"interrupted after {counts['rows']} of {len(ids)} ({where}); run the same command "
            f"again to retry the rest (only what is still in {state})"
        )


def _confirm(question: str) -> None:
    if not typer.confirm(question, default=False, err=True):
        raise CliError("nothing retried")

"""What ``reduction`` and ``bill`` share: show, list, retry, requery, and their rendering.

Both kinds of order have the same shape for an operator (a state, polling columns, an event
history), so one set of commands serves both; :mod:`wxrecon.cli_reduction` and
:mod:`wxrecon.cli_bill` add what differs (submit, track) and the columns to show.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import typer
from rich.console import Group
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

from wxrecon.cli_common import (
    CliError,
    JsonOpt,
    Output,
    ago,
    bad_input,
    default_actor,
    fen,
    fmt,
    one_line,
    parse_seconds,
    parse_since,
    settings,
    state_text,
    table,
)
from wxrecon.wechatpay.keys import mask


@dataclass(frozen=True)
class Kind:
    name: str  # "reduction" or "bill"
    label: str  # how an operator calls it: "reduction", "compensation bill"
    number_field: str  # out_request_no / out_bill_no
    states: tuple[str, ...]
    active: frozenset[str]
    list_columns: tuple[tuple[str, str], ...]  # (header, field)
    show_fields: tuple[tuple[str, str], ...]

    @property
    def model(self) -> Any:
        from wxrecon.store.models import CompensationBill, SpecialReduction

        return SpecialReduction if self.name == "reduction" else CompensationBill

    def get(self, session: Any, ref: str, mchid: str | None = None) -> Any:
        """By id (all digits) or by number; raises the engine's OrderNotFound / Ambiguous."""
        from wxrecon.domain.errors import OrderNotFound
        from wxrecon.store import reads as queries

        if self.name == "reduction":
            if ref.isascii() and ref.isdigit():
                try:
                    return queries.get_reduction(session, id=int(ref))
                except OrderNotFound:
                    pass  # an all-digit out_request_no
            return queries.get_reduction(session, out_request_no=ref, mchid=mchid)
        if ref.isascii() and ref.isdigit():
            try:
                return queries.get_bill(session, id=int(ref))
            except OrderNotFound:
                pass
        return queries.get_bill(session, out_bill_no=ref)

    def retry(self, db: Any, order_id: int, *, actor: str, why: str, force: bool) -> str:
        from wxrecon.domain.kinds import KINDS
        from wxrecon.engine import operator

        kind = KINDS[self.name]
        return operator.retry(db, kind, order_id, actor=actor, why=why, force=force)

    def requery(self, db: Any, order_id: int, *, actor: str, why: str) -> str:
        from wxrecon.domain.kinds import KINDS
        from wxrecon.engine import operator

        return operator.requery(db, KINDS[self.name], order_id, actor=actor, why=why)


def database() -> Any:
    """The engine's Database for the configured URL, with its schema checked."""
    from wxrecon.store import db

    s = settings()
    try:
        db.check_schema(s.database_url)
    except db.SchemaError as exc:
        raise CliError(str(exc)) from None
    return db.Database(s.database_url)


def check_state(kind: Kind, state: str | None) -> str | None:
    if state is None:
        return None
    upper = state.upper()
    if upper not in kind.states:
        raise bad_input(f"--state: {state!r} is not one of {', '.join(kind.states)}")
    return upper


def order_row(kind: Kind, order: Any, now: datetime) -> dict[str, Any]:
    """The engine's JSON view of an order (``bal_account_no`` masked) plus how overdue it is."""
    from wxrecon.store import reads as queries

    row = queries.reduction_dict(order) if kind.name == "reduction" else queries.bill_dict(order)
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
    if field == "bal_account_no":
        return mask(value)
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
    t = table(
        f"{kind.label}s: {total} matching, page {page} of {pages}",
        [h for h, _ in kind.list_columns],
        ([cell(f, o, now) for _, f in kind.list_columns] for o in orders),
    )
    return t


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
) -> Any:
    """The filtered select behind ``list`` and bulk ``retry`` (newest first)."""
    from sqlalchemy import select

    m = kind.model
    stmt = select(m)
    if state is not None:
        stmt = stmt.where(m.state == state)
    if mchid is not None:
        stmt = stmt.where(m.mchid == mchid)
    if since is not None:
        stmt = stmt.where(m.created_at >= since)
    if stuck_for is not None:
        cutoff = (now or datetime.now(UTC)) - timedelta(seconds=stuck_for)
        stmt = stmt.where(m.state.in_(sorted(kind.active)), m.updated_at <= cutoff)
    return stmt.order_by(m.id.desc())


# -- the commands, parametrised by kind ------------------------------------------------------


def add_common_commands(app: typer.Typer, kind: Kind) -> None:
    mchid_help = "Target merchant (when the same number exists for several)."

    @app.command("show")
    def show(
        ref: str = typer.Argument(..., help=f"Order id, or its {kind.number_field}."),
        mchid: str | None = typer.Option(None, "--mchid", help=mchid_help),
        json_out: JsonOpt = False,
    ) -> None:
        """All fields (account numbers masked) and the full event history with Request-IDs."""
        from wxrecon.store import reads as queries

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
        state: str | None = typer.Option(None, "--state", help="Only this local state."),
        mchid: str | None = typer.Option(None, "--mchid", help="Only this target merchant."),
        since: str | None = typer.Option(
            None, "--since", help="Created since: ISO time (UTC) or a duration back (2h)."
        ),
        stuck: str | None = typer.Option(
            None, "--stuck", help="In flight and unchanged for longer than this (e.g. 30m)."
        ),
        limit: int = typer.Option(50, "--limit", min=1, max=1000, help="Rows per page."),
        page: int = typer.Option(1, "--page", min=1, help="Page number (1 = newest)."),
        json_out: JsonOpt = False,
    ) -> None:
        """Orders, newest first, filtered and paginated."""
        from sqlalchemy import func, select

        if mchid is not None and kind.name != "reduction":
            raise bad_input("--mchid filters reductions only")
        stmt = select_orders(
            kind,
            state=check_state(kind, state),
            mchid=mchid,
            since=parse_since(since),
            stuck_for=parse_seconds(stuck, "--stuck"),
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
            None, "--state", help="Retry every order in this state (e.g. NEEDS_REVIEW)."
        ),
        mchid: str | None = typer.Option(None, "--mchid", help="Only this target merchant."),
        force: bool = typer.Option(
            False, "--force", help="Also re-check a final order (it is only re-queried)."
        ),
        actor: str | None = typer.Option(None, "--actor", help="Who (default: the OS user)."),
        why: str = typer.Option("", "--why", help="Why: recorded in the event."),
        yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
        json_out: JsonOpt = False,
    ) -> None:
        """Operator retry of one order, or of every order in a state; who and why are recorded."""
        if (ref is None) == (state is None):
            raise bad_input("give either one order or --state, not both")
        if mchid is not None and kind.name != "reduction":
            raise bad_input("--mchid filters reductions only")
        if json_out and not yes:
            raise bad_input("--json needs --yes for a retry (there is nobody to ask)")
        who = actor or default_actor()
        out = Output(json_out)
        if ref is not None:
            db = database()
            with db.read() as session:
                order = kind.get(session, ref, mchid)
            if not yes:
                _confirm(
                    f"Retry {kind.label} #{order.id} "
                    f"({getattr(order, kind.number_field)}, {order.state})?",
                )
            new_state = kind.retry(db, order.id, actor=who, why=why, force=force)
            if json_out:
                out.json({"retried": [order.id], "skipped": {}, "state": new_state})
            else:
                out.print(
                    f"[green]✓[/] {kind.label} #{order.id} retried: now ", state_text(new_state)
                )
            return
        wanted = check_state(kind, state)
        db = database()
        with db.read() as session:
            stmt = select_orders(kind, state=wanted, mchid=mchid).with_only_columns(kind.model.id)
            ids = list(session.execute(stmt).scalars())
        where = f" for merchant {mchid}" if mchid else ""
        if not ids:
            if json_out:
                out.json({"retried": [], "skipped": {}})
            else:
                out.print(f"no {kind.label} in {wanted}{where}")
            return
        if not yes:
            _confirm(f"Retry {len(ids)} {kind.label}(s) in {wanted}{where}?")
        retried: list[int] = []
        skipped: dict[int, str] = {}
        with Progress(
            TextColumn(f"retrying {kind.label}s"),
            BarColumn(),
            MofNCompleteColumn(),
            console=out.err,
            disable=json_out or not out.err.is_terminal,
        ) as bar:
            task = bar.add_task("retry", total=len(ids))
            for order_id in sorted(ids):
                try:
                    kind.retry(db, order_id, actor=who, why=why, force=force)
                except (LookupError, ValueError) as exc:  # changed meanwhile: report, go on
                    skipped[order_id] = one_line(exc)
                else:
                    retried.append(order_id)
                bar.advance(task)
        if json_out:
            out.json({"retried": retried, "skipped": skipped})
        else:
            out.print(f"[green]✓[/] retried {len(retried)} {kind.label}(s)")
            for order_id, reason in skipped.items():
                out.print(f"[yellow]skipped[/] #{order_id}: {reason}")

    @app.command("requery")
    def requery(
        ref: str = typer.Argument(..., help="Order id or number."),
        mchid: str | None = typer.Option(None, "--mchid", help=mchid_help),
        actor: str | None = typer.Option(None, "--actor", help="Who (default: the OS user)."),
        why: str = typer.Option("", "--why", help="Why: recorded in the event."),
        json_out: JsonOpt = False,
    ) -> None:
        """Query the provider for an in-flight order now (it becomes due immediately)."""
        db = database()
        with db.read() as session:
            order = kind.get(session, ref, mchid)
        state = kind.requery(db, order.id, actor=actor or default_actor(), why=why)
        out = Output(json_out)
        if json_out:
            out.json({"id": order.id, "state": state, "requeried": True})
        else:
            out.print(f"{kind.label} #{order.id} is due for a query now (", state_text(state), ")")


def _confirm(question: str) -> None:
    if not typer.confirm(question, default=False, err=True):
        raise CliError("nothing retried")


# Tests replace this to capture what would be sent; None means the engine's Celery app.
ENQUEUE: Callable[[str, dict[str, Any]], None] | None = None


def report_intake(
    kind: Kind,
    db: Any,
    result: Any,
    line: str,
    *,
    wait: bool,
    timeout: float,
    json_out: bool,
) -> None:
    """After ``submit`` / ``track``: optionally follow the order, then say where it stands."""
    state = follow(kind, db, result.order_id, timeout, json_out) if wait else result.state
    out = Output(json_out)
    if json_out:
        out.json({"id": result.order_id, "created": result.created, "state": state})
    else:
        out.print(f"{line}, now", state_text(state))


def follow(kind: Kind, db: Any, order_id: int, timeout: float, quiet: bool) -> str:
    """Watch an order until it leaves the in-flight states, with a live status line."""
    from wxrecon.store import reads as queries

    out = Output(quiet)
    deadline = time.monotonic() + timeout
    state = ""
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
            if state not in kind.active:
                return state
            if time.monotonic() > deadline:
                raise CliError(
                    f"{kind.label} #{order.id} still {state} after {timeout:g}s "
                    "(it keeps being reconciled; see `show`)"
                )
            time.sleep(0.5)

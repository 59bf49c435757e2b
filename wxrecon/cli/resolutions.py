"""Four-eyes resolution from the command line, for both kinds: ``resolve``, ``approve``,
``withdraw``, ``resolutions``. The rules are ``domain/resolution.py`` and the I/O
``engine/resolution.py``; this module checks the input (exit 2 before anything is opened),
asks for confirmation and shows the result.

``--actor`` is free text here (default: the OS user); roles are not checked by the CLI, whose
users have the database and the keys anyway: the web layer checks its tokens' roles before
calling the same engine functions. What the engine enforces holds for both: evidence, the
fresh query, a different person to approve, the order unchanged since the proposal.
"""

from __future__ import annotations

from typing import Any

import typer

from wxrecon.cli.database import database
from wxrecon.cli.errors import CliError, bad_input
from wxrecon.cli.kinds import Kind
from wxrecon.cli.output import JsonOpt, Output, default_actor, fen, fmt, state_text, table
from wxrecon.cli.params import FenAmount
from wxrecon.domain import states

# What review may be resolved to, by kind (domain/states.py; the engine's kinds import the
# database models, too slow for ``--help``).
TARGETS = {
    "reduction": states.REDUCTION_RESOLUTIONS[states.RState.NEEDS_REVIEW],
    "bill": states.BILL_RESOLUTIONS[states.BState.NEEDS_REVIEW],
}


def _engine_kind(kind: Kind) -> Any:
    from wxrecon.domain.kinds import KINDS

    return KINDS[kind.name]


def _order(kind: Kind, ref: str, mchid: str | None) -> Any:
    from wxrecon.cli.orders import check_mchid_filter

    check_mchid_filter(kind, mchid)
    db = database()
    with db.read() as session:
        order = kind.get(session, ref, mchid)
    return db, order


def _confirm(question: str, yes: bool, json_out: bool, nothing: str) -> None:
    if yes:
        return
    if json_out:
        raise bad_input("--json needs --yes (there is nobody to ask)")
    if not typer.confirm(question, default=False, err=True):
        raise CliError(nothing)


def _who(actor: str | None) -> str:
    """The acting person (``--actor``, else the OS user), checked; bad input in one line."""
    from wxrecon.domain import resolution as rules

    try:
        return rules.check_actor(actor or default_actor())
    except rules.ResolutionRefused as exc:
        raise bad_input(str(exc)) from None


def _line(res: Any) -> str:
    amount = f" of {fen(res.amount)}" if res.amount is not None else ""
    return (
        f"resolution #{res.id} of {res.kind} #{res.order_id} to {res.target_state}{amount}: "
        f"{res.status}"
    )


def add_resolution_commands(app: typer.Typer, kind: Kind) -> None:
    final = sorted(str(s) for s in TARGETS[kind.name])
    mchid_help = "Target merchant (when the same number exists for several)."
    ref_help = f"Order id, or its {kind.number_field}."

    @app.command("resolve")
    def resolve(
        ref: str = typer.Argument(..., help=ref_help),
        state: str = typer.Option(..., "--state", help=f"The final state: {', '.join(final)}."),
        evidence: str = typer.Option(
            ..., "--evidence", help="Why (10 to 2000 characters): recorded in the events."
        ),
        amount: int | None = typer.Option(
            None,
            "--amount",
            help="SUCCESS: integer fen (default and only allowed value: the order's own).",
            parser=FenAmount(),
        ),
        quota_change_no: str | None = typer.Option(
            None, "--quota-change-no", help="SUCCESS of a reduction: the provider's number."
        ),
        mchid: str | None = typer.Option(None, "--mchid", help=mchid_help),
        actor: str | None = typer.Option(None, "--actor", help="Who (default: the OS user)."),
        yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
        json_out: JsonOpt = False,
    ) -> None:
        """Propose a final state for an order in NEEDS_REVIEW, after a fresh signed query.

        If the query gives a final answer, it is recorded at once (no approval needed);
        otherwise the proposal waits for a different person to `approve` it."""
        from wxrecon.domain import resolution as rules

        state = state.strip().upper()
        if state not in final:
            raise bad_input(f"--state: one of {', '.join(final)}, not {state[:20] or '(none)'}")
        try:
            rules.check_evidence(evidence)
            who = _who(actor)
        except rules.ResolutionRefused as exc:
            raise bad_input(str(exc)) from None
        db, order = _order(kind, ref, mchid)
        _confirm(
            f"Propose {kind.label} #{order.id} ({order.state}) as {state}?",
            yes,
            json_out,
            "nothing proposed",
        )
        from wxrecon.callers import profiles_of
        from wxrecon.config import get_settings
        from wxrecon.engine import resolution
        from wxrecon.runtime import build_client

        settings = get_settings()
        profile = profiles_of(settings).get(order.caller)  # the order's own merchant signs
        if profile is None:
            raise bad_input(f"the order's caller {order.caller!r} is not configured")
        client: Any = build_client(settings, profile)
        with client:
            res = resolution.resolve(
                db,
                client,
                _engine_kind(kind),
                order.id,
                state=state,
                evidence=evidence,
                actor=who,
                amount=amount,
                quota_change_no=quota_change_no,
            )
        out = Output(json_out)
        if json_out:
            out.json(res.as_dict())
        elif res.settled:
            out.print(
                f"[green]✓[/] the provider answered {res.query_said} (Request-ID "
                f"{res.query_request_id}): recorded as ",
                state_text(res.order_state),
                "; no manual resolution needed",
            )
        else:
            out.print(
                f"[yellow]pending[/] {_line(res)}; the query said {res.query_said} (Request-ID "
                f"{res.query_request_id or '-'}); a different person must `approve` it"
            )

    @app.command("approve")
    def approve(
        ref: str = typer.Argument(..., help=ref_help),
        resolution_id: int | None = typer.Option(
            None, "--resolution", min=1, help="The resolution you reviewed (default: the pending)."
        ),
        mchid: str | None = typer.Option(None, "--mchid", help=mchid_help),
        actor: str | None = typer.Option(None, "--actor", help="Who (not the proposer)."),
        yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
        json_out: JsonOpt = False,
    ) -> None:
        """Confirm the order's pending resolution: its final state is written."""
        from wxrecon.engine import resolution

        who = _who(actor)
        db, order = _order(kind, ref, mchid)
        _confirm(
            f"Approve the pending resolution of {kind.label} #{order.id}?",
            yes,
            json_out,
            "nothing approved",
        )
        res = resolution.approve(
            db, _engine_kind(kind), order.id, actor=who, resolution_id=resolution_id
        )
        out = Output(json_out)
        if json_out:
            out.json(res.as_dict())
        else:
            out.print(
                f"[green]✓[/] {_line(res)} by {res.decided_by} (proposed by {res.proposed_by}): "
                "now ",
                state_text(res.order_state),
            )

    @app.command("withdraw")
    def withdraw(
        ref: str = typer.Argument(..., help=ref_help),
        resolution_id: int | None = typer.Option(None, "--resolution", min=1, help="Which one."),
        mchid: str | None = typer.Option(None, "--mchid", help=mchid_help),
        actor: str | None = typer.Option(None, "--actor", help="Who (default: the OS user)."),
        why: str = typer.Option("", "--why", help="Why: recorded in the event."),
        json_out: JsonOpt = False,
    ) -> None:
        """Take back the order's pending resolution (the order stays as it is)."""
        from wxrecon.domain import resolution as rules
        from wxrecon.engine import resolution

        who = _who(actor)
        if len(why) > rules.MAX_EVIDENCE:
            raise bad_input(f"--why: at most {rules.MAX_EVIDENCE} characters")
        db, order = _order(kind, ref, mchid)
        res = resolution.withdraw(
            db, _engine_kind(kind), order.id, actor=who, why=why, resolution_id=resolution_id
        )
        out = Output(json_out)
        if json_out:
            out.json(res.as_dict())
        else:
            out.print(f"{_line(res)} by {res.decided_by}")

    @app.command("resolutions")
    def resolutions(
        ref: str | None = typer.Argument(None, help="Only this order (id or number)."),
        pending: bool = typer.Option(False, "--pending", help="Only those waiting for approval."),
        mchid: str | None = typer.Option(None, "--mchid", help=mchid_help),
        limit: int = typer.Option(100, "--limit", min=1, max=1000, help="At most this many."),
        json_out: JsonOpt = False,
    ) -> None:
        """Resolutions, newest first: who proposed what, on which evidence, who decided."""
        from wxrecon.engine import resolution

        if ref is not None:
            db, order = _order(kind, ref, mchid)
            order_id: int | None = order.id
        else:
            if mchid is not None:
                raise bad_input("--mchid goes with an order")
            db, order_id = database(), None
        found = resolution.resolutions(
            db,
            _engine_kind(kind),
            order_id=order_id,
            status="pending" if pending else None,
            limit=limit,
        )
        out = Output(json_out)
        if json_out:
            out.json({"resolutions": [r.as_dict() for r in found]})
            return
        out.print(
            table(
                f"{kind.label} resolutions: {len(found)}",
                [
                    "id",
                    "order",
                    "to",
                    "amount",
                    "status",
                    "proposed by",
                    "decided by",
                    "query",
                    "evidence",
                ],
                (
                    [
                        r.id,
                        r.order_id,
                        r.target_state,
                        fen(r.amount) if r.amount else "-",
                        r.status,
                        r.proposed_by,
                        fmt(r.decided_by),
                        r.query_said,
                        r.evidence,
                    ]
                    for r in found
                ),
            )
        )

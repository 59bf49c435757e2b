"""``wxrecon ledger``: balance snapshots of the quota ledgers and what they do not explain.

A ledger is named by its target merchant and a prefix of its keyed hash (``LEDGER`` in the
table): the number itself is sealed at rest and never shown.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from wxrecon.cli.database import database
from wxrecon.cli.errors import bad_input
from wxrecon.cli.output import JsonOpt, Output, fen, table
from wxrecon.cli.params import Mchid

app = typer.Typer(no_args_is_help=True)

MchidOpt = Annotated[
    str | None,
    typer.Option("--mchid", help="Only this target merchant.", parser=Mchid(), show_default=False),
]
ReqMchid = Annotated[str, typer.Option("--mchid", help="Target merchant id.", parser=Mchid())]
LedgerArg = Annotated[
    str, typer.Argument(help="The ledger: a prefix (4-64 hex characters) of its hash.")
]


def _hash(db: Any, mchid: str, prefix: str) -> str:
    from wxrecon.store import ledgers

    text = prefix.strip().lower()
    if not 4 <= len(text) <= 64 or any(c not in "0123456789abcdef" for c in text):
        raise bad_input("LEDGER must be 4-64 hex characters (the LEDGER column of ledger list)")
    found = ledgers.find_ledger(db, mchid, text)
    if not found:
        raise bad_input(f"no snapshots of a ledger {text} of {mchid}")
    if len(found) > 1:
        raise bad_input(f"{text} names more than one ledger of {mchid}: give more characters")
    return found[0]


def _discrepancy(d: dict[str, Any]) -> dict[str, Any]:
    from wxrecon.domain.outcomes import ledger_label

    return {
        "id": d["id"],
        "mchid": d["mchid"],
        "ledger": ledger_label(d["ledger_hash"]),
        "kind": d["kind"],
        "amount": d["amount"],
        "observed": d["observed"],
        "explained": d["explained"],
        "window_start": d["window_start"],
        "window_end": d["window_end"],
        "order_ids": d["order_ids"],
        "created_at": d["created_at"],
    }


@app.command("snapshot")
def snapshot(mchid: MchidOpt = None, json_out: JsonOpt = False) -> None:
    """Snapshot (and check) now every ledger with recent activity."""
    from wxrecon.callers import profiles_of
    from wxrecon.config import get_settings
    from wxrecon.engine import ledger
    from wxrecon.runtime import build_client
    from wxrecon.store.sealed import keyring

    db = database()
    settings = get_settings()
    keyring(settings)  # the keys before the client: the first missing thing is named first
    # with the shared rate limiter, as the worker's; an ordinary merchant's query
    client: Any = build_client(settings, profiles_of(settings)[settings.reduction_caller])
    try:
        done = ledger.run(db, client, settings, mchid)
    finally:
        client.close()
    data = {
        "taken": done.taken,
        "failed": done.failed,
        "deferred": done.deferred,
        "checks": len(done.checks),
        "discrepancies": len(done.discrepancies),
    }
    Output(json_out).show("ledger snapshot", data)


@app.command("list")
def list_ledgers(mchid: MchidOpt = None, json_out: JsonOpt = False) -> None:
    """Every snapshotted ledger: its latest balance and its unexplained debits."""
    from wxrecon.domain.outcomes import ledger_label
    from wxrecon.store import ledgers

    rows = [
        {
            "mchid": r["mchid"],
            "ledger": ledger_label(r["ledger_hash"]),
            "snapshots": r["snapshots"],
            "balance": r["balance"],
            "in_transit": r["in_transit"],
            "taken_at": r["taken_at"],
            "unexplained_debits": int(r["unexplained_debits"]),
            "unexplained_debit_fen": int(r["unexplained_debit_fen"]),
        }
        for r in ledgers.ledgers(database(), mchid)
    ]
    out = Output(json_out)
    if json_out:
        out.json({"ledgers": rows})
        return
    out.print(
        table(
            f"{len(rows)} ledger(s)",
            ["mchid", "ledger", "snapshots", "balance", "in transit", "taken", "unexplained debit"],
            (
                [
                    r["mchid"],
                    r["ledger"],
                    r["snapshots"],
                    fen(r["balance"]),
                    {None: "unknown", True: "yes", False: "no"}[r["in_transit"]],
                    r["taken_at"].isoformat(timespec="seconds"),
                    fen(r["unexplained_debit_fen"]),
                ]
                for r in rows
            ),
        )
    )


@app.command("show")
def show(
    ledger_prefix: LedgerArg,
    mchid: ReqMchid,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 50,
    json_out: JsonOpt = False,
) -> None:
    """One ledger's latest snapshots and its discrepancies."""
    from wxrecon.domain.outcomes import ledger_label
    from wxrecon.store import ledgers

    db = database()
    digest = _hash(db, mchid, ledger_prefix)
    snaps = [
        {k: r[k] for k in ("id", "balance", "in_transit", "point", "request_id", "taken_at")}
        for r in ledgers.snapshots(db, mchid, digest, limit=limit)
    ]
    found = [_discrepancy(d) for d in ledgers.discrepancies(db, mchid=mchid, ledger_hash=digest)]
    out = Output(json_out)
    if json_out:
        out.json(
            {
                "mchid": mchid,
                "ledger": ledger_label(digest),
                "snapshots": snaps,
                "discrepancies": found,
            }
        )
        return
    out.print(
        table(
            f"ledger {mchid}/{ledger_label(digest)}: {len(snaps)} snapshot(s)",
            ["id", "taken", "balance", "in transit", "check point", "request id"],
            (
                [
                    s["id"],
                    s["taken_at"].isoformat(timespec="seconds"),
                    fen(s["balance"]),
                    {None: "unknown", True: "yes", False: "no"}[s["in_transit"]],
                    "yes" if s["point"] else "no",
                    s["request_id"] or "-",
                ]
                for s in snaps
            ),
        ),
        _discrepancy_table(found),
    )


def _discrepancy_table(found: list[dict[str, Any]]) -> Any:
    return table(
        f"{len(found)} discrepancy(ies)",
        ["id", "kind", "amount", "observed", "explained", "window", "orders"],
        (
            [
                d["id"],
                d["kind"],
                fen(d["amount"]),
                fen(d["observed"]),
                fen(d["explained"]),
                f"{d['window_start'].isoformat(timespec='seconds')} .. "
                f"{d['window_end'].isoformat(timespec='seconds')}",
                ",".join(str(i) for i in d["order_ids"]) or "-",
            ]
            for d in found
        ),
    )


@app.command("check")
def check(
    ledger_prefix: LedgerArg,
    mchid: ReqMchid,
    json_out: JsonOpt = False,
) -> None:
    """Check every window between one ledger's check points again (records what is new)."""
    from wxrecon.domain.outcomes import ledger_label
    from wxrecon.engine import ledger

    db = database()
    digest = _hash(db, mchid, ledger_prefix)
    checks = ledger.recheck(db, mchid, digest)
    rows: list[dict[str, Any]] = [
        {
            "verdict": c.verdict,
            "start_snapshot_id": c.start.id,
            "end_snapshot_id": c.end.id,
            "window_start": c.start.taken_at,
            "window_end": c.end.taken_at,
            "observed": c.observed,
            "explained": c.explained,
            "difference": c.difference,
            "flagged": c.flagged,
            "order_ids": list(c.order_ids),
        }
        for c in checks
    ]
    out = Output(json_out)
    if json_out:
        out.json({"mchid": mchid, "ledger": ledger_label(digest), "checks": rows})
        return
    out.print(
        table(
            f"ledger {mchid}/{ledger_label(digest)}: {len(rows)} window(s)",
            ["window", "verdict", "observed", "explained", "difference", "orders"],
            (
                [
                    f"{r['window_start'].isoformat(timespec='seconds')} .. "
                    f"{r['window_end'].isoformat(timespec='seconds')}",
                    r["verdict"],
                    fen(r["observed"]),
                    fen(r["explained"]),
                    fen(r["difference"]),
                    ",".join(str(i) for i in r["order_ids"]) or "-",
                ]
                for r in rows
            ),
        )
    )

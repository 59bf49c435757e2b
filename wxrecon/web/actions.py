"""What the web layer asks of the engine: each action checks the holder's role, then calls
the engine function with the token's name as the actor (so the event records who)."""

from __future__ import annotations

from typing import Any

from wxrecon.domain.kinds import OrderKind
from wxrecon.engine import operator
from wxrecon.engine import resolution as four_eyes
from wxrecon.store import reads
from wxrecon.store.db import Database
from wxrecon.store.web_tokens import Holder
from wxrecon.web.auth import need

ACTORS = "web:"  # events show ``web:<token name>``: which door the action came through


def actor(holder: Holder) -> str:
    return ACTORS + holder.name


def retry(rt: Any, who: Holder, kind: OrderKind, order_id: int, why: str, force: bool) -> str:
    need(who, "operator")
    return operator.retry(rt.db, kind, order_id, actor=actor(who), why=why, force=force)


def requery(rt: Any, who: Holder, kind: OrderKind, order_id: int, why: str) -> str:
    need(who, "operator")
    return operator.requery(rt.db, kind, order_id, actor=actor(who), why=why)


def _res(r: Any) -> dict[str, Any]:
    out = r.as_dict()
    out["order_state"] = out.get("order_state") or ""
    return out


def resolve(rt: Any, who: Holder, kind: OrderKind, order_id: int, body: Any) -> dict[str, Any]:
    """Propose a resolution (the engine queries the provider afresh, signed, first)."""
    need(who, "operator")
    return _res(
        four_eyes.resolve(
            rt.db,
            rt.client,
            kind,
            order_id,
            state=body.state,
            evidence=body.evidence,
            actor=actor(who),
            amount=body.amount,
            quota_change_no=body.quota_change_no,
        )
    )


def approve(rt: Any, who: Holder, kind: OrderKind, order_id: int) -> dict[str, Any]:
    """Confirm a pending resolution; the engine refuses the proposer's own."""
    need(who, "approver")
    return _res(four_eyes.approve(rt.db, kind, order_id, actor=actor(who)))


def withdraw(rt: Any, who: Holder, kind: OrderKind, order_id: int, why: str) -> dict[str, Any]:
    """Take back the order's pending resolution; the order stays as it is (an event says so)."""
    need(who, "operator")
    return _res(four_eyes.withdraw(rt.db, kind, order_id, actor=actor(who), why=why))


def resolutions(db: Database, kind: OrderKind, order_id: int) -> list[dict[str, Any]]:
    return [_res(r) for r in four_eyes.resolutions(db, kind, order_id=order_id, limit=20)]


def overview(db: Database) -> dict[str, Any]:
    from wxrecon.domain.kinds import KINDS

    now = db.now()
    with db.read() as s:
        st = reads.stats(s, now=now)
        return {
            "by_state": {"reduction": st.reductions, "bill": st.bills} | {},
            "oldest_due": reads.oldest_overdue(s, now),
            "provider_errors": reads.provider_errors(s),
            "hourly": reads.hourly(s, now),
            "kinds": list(KINDS),
        }

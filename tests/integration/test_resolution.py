"""Four-eyes resolution through the engine, on SQLite and PostgreSQL, with the simulator
answering the fresh signed query made at resolve time."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import select, update

from tests.fixtures_db import EngineSettings
from tests.fixtures_sim import SIM_BAL_ACCOUNT_NO, SIM_MCHID
from wxrecon.domain.errors import OrderNotFound
from wxrecon.domain.kinds import BILL, REDUCTION, OrderKind
from wxrecon.domain.resolution import ResolutionRefused
from wxrecon.engine import operator
from wxrecon.engine import resolution as res
from wxrecon.engine.intake import intake_bill, intake_reduction
from wxrecon.engine.steps import Reconciler
from wxrecon.simulator import AdminClient
from wxrecon.store import sql
from wxrecon.store.db import Database
from wxrecon.store.models import Event, Outcome, Resolution
from wxrecon.store.verify import verify
from wxrecon.wechatpay import WeChatPayClient
from wxrecon.wechatpay.resources import SpecialReductionRequest

EVIDENCE = "merchant platform shows the deduction as applied, ticket OPS-1234"


def request(no: str, amount: int = 1000) -> SpecialReductionRequest:
    return SpecialReductionRequest.create(
        mchid=SIM_MCHID,
        bal_account_no=SIM_BAL_ACCOUNT_NO,
        out_request_no=no,
        reduction_type="FINANCIAL_PENALTY",
        amount=amount,
        reason="resolution test",
    )


def to_review(db: Database, kind: OrderKind, order_id: int) -> None:
    """Put an order in review as the engine would leave it (no claim, not due), with the
    event that explains it (so ``db verify`` holds)."""
    with db.begin() as conn:
        src = conn.execute(select(kind.model.state).where(kind.model.id == order_id)).scalar_one()
        params = sql.event_params(
            str(kind.name), order_id, src, kind.review, "test: gave up", "test", db.now()
        )
        conn.execute(sql.EVENT_INSERT, params)
        conn.execute(
            update(kind.model)
            .where(kind.model.id == order_id)
            .values(
                state=kind.review,
                version=kind.model.version + 1,
                claim_token=None,
                claimed_until=None,
                next_poll_at=None,
            )
        )


def reduction_in_review(db: Database, no: str, amount: int = 1000) -> int:
    with db.transaction() as session:
        order = intake_reduction(session, request(no, amount))
    to_review(db, REDUCTION, order.order_id)
    return order.order_id


def bill_in_review(db: Database, no: str) -> int:
    with db.transaction() as session:
        order = intake_bill(session, no)
    to_review(db, BILL, order.order_id)
    return order.order_id


def state_of(db: Database, kind: OrderKind, order_id: int) -> tuple[str, int]:
    with db.read() as session:
        row = session.get(kind.model, order_id)
        return row.state, row.version


def events(db: Database, kind: OrderKind, order_id: int) -> list[Event]:
    with db.read() as session:
        stmt = select(Event).where(Event.kind == kind.name, Event.order_id == order_id)
        return list(session.execute(stmt.order_by(Event.id)).scalars())


def outcomes(db: Database, order_id: int) -> list[dict[str, Any]]:
    with db.read() as session:
        rows = session.execute(select(Outcome).where(Outcome.order_id == order_id)).scalars()
        return [json.loads(o.payload) for o in rows]


def test_resolve_without_evidence_is_refused_and_asks_nobody(
    db: Database, sim_client: WeChatPayClient
) -> None:
    order_id = reduction_in_review(db, "RESNOEV")
    before = state_of(db, REDUCTION, order_id)
    for evidence in ("", "   ", "too short", None):
        with pytest.raises(ResolutionRefused, match="evidence"):
            res.resolve(
                db, sim_client, REDUCTION, order_id, state="FAILED", evidence=evidence, actor="a"
            )  # type: ignore[arg-type]
    with pytest.raises(ResolutionRefused, match="too long"):
        res.resolve(
            db, sim_client, REDUCTION, order_id, state="FAILED", evidence="x" * 2001, actor="a"
        )
    assert state_of(db, REDUCTION, order_id) == before
    assert res.resolutions(db, REDUCTION) == []


def test_only_an_order_in_review_and_only_to_a_final_state(
    db: Database, sim_client: WeChatPayClient
) -> None:
    with db.transaction() as session:
        order = intake_reduction(session, request("RESACTIVE"))
    with pytest.raises(ResolutionRefused, match="not NEEDS_REVIEW"):
        res.resolve(
            db, sim_client, REDUCTION, order.order_id, state="SUCCESS", evidence=EVIDENCE, actor="a"
        )
    in_review = reduction_in_review(db, "RESBADSTATE")
    for target in ("REJECTED", "PROCESSING", "CLOSED", ""):
        with pytest.raises(ResolutionRefused, match="can be resolved to FAILED, SUCCESS"):
            res.resolve(
                db, sim_client, REDUCTION, in_review, state=target, evidence=EVIDENCE, actor="a"
            )
    with pytest.raises(OrderNotFound):
        res.resolve(
            db, sim_client, REDUCTION, 999_999, state="FAILED", evidence=EVIDENCE, actor="a"
        )
    assert res.resolutions(db, REDUCTION) == []


def test_a_final_answer_at_resolve_time_is_written_instead(
    db: Database, sim_client: WeChatPayClient, sim_admin: AdminClient
) -> None:
    # Applied at the provider, but the engine gave up on it: the query finds SUCCESS.
    sim_admin.set_config(settle_delay_min=0.0, settle_delay_max=0.0)
    rec = Reconciler(db, sim_client, EngineSettings(poll_schedule=[0.05], reentry_grace=0.0))
    with db.transaction() as session:
        order = intake_reduction(session, request("RESFINAL", 700))
    assert order.token is not None
    rec.process(REDUCTION, order.order_id, order.token)
    to_review(db, REDUCTION, order.order_id)

    done = res.resolve(
        db, sim_client, REDUCTION, order.order_id, state="FAILED", evidence=EVIDENCE, actor="alice"
    )
    assert done.settled and done.status == "settled" and done.order_state == "SUCCESS"
    assert done.query_request_id and done.query_said.startswith("SUCCESS")
    truth = sim_admin.reduction("RESFINAL")
    assert truth is not None and truth["state"] == "SUCCESS" and truth["applied_count"] == 1
    with db.read() as session:
        row = session.get(REDUCTION.model, order.order_id)
        assert row.state == "SUCCESS" and row.quota_change_no == truth["quota_change_no"]
    last = events(db, REDUCTION, order.order_id)[-1]
    assert (last.from_state, last.to_state, last.actor) == ("NEEDS_REVIEW", "SUCCESS", "alice")
    assert "no manual resolution needed" in last.reason and EVIDENCE in last.reason
    assert last.request_id == done.query_request_id
    [outcome] = [o for o in outcomes(db, order.order_id) if o["state"] == "SUCCESS"]
    assert outcome["type"] == "reduction.succeeded"
    assert res.pending(db, REDUCTION) == []


def test_pending_resolution_changes_nothing_and_its_proposer_cannot_approve(
    db: Database, sim_client: WeChatPayClient
) -> None:
    order_id = reduction_in_review(db, "RESPEND", 1200)  # never sent: the provider has none
    before = state_of(db, REDUCTION, order_id)
    n_events = len(events(db, REDUCTION, order_id))

    proposed = res.resolve(
        db, sim_client, REDUCTION, order_id, state="FAILED", evidence=EVIDENCE, actor="alice"
    )
    assert proposed.status == "pending" and proposed.order_state == "NEEDS_REVIEW"
    assert proposed.query_request_id and "NotFound" in proposed.query_said
    assert state_of(db, REDUCTION, order_id) == before  # not even the version moved
    assert outcomes(db, order_id) == []
    note = events(db, REDUCTION, order_id)[-1]
    assert len(events(db, REDUCTION, order_id)) == n_events + 1
    assert (note.from_state, note.to_state) == ("NEEDS_REVIEW", "NEEDS_REVIEW")
    assert "pending approval" in note.reason and EVIDENCE in note.reason
    assert [r.id for r in res.pending(db, REDUCTION)] == [proposed.id]

    with pytest.raises(ResolutionRefused, match="already pending"):
        res.resolve(
            db, sim_client, REDUCTION, order_id, state="SUCCESS", evidence=EVIDENCE, actor="bob"
        )
    for same in ("alice", " ALICE "):
        with pytest.raises(ResolutionRefused, match="a different person must approve"):
            res.approve(db, REDUCTION, order_id, actor=same)
    assert state_of(db, REDUCTION, order_id) == before


def test_a_second_person_approves(db: Database, sim_client: WeChatPayClient) -> None:
    order_id = reduction_in_review(db, "RESOK", 1500)
    proposed = res.resolve(
        db, sim_client, REDUCTION, order_id, state="SUCCESS", evidence=EVIDENCE, actor="alice"
    )
    assert proposed.amount == 1500  # the order's own amount: the provider gave none
    with pytest.raises(ResolutionRefused, match="no resolution #"):
        res.approve(db, REDUCTION, order_id, actor="bob", resolution_id=proposed.id + 1)

    approved = res.approve(db, REDUCTION, order_id, actor="bob", resolution_id=proposed.id)
    assert approved.status == "approved" and approved.decided_by == "bob"
    assert approved.order_state == "SUCCESS"
    with db.read() as session:
        row = session.get(REDUCTION.model, order_id)
        assert row.state == "SUCCESS" and row.amount == 1500 and row.next_poll_at is None
        stored = session.get(Resolution, proposed.id)
        assert stored.status == "approved" and stored.decided_by == "bob"
    last = events(db, REDUCTION, order_id)[-1]
    assert (last.from_state, last.to_state, last.actor) == ("NEEDS_REVIEW", "SUCCESS", "bob")
    for text in ("manual resolution", "proposed by alice", "approved by bob", EVIDENCE):
        assert text in last.reason
    [outcome] = outcomes(db, order_id)
    assert outcome["type"] == "reduction.succeeded" and outcome["actor"] == "bob"
    assert outcome["amount"] == 1500 and "proposed by alice" in outcome["reason"]
    assert res.pending(db, REDUCTION) == []
    with pytest.raises(ResolutionRefused, match="no pending resolution"):
        res.approve(db, REDUCTION, order_id, actor="carol")
    assert verify(db)[1] == []  # the event chain explains the row


def test_secrets_in_evidence_are_masked(db: Database, sim_client: WeChatPayClient) -> None:
    order_id = reduction_in_review(db, "RESSECRET")
    said = f"{EVIDENCE}, bal_account_no={SIM_BAL_ACCOUNT_NO}"
    proposed = res.resolve(
        db, sim_client, REDUCTION, order_id, state="FAILED", evidence=said, actor="alice"
    )
    res.approve(db, REDUCTION, order_id, actor="bob")
    texts = [proposed.evidence, *(e.reason for e in events(db, REDUCTION, order_id))]
    texts += [json.dumps(o) for o in outcomes(db, order_id)]
    assert all(SIM_BAL_ACCOUNT_NO not in t for t in texts)
    assert "bal_account_no=" in proposed.evidence


def test_approval_after_the_order_moved_is_refused_and_supersedes(
    db: Database, sim_client: WeChatPayClient
) -> None:
    order_id = reduction_in_review(db, "RESMOVED")
    proposed = res.resolve(
        db, sim_client, REDUCTION, order_id, state="FAILED", evidence=EVIDENCE, actor="alice"
    )
    # Moved behind the proposal's back (not through retry, which supersedes at once).
    to_review(db, REDUCTION, order_id)
    with pytest.raises(ResolutionRefused, match="superseded"):
        res.approve(db, REDUCTION, order_id, actor="bob")
    assert state_of(db, REDUCTION, order_id)[0] == "NEEDS_REVIEW"
    [stored] = res.resolutions(db, REDUCTION, order_id=order_id)
    assert stored.id == proposed.id and stored.status == "superseded"
    assert "superseded" in events(db, REDUCTION, order_id)[-1].reason


def test_an_operator_retry_supersedes_the_pending_resolution(
    db: Database, sim_client: WeChatPayClient
) -> None:
    order_id = reduction_in_review(db, "RESRETRY")
    res.resolve(db, sim_client, REDUCTION, order_id, state="FAILED", evidence=EVIDENCE, actor="a")
    operator.retry(db, REDUCTION, order_id, actor="ops", why="try once more")
    assert res.pending(db, REDUCTION) == []
    [stored] = res.resolutions(db, REDUCTION, order_id=order_id)
    assert stored.status == "superseded" and stored.decided_by == "ops"
    with pytest.raises(ResolutionRefused, match="no pending resolution"):
        res.approve(db, REDUCTION, order_id, actor="bob")
    assert verify(db)[1] == []


def test_withdraw(db: Database, sim_client: WeChatPayClient) -> None:
    order_id = reduction_in_review(db, "RESWD")
    before = state_of(db, REDUCTION, order_id)
    res.resolve(db, sim_client, REDUCTION, order_id, state="FAILED", evidence=EVIDENCE, actor="a")
    gone = res.withdraw(db, REDUCTION, order_id, actor="a", why="wrong order")
    assert gone.status == "withdrawn" and gone.decided_by == "a"
    assert state_of(db, REDUCTION, order_id) == before
    assert "withdrawn by a; wrong order" in events(db, REDUCTION, order_id)[-1].reason
    with pytest.raises(ResolutionRefused, match="no pending resolution"):
        res.approve(db, REDUCTION, order_id, actor="b")
    with pytest.raises(ResolutionRefused, match="no pending resolution"):
        res.withdraw(db, REDUCTION, order_id, actor="a")
    # A new proposal may follow.
    again = res.resolve(
        db, sim_client, REDUCTION, order_id, state="SUCCESS", evidence=EVIDENCE, actor="a"
    )
    assert again.status == "pending"


def test_bill_pending_then_approved_closed(
    db: Database, sim_client: WeChatPayClient, sim_admin: AdminClient
) -> None:
    sim_admin.seed_bill("RESBILL1", 800, final_after=10_000)  # still in flight at the provider
    order_id = bill_in_review(db, "RESBILL1")
    with pytest.raises(ResolutionRefused, match="CANCELLED, CLOSED, SUCCESS"):
        res.resolve(db, sim_client, BILL, order_id, state="FAILED", evidence=EVIDENCE, actor="a")
    proposed = res.resolve(
        db, sim_client, BILL, order_id, state="CLOSED", evidence=EVIDENCE, actor="a"
    )
    assert proposed.status == "pending" and proposed.query_request_id
    done = res.approve(db, BILL, order_id, actor="b")
    assert done.order_state == "CLOSED" == state_of(db, BILL, order_id)[0]
    [outcome] = outcomes(db, order_id)
    assert outcome["type"] == "bill.closed" and "approved by b" in outcome["reason"]


def test_bill_success_without_a_known_amount_needs_one(
    db: Database, sim_client: WeChatPayClient
) -> None:
    order_id = bill_in_review(db, "RESBILL2")  # unknown to the provider: no amount anywhere
    with pytest.raises(ResolutionRefused, match="no known amount"):
        res.resolve(db, sim_client, BILL, order_id, state="SUCCESS", evidence=EVIDENCE, actor="a")
    proposed = res.resolve(
        db, sim_client, BILL, order_id, state="SUCCESS", evidence=EVIDENCE, actor="a", amount=900
    )
    assert proposed.amount == 900
    res.approve(db, BILL, order_id, actor="b")
    with db.read() as session:
        row = session.get(BILL.model, order_id)
        assert (row.state, row.amount) == ("SUCCESS", 900)


def test_no_answer_from_the_provider_refuses(
    db: Database, sim_client: WeChatPayClient, sim_admin: AdminClient
) -> None:
    order_id = reduction_in_review(db, "RESDOWN")
    sim_admin.add_fault("system_error", times=10)
    with pytest.raises(ResolutionRefused, match="could not be asked"):
        res.resolve(
            db, sim_client, REDUCTION, order_id, state="FAILED", evidence=EVIDENCE, actor="a"
        )
    assert res.resolutions(db, REDUCTION) == []

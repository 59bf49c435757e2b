"""Bulk intake and chunked polling.

``intake.submit_reductions`` writes many orders under one claim token in the caller's
transaction and, only after it commits, publishes them as a few ``wxrecon.poll_reductions``
messages. A chunk's steps (``Reconciler.reduction_steps`` / ``bill_steps``) read the chunk's
rows in one select, on one pinned connection, and must end exactly where processing each order
with ``process_reduction`` / ``process_bill`` ends; the task isolates each order's failure.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import event, func, select, update

from tests.fixtures_db import EngineSettings, FakeClock, FakeProvider, bill, reduction
from wxrecon import intake, runtime, tasks
from wxrecon.config import Settings
from wxrecon.domain.errors import Conflict
from wxrecon.domain.kinds import BILL, REDUCTION
from wxrecon.domain.states import BState, RState
from wxrecon.engine import intake as engine_intake
from wxrecon.engine import operator
from wxrecon.engine import steps as steps_module
from wxrecon.engine.intake import intake_bill, intake_reduction, new_token
from wxrecon.engine.steps import Reconciler
from wxrecon.engine.sweep import claim_due
from wxrecon.store import sql
from wxrecon.store.db import Database
from wxrecon.store.models import CompensationBill, Event, SpecialReduction
from wxrecon.store.reads import bill_events, reduction_events
from wxrecon.wechatpay import errors
from wxrecon.wechatpay.client import Endpoint
from wxrecon.wechatpay.errors import InvalidRequest
from wxrecon.wechatpay.resources import SpecialReductionRequest

MCHID = "1900000109"
OTHER_MCHID = "1900000110"
LEDGER = "6222000011112222"


def order(no: str, **overrides: Any) -> dict[str, Any]:
    return {
        "mchid": MCHID,
        "bal_account_no": LEDGER,
        "out_request_no": no,
        "reduction_type": "FINANCIAL_PENALTY",
        "amount": 100,
        "reason": "bulk",
        **overrides,
    }


class Sent(list[tuple[str, dict[str, Any]]]):
    def __call__(self, name: str, kwargs: dict[str, Any]) -> None:
        self.append((name, kwargs))


def count(db: Database, model: Any = SpecialReduction) -> int:
    with db.read() as session:
        return int(session.execute(select(func.count()).select_from(model)).scalar_one())


def snapshot(db: Database, model: Any, order_id: int, *, skip: tuple[str, ...] = ()) -> dict:
    """Every stored column of one row (minus ``skip``)."""
    with db.read() as session:
        row = session.get(model, order_id)
    assert row is not None
    return {c.name: getattr(row, c.name) for c in model.__table__.columns if c.name not in skip}


def history(db: Database, model: Any, order_id: int) -> list[tuple[Any, ...]]:
    with db.read() as session:
        found = (reduction_events if model is SpecialReduction else bill_events)(session, order_id)
        return [
            (e.kind, e.from_state, e.to_state, e.reason, e.request_id, e.actor, e.at) for e in found
        ]


def path(db: Database, order_id: int) -> list[tuple[str | None, str]]:
    return [(e[1], e[2]) for e in history(db, SpecialReduction, order_id)]


def state(db: Database, model: Any, order_id: int) -> str:
    return str(snapshot(db, model, order_id)["state"])


def make_request(no: str, mchid: str = MCHID) -> SpecialReductionRequest:
    return SpecialReductionRequest.create(**order(no, mchid=mchid))


def intake_all(
    db: Database, clock: FakeClock, nos: list[str], *, mchid: str = MCHID, token: str = ""
) -> tuple[list[int], str]:
    """New reductions claimed together under one token (as a bulk intake leaves them)."""
    token = token or new_token()
    with db.transaction() as session:
        ids = [
            intake_reduction(session, make_request(no, mchid), token=token, now=clock()).order_id
            for no in nos
        ]
    return ids, token


def track_all(
    db: Database, clock: FakeClock, nos: list[str], *, token: str = ""
) -> tuple[list[int], str]:
    token = token or new_token()
    with db.transaction() as session:
        ids = [intake_bill(session, no, token=token, now=clock()).order_id for no in nos]
    return ids, token


def run_chunk(steps: Iterator[tuple[int, Callable[[], str | None]]]) -> list[str | None]:
    return [step() for _, step in steps]


@pytest.fixture
def rec(
    db: Database, provider: FakeProvider, engine_settings: EngineSettings, clock: FakeClock
) -> Reconciler:
    return Reconciler(db, provider, engine_settings, clock=clock)


# -- submit_reductions: one token, rows and events --------------------------------------------


def test_bulk_rows_share_one_token_and_each_has_a_received_event(db: Database) -> None:
    sent = Sent()
    with db.transaction() as session:
        results = intake.submit_reductions(
            session, [order(f"B{i}") for i in range(3)], enqueue=sent
        )
    assert [(r.created, r.state) for r in results] == [(True, RState.RECEIVED)] * 3
    tokens = {r.token for r in results}
    assert len(tokens) == 1 and None not in tokens
    ids = [r.order_id for r in results]
    assert len(set(ids)) == 3 and count(db) == 3 and count(db, Event) == 3
    for i, order_id in enumerate(ids):
        row = snapshot(db, SpecialReduction, order_id)
        assert row["out_request_no"] == f"B{i}" and row["state"] == RState.RECEIVED
        assert row["claim_token"] == results[0].token and row["claimed_until"] is not None
        assert [(e[1], e[2], e[5]) for e in history(db, SpecialReduction, order_id)] == [
            (None, "RECEIVED", "intake")
        ]


def test_multi_row_inserts_map_each_result_to_its_own_row(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows go in several multi-row INSERTs; RETURNING's order is not the input's, so each
    result must still name the row of its own order (a repeat across two statements too)."""
    monkeypatch.setattr(engine_intake, "ROWS_PER_STATEMENT", 3)
    with db.transaction() as session:
        intake.submit_reductions(session, [order("MOLD")], enqueue=Sent())
    nos = ["M5", "M1", "MOLD", "M4", "M2", "M1", "M3", "M0"]
    amounts = {no: 100 + i for i, no in enumerate(dict.fromkeys(nos))}
    sent = Sent()
    with db.transaction() as session:
        batch = [order(no, amount=100 if no == "MOLD" else amounts[no]) for no in nos]
        results = intake.submit_reductions(session, batch, enqueue=sent, chunk=100)
    assert [r.created for r in results] == [True, True, False, True, True, False, True, True]
    for no, result in zip(nos, results, strict=True):
        row = snapshot(db, SpecialReduction, result.order_id)
        assert row["out_request_no"] == no
        assert row["amount"] == (100 if no == "MOLD" else amounts[no])
    assert results[1].order_id == results[5].order_id and results[5].token == results[1].token
    assert results[2].token is None  # written by an earlier batch: not enqueued again
    assert count(db) == 7 and count(db, Event) == 7
    [(_, message)] = sent
    assert message["ids"] == list(dict.fromkeys(r.order_id for r in results if r.created))


def test_orders_may_be_any_iterable_of_mappings(db: Database) -> None:
    sent = Sent()
    with db.transaction() as session:
        results = intake.submit_reductions(
            session, (order(f"G{i}") for i in range(2)), enqueue=sent
        )
    assert len(results) == 2 and count(db) == 2
    assert [i for _, m in sent for i in m["ids"]] == [r.order_id for r in results]


# -- submit_reductions: publishing after commit, in chunks -------------------------------------


def test_messages_are_published_only_after_commit_in_chunks(db: Database) -> None:
    sent = Sent()
    with db.transaction() as session:
        results = intake.submit_reductions(
            session, [order(f"C{i:02}") for i in range(25)], enqueue=sent, chunk=10
        )
        assert sent == []  # nothing before the commit
    assert [name for name, _ in sent] == ["wxrecon.poll_reductions"] * 3
    assert [len(m["ids"]) for _, m in sent] == [10, 10, 5]
    published = [i for _, m in sent for i in m["ids"]]
    assert published == [r.order_id for r in results]  # every id once, in order
    assert len(set(published)) == 25
    token = results[0].token
    assert {m["token"] for _, m in sent} == {token}
    with db.read() as session:
        found = session.execute(select(SpecialReduction.id, SpecialReduction.claim_token))
        stored = {order_id: claim for order_id, claim in found}
    assert sorted(stored) == sorted(published) and set(stored.values()) == {token}


def test_default_chunk_is_poll_chunk_and_no_chunk_exceeds_the_cap(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(intake, "get_settings", lambda: Settings.model_validate({"poll_chunk": 4}))
    sent = Sent()
    with db.transaction() as session:
        intake.submit_reductions(session, [order(f"D{i}") for i in range(7)], enqueue=sent)
    assert [len(m["ids"]) for _, m in sent] == [4, 3]

    monkeypatch.setattr(intake, "MAX_CHUNK", 2)
    sent.clear()
    with db.transaction() as session:
        intake.submit_reductions(
            session, [order(f"E{i}") for i in range(5)], enqueue=sent, chunk=100
        )
    assert [len(m["ids"]) for _, m in sent] == [2, 2, 1]


def test_rolled_back_batch_writes_and_publishes_nothing(db: Database) -> None:
    sent = Sent()
    with pytest.raises(RuntimeError), db.transaction() as session:
        intake.submit_reductions(session, [order(f"R{i}") for i in range(3)], enqueue=sent)
        raise RuntimeError("the app's own work failed")
    assert sent == [] and count(db) == 0 and count(db, Event) == 0
    # A later commit on the same database does not publish the rolled-back batch.
    with db.transaction() as session:
        intake.submit_reductions(session, [order("AFTER")], enqueue=sent)
    assert len(sent) == 1 and len(sent[0][1]["ids"]) == 1 and count(db) == 1


def test_an_empty_batch_writes_and_publishes_nothing(db: Database) -> None:
    sent = Sent()
    with db.transaction() as session:
        assert intake.submit_reductions(session, [], enqueue=sent) == []
    assert sent == [] and count(db) == 0


# -- submit_reductions: validation before any write --------------------------------------------


@pytest.mark.parametrize(
    ("position", "field", "value"),
    [
        (0, "amount", 0),
        (2, "mchid", "19abc"),
        (3, "amount", "100"),
        (4, "out_request_no", "has space"),
        (4, "bal_account_no", None),
    ],
)
def test_a_bad_order_is_named_by_position_and_nothing_is_written(
    db: Database, position: int, field: str, value: Any
) -> None:
    orders = [order(f"V{i}") for i in range(5)]
    orders[position][field] = value
    sent = Sent()
    with db.transaction() as session:
        # An app that catches the error and commits anyway: still nothing was written,
        # even the valid orders before the bad one.
        with pytest.raises(InvalidRequest) as info:
            intake.submit_reductions(session, orders, enqueue=sent)
        assert session.execute(select(func.count()).select_from(SpecialReduction)).scalar() == 0
    message = str(info.value)
    assert f"order #{position}:" in message and "\n" not in message and LEDGER not in message
    assert sent == [] and count(db) == 0 and count(db, Event) == 0


def test_the_first_bad_order_is_the_one_named(db: Database) -> None:
    orders = [order(f"F{i}") for i in range(5)]
    orders[1]["amount"] = -1
    orders[3]["reduction_type"] = "REFUND"
    sent = Sent()
    with pytest.raises(InvalidRequest) as info, db.transaction() as session:
        intake.submit_reductions(session, orders, enqueue=sent)
    assert "order #1:" in str(info.value) and "#3" not in str(info.value)
    assert sent == [] and count(db) == 0


def test_an_unknown_key_is_refused(db: Database) -> None:
    orders = [order("U0"), order("U1"), {**order("U2"), "amount_fen": 100}]
    sent = Sent()
    with pytest.raises(InvalidRequest, match=r"order #2: .*amount_fen"), db.transaction() as s:
        intake.submit_reductions(s, orders, enqueue=sent)
    assert sent == [] and count(db) == 0 and count(db, Event) == 0


# -- submit_reductions: repeats, existing orders, conflicts -----------------------------------


def test_repeats_and_existing_orders_are_returned_but_not_enqueued_again(db: Database) -> None:
    sent = Sent()
    with db.transaction() as session:
        [old] = intake.submit_reductions(session, [order("OLD")], enqueue=sent)
    assert len(sent) == 1
    old_row = snapshot(db, SpecialReduction, old.order_id)
    sent.clear()
    with db.transaction() as session:
        results = intake.submit_reductions(
            session,
            [order("N1"), order("OLD"), order("N2"), order("N1"), order("N1")],
            enqueue=sent,
            chunk=10,
        )
    n1, again_old, n2, n1_again, n1_third = results
    assert again_old.order_id == old.order_id and not again_old.created
    assert again_old.token is None  # claimed by the earlier batch, not by this one
    assert n1.created and n2.created and n1.token == n2.token
    assert n1_again.order_id == n1_third.order_id == n1.order_id and not n1_again.created
    assert sent == [
        ("wxrecon.poll_reductions", {"ids": [n1.order_id, n2.order_id], "token": n1.token})
    ]
    assert count(db) == 3 and count(db, Event) == 3
    assert snapshot(db, SpecialReduction, old.order_id) == old_row  # untouched


def test_a_batch_of_existing_orders_publishes_nothing(db: Database) -> None:
    sent = Sent()
    with db.transaction() as session:
        intake.submit_reductions(session, [order("X1"), order("X2")], enqueue=sent)
    sent.clear()
    with db.transaction() as session:
        results = intake.submit_reductions(session, [order("X2"), order("X1")], enqueue=sent)
    assert [r.created for r in results] == [False, False] and sent == []


def test_a_repeat_with_other_parameters_is_refused_wherever_it_stands(db: Database) -> None:
    """Each order is compared as given, not as the last repetition of its number (which
    here matches the stored order and so would hide the first one's difference)."""
    with db.transaction() as session:
        intake.submit_reductions(session, [order("RP")], enqueue=Sent())
    for batch in ([order("RP", amount=101), order("RP")], [order("RP"), order("RP", amount=101)]):
        with pytest.raises(Conflict, match="amount"), db.transaction() as session:
            intake.submit_reductions(session, batch, enqueue=Sent())
    with pytest.raises(Conflict, match="bal_account_no"), db.transaction() as session:
        other = order("RP", bal_account_no="6222000099998888")
        intake.submit_reductions(session, [other, order("RP")], enqueue=Sent())
    assert count(db) == 1


def test_a_conflict_raises_and_the_batch_is_rolled_back(db: Database) -> None:
    sent = Sent()
    with db.transaction() as session:
        intake.submit_reductions(session, [order("OLD")], enqueue=sent)
    sent.clear()
    with pytest.raises(Conflict, match="amount"), db.transaction() as session:
        intake.submit_reductions(session, [order("NEW"), order("OLD", amount=101)], enqueue=sent)
    assert sent == [] and count(db) == 1 and count(db, Event) == 1
    # Within one batch too: the same number twice with different parameters.
    with pytest.raises(Conflict, match="reason"), db.transaction() as session:
        intake.submit_reductions(session, [order("T1"), order("T1", reason="other")], enqueue=sent)
    assert sent == [] and count(db) == 1


def selects_of(db: Database, table: str) -> list[str]:
    """The SELECT statements on ``table`` that ``db``'s engine runs from now on."""
    seen: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        text = " ".join(statement.split()).lower()
        if text.startswith("select") and f"from {table}" in text:
            seen.append(text)

    event.listen(db.engine, "before_cursor_execute", before)
    return seen


def test_stored_orders_are_looked_up_together_not_one_select_each(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A re-run of a big file meets a whole batch of stored orders: one look-up for all of
    them (SQLite: one per KEYS_PER_SELECT keys), each result still its own order's."""
    monkeypatch.setattr(sql, "KEYS_PER_SELECT", 7)
    with db.transaction() as session:
        first = intake.submit_reductions(
            session, [order(f"S{i:02}", amount=100 + i) for i in range(30)], enqueue=Sent()
        )
    seen = selects_of(db, "special_reductions")
    sent = Sent()
    again = [order(f"S{i:02}", amount=100 + i) for i in reversed(range(30))]
    with db.transaction() as session:
        results = intake.submit_reductions(session, [*again, order("SNEW")], enqueue=sent)
    assert len(seen) == (1 if db.is_postgresql else 5)  # 30 keys, 7 per select on SQLite
    assert [r.order_id for r in results[:30]] == [r.order_id for r in reversed(first)]
    assert not any(r.created or r.token for r in results[:30])
    assert results[30].created and [m["ids"] for _, m in sent] == [[results[30].order_id]]
    # A difference is still found among many: the batch is refused as a whole.
    changed = [*again[:20], order("S05", amount=999), *again[20:]]
    with pytest.raises(Conflict, match="amount"), db.transaction() as session:
        intake.submit_reductions(session, changed, enqueue=sent)
    assert count(db) == 31


def test_the_look_up_searches_the_unique_index(db: Database) -> None:
    """Not a scan of the whole table per page of keys (SQLite's plan for the row-value
    ``IN (VALUES …)`` SQLAlchemy renders: a re-run of a big file would read the table once
    per 500 rows)."""
    seen: list[tuple[str, Any]] = []

    def before(conn: Any, cursor: Any, statement: str, params: Any, *args: Any) -> None:
        if "special_reductions" in statement:
            seen.append((statement, params))

    event.listen(db.engine, "before_cursor_execute", before)
    keys = [(MCHID, "A1"), (MCHID, "A2"), (OTHER_MCHID, "A1")]
    with db.begin() as conn:
        assert sql.find_by_numbers(conn, SpecialReduction, ("mchid", "out_request_no"), keys) == []
        [(statement, params)] = seen
        if db.is_postgresql:
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")  # the table is empty
        explain = "EXPLAIN " if db.is_postgresql else "EXPLAIN QUERY PLAN "
        plan = " ".join(str(r[-1]) for r in conn.exec_driver_sql(explain + statement, params))
    plan = plan.lower()
    assert "index" in plan, plan
    assert "scan special_reductions" not in plan and "seq scan on special_reductions" not in plan


def test_a_bulk_insert_stores_every_value_as_given(db: Database) -> None:
    """The PostgreSQL insert sends each column as one binary array: text with the
    characters a text array would quote or escape, no reason at all, the largest amount;
    each order's first event is the intake's."""
    reasons = ['a "quoted", {braced} \\ reason', "NULL", None, "罚款 — 第3条", "x" * 512]
    amounts = [1, 2**63 - 1, 100, 7, 10**12]
    orders = [
        order(f"Q{i}", reason=reason, amount=amount)
        for i, (reason, amount) in enumerate(zip(reasons, amounts, strict=True))
    ]
    with db.transaction() as session:
        results = intake.submit_reductions(session, orders, enqueue=Sent())
    for given, result in zip(orders, results, strict=True):
        row = snapshot(db, SpecialReduction, result.order_id)
        assert (row["reason"], row["amount"]) == (given["reason"], given["amount"])
        assert row["out_request_no"] == given["out_request_no"] and row["mchid"] == MCHID
        assert (row["state"], row["version"], row["attempts"]) == (RState.RECEIVED, 1, 0)
        assert row["created_at"] == row["updated_at"] < row["claimed_until"]
        assert row["claimed_until"] == row["next_poll_at"]
        assert row["claim_token"] == result.token
        assert history(db, SpecialReduction, result.order_id) == [
            (
                "reduction",
                None,
                "RECEIVED",
                REDUCTION.intake_reason,
                None,
                "intake",
                row["created_at"],
            )
        ]


def test_new_orders_are_counted_in_the_transition_metric(db: Database) -> None:
    from wxrecon.metrics import TRANSITIONS

    def received() -> float:
        return TRANSITIONS.labels("reduction", "", "RECEIVED")._value.get()

    before = received()
    with db.transaction() as session:
        intake.submit_reductions(session, [order(f"MT{i}") for i in range(4)], enqueue=Sent())
        intake.submit_reductions(session, [order("MT0"), order("MT9")], enqueue=Sent())
    assert received() - before == 5


# -- the steps of a chunk: the same outcome as one order at a time ----------------------------

# Per order: the answers to its first step (from RECEIVED) and to its second (once due again).
# Each entry: (submit answers, query answers) for that step.
Script = tuple[list[Any], list[Any]]
REDUCTION_SCRIPTS: dict[str, tuple[Script, Script]] = {
    "OK": (([reduction("OK", "PROCESSING")], []), ([], [reduction("OK", "SUCCESS")])),
    "UNKNOWN": (
        ([errors.OutcomeUnknown(errors.NetworkError("timeout"))], []),
        # Not found long after the POST: the same POST is re-entered.
        ([reduction("UNKNOWN", "PROCESSING")], [errors.NotFound("no such order")]),
    ),
    # A refusal is confirmed by a query, and is final once one after the grace finds nothing.
    "REJECTED": (
        ([errors.Rejected("PARAM_ERROR", code="PARAM_ERROR")], [errors.NotFound("none")]),
        ([], [errors.NotFound("none")]),
    ),
    "FINAL": (([reduction("FINAL", "SUCCESS")], []), ([], [])),
    "NOTENOUGH": (
        (
            [errors.NotEnough("balance", code="NOT_ENOUGH")],
            [reduction("NOTENOUGH", "FAILED", fail_reason="BALANCE_NOT_ENOUGH")],
        ),
        ([], []),
    ),
    "THROTTLED": (
        ([errors.Throttled(2.0, "query")], []),
        ([], [reduction("THROTTLED", "PROCESSING")]),
    ),
    "DIFFERS": (([reduction("DIFFERS", "PROCESSING", amount=999)], []), ([], [])),
    "BUSY": (
        ([reduction("BUSY", "PROCESSING")], []),
        ([], [errors.ProviderBusy("503", status=503)]),
    ),
}
NOS = list(REDUCTION_SCRIPTS)


def script(provider: FakeProvider, phase: int) -> None:
    """Queue every order's answers for ``phase``, in order, once for each set of orders."""
    for _ in range(2):
        for no in NOS:
            submits, queries = REDUCTION_SCRIPTS[no][phase]
            provider.submit_answers.extend(submits)
            provider.query_answers.extend(queries)


def calls(provider: FakeProvider) -> tuple[list[tuple[str, int]], list[str]]:
    """What the provider was asked, minus the merchant (the two sets differ only in it)."""
    return [(r.out_request_no, r.amount) for r in provider.submits], [
        q[0] for q in provider.queries
    ]


def test_a_chunk_ends_where_one_order_at_a_time_ends(
    db: Database, rec: Reconciler, provider: FakeProvider, clock: FakeClock
) -> None:
    # The same orders twice (same numbers, another merchant): set A goes through chunk steps,
    # set B one at a time, all under one token, against the same scripted answers.
    a_ids, token = intake_all(db, clock, NOS)
    b_ids, _ = intake_all(db, clock, NOS, mchid=OTHER_MCHID, token=token)

    for phase in (0, 1):
        if phase == 1:
            clock.advance(120)  # everything in flight is due, and past the re-entry grace
            claims = claim_due(db, REDUCTION, limit=100, lease=120, now=clock())
            assert len({c.token for c in claims}) == 1
            token = claims[0].token
            due = {c.id for c in claims}
            a_ids, b_ids = [i for i in a_ids if i in due], [i for i in b_ids if i in due]
            assert len(a_ids) == 5  # OK, UNKNOWN, REJECTED, THROTTLED, BUSY
        script(provider, phase)
        provider.submits.clear()
        provider.queries.clear()
        run_chunk(rec.steps(REDUCTION, a_ids, token))
        by_chunk = calls(provider)
        provider.submits.clear()
        provider.queries.clear()
        for order_id in b_ids:
            rec.process(REDUCTION, order_id, token)
        assert calls(provider) == by_chunk
        assert not provider.submit_answers and not provider.query_answers  # all used

    with db.read() as session:
        a_all = session.execute(
            select(SpecialReduction.id).where(SpecialReduction.mchid == MCHID)
        ).scalars()
        b_all = session.execute(
            select(SpecialReduction.id).where(SpecialReduction.mchid == OTHER_MCHID)
        ).scalars()
        pairs = list(zip(sorted(a_all), sorted(b_all), strict=True))
    ends = {}
    for no, (a, b) in zip(NOS, pairs, strict=True):
        # The sealed ledger numbers differ (a fresh nonce, bound to the row); their hashes not.
        skip = ("id", "mchid", "bal_account_no")
        assert snapshot(db, SpecialReduction, a, skip=skip) == snapshot(
            db, SpecialReduction, b, skip=skip
        ), no
        assert history(db, SpecialReduction, a) == history(db, SpecialReduction, b), no
        ends[no] = state(db, SpecialReduction, a)
    assert ends == {
        "OK": RState.SUCCESS,
        "UNKNOWN": RState.PROCESSING,
        "REJECTED": RState.REJECTED,
        "FINAL": RState.SUCCESS,
        "NOTENOUGH": RState.FAILED,
        "THROTTLED": RState.PROCESSING,
        "DIFFERS": RState.NEEDS_REVIEW,
        "BUSY": RState.PROCESSING,
    }


def test_each_step_returns_the_state_process_reduction_returns(
    db: Database, rec: Reconciler, provider: FakeProvider, clock: FakeClock
) -> None:
    a_ids, token = intake_all(db, clock, NOS)
    b_ids, _ = intake_all(db, clock, NOS, mchid=OTHER_MCHID, token=token)
    script(provider, 0)
    from_steps = run_chunk(rec.steps(REDUCTION, a_ids, token))
    one_by_one = [rec.process(REDUCTION, order_id, token) for order_id in b_ids]
    assert one_by_one == [state(db, SpecialReduction, i) for i in b_ids]  # the end state
    assert from_steps == one_by_one


BILL_SCRIPTS: dict[str, tuple[list[Any], list[Any]]] = {
    "BA": ([bill("BA", "ACCEPTED")], [bill("BA", "SUCCESS")]),
    "BB": ([errors.NotFound("not yet")], [bill("BB", "WAIT_USER_CONFIRM")]),
    "BC": ([bill("BC", "CLOSED", close_reason="EXPIRED")], []),
    "BD": ([errors.UnexpectedAnswer("418")], []),
    "BE": ([errors.Throttled(1.0, "bill")], [bill("BE", "CANCELING")]),
}


def test_bill_chunk_ends_where_one_bill_at_a_time_ends(
    db: Database, rec: Reconciler, provider: FakeProvider, clock: FakeClock
) -> None:
    # Set A ("A…") goes through chunk steps, set B ("Z…") one at a time, under one token.
    a_ids, token = track_all(db, clock, [f"A{no}" for no in BILL_SCRIPTS])
    b_ids, _ = track_all(db, clock, [f"Z{no}" for no in BILL_SCRIPTS], token=token)
    for phase in (0, 1):
        if phase == 1:
            clock.advance(120)
            claims = claim_due(db, BILL, limit=100, lease=120, now=clock())
            token = claims[0].token
            due = {c.id for c in claims}
            a_ids, b_ids = [i for i in a_ids if i in due], [i for i in b_ids if i in due]
            assert len(a_ids) == 3  # BA, BB, BE
        for _ in range(2):
            for answers in BILL_SCRIPTS.values():
                provider.bill_answers.extend(answers[phase])
        provider.bill_queries.clear()
        run_chunk(rec.steps(BILL, a_ids, token))
        by_chunk = [no[1:] for no in provider.bill_queries]
        provider.bill_queries.clear()
        for order_id in b_ids:
            rec.process(BILL, order_id, token)
        assert [no[1:] for no in provider.bill_queries] == by_chunk
        assert not provider.bill_answers
    with db.read() as session:
        ids = session.execute(
            select(CompensationBill.id, CompensationBill.out_bill_no).order_by(CompensationBill.id)
        ).all()
    a_all = [i for i, no in ids if no.startswith("A")]
    b_all = [i for i, no in ids if no.startswith("Z")]
    ends = []
    for a, b in zip(a_all, b_all, strict=True):
        skip = ("id", "out_bill_no")
        assert snapshot(db, CompensationBill, a, skip=skip) == snapshot(
            db, CompensationBill, b, skip=skip
        )
        assert history(db, CompensationBill, a) == history(db, CompensationBill, b)
        ends.append(state(db, CompensationBill, a))
    assert ends == [
        BState.SUCCESS,
        BState.WAIT_USER_CONFIRM,
        BState.CLOSED,
        BState.NEEDS_REVIEW,
        BState.CANCELING,
    ]


# -- the steps of a chunk: missing rows, stale claims, rows that moved on ----------------------


def test_a_missing_id_yields_a_step_that_does_nothing(
    db: Database, rec: Reconciler, provider: FakeProvider, clock: FakeClock
) -> None:
    [real], token = intake_all(db, clock, ["M1"])
    provider.submit_answers.append(reduction("M1", "PROCESSING"))
    pairs = list(rec.steps(REDUCTION, [424242, real, 424243], token))
    assert [i for i, _ in pairs] == [424242, real, 424243]
    steps = [step for _, step in pairs]
    assert steps[0]() is None and provider.submits == []
    steps[1]()
    assert steps[2]() is None
    assert [r.out_request_no for r in provider.submits] == ["M1"]
    assert state(db, SpecialReduction, real) == RState.PROCESSING
    assert run_chunk(rec.steps(BILL, [424242], token)) == [None] and provider.bill_queries == []


def test_stale_token_steps_do_nothing(
    db: Database, rec: Reconciler, provider: FakeProvider, clock: FakeClock
) -> None:
    ids, _ = intake_all(db, clock, ["S1", "S2"])
    bill_ids, _ = track_all(db, clock, ["SB1"])
    before = [snapshot(db, SpecialReduction, i) for i in ids]
    bill_before = snapshot(db, CompensationBill, bill_ids[0])
    events = count(db, Event)
    assert run_chunk(rec.steps(REDUCTION, ids, "someone-elses-token")) == [None, None]
    assert run_chunk(rec.steps(BILL, bill_ids, "someone-elses-token")) == [None]
    assert [snapshot(db, SpecialReduction, i) for i in ids] == before
    assert snapshot(db, CompensationBill, bill_ids[0]) == bill_before
    assert provider.submits == [] and provider.queries == [] and provider.bill_queries == []
    assert count(db, Event) == events


def bump(db: Database, model: Any, order_id: int) -> None:
    """Someone else writes the row (a new version), leaving its claim as it was."""
    with db.begin() as conn:
        conn.execute(update(model).where(model.id == order_id).values(version=model.version + 1))


def test_a_row_changed_after_the_chunk_read_is_not_sent_or_overwritten(
    db: Database,
    rec: Reconciler,
    provider: FakeProvider,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids, token = intake_all(db, clock, ["W1", "W2", "W3"])
    provider.submit_answers.extend([reduction("W1", "PROCESSING"), reduction("W3", "PROCESSING")])
    read = steps_module.load_rows

    def read_then_someone_writes(*args: Any) -> dict[int, Any]:
        rows = read(*args)
        bump(db, SpecialReduction, ids[1])  # between the chunk's read and its mark
        return rows

    monkeypatch.setattr(steps_module, "load_rows", read_then_someone_writes)
    steps = rec.steps(REDUCTION, ids, token)
    first_id, first = next(steps)
    assert first_id == ids[0]  # the chunk's rows are read, and its new orders marked, now
    moved = snapshot(db, SpecialReduction, ids[1])
    first()
    next(steps)[1]()
    next(steps)[1]()
    with pytest.raises(StopIteration):
        next(steps)
    # Its mark before sending lost the compare-and-set: no POST went out for it.
    assert [r.out_request_no for r in provider.submits] == ["W1", "W3"]
    assert snapshot(db, SpecialReduction, ids[1]) == moved and moved["version"] == 2
    assert path(db, ids[1]) == [(None, "RECEIVED")]
    assert state(db, SpecialReduction, ids[0]) == state(db, SpecialReduction, ids[2])
    assert state(db, SpecialReduction, ids[2]) == RState.PROCESSING


def test_an_outcome_for_a_row_changed_after_the_chunk_read_is_not_written(
    db: Database, rec: Reconciler, provider: FakeProvider, clock: FakeClock
) -> None:
    ids, token = intake_all(db, clock, ["P1", "P2", "P3"])
    provider.submit_answers.extend(reduction(no, "PROCESSING") for no in ("P1", "P2", "P3"))
    run_chunk(rec.steps(REDUCTION, ids, token))
    clock.advance(60)
    claims = claim_due(db, REDUCTION, limit=10, lease=120, now=clock())
    token = claims[0].token
    provider.query_answers.extend(reduction(no, "SUCCESS") for no in ("P1", "P2", "P3"))
    steps = rec.steps(REDUCTION, ids, token)
    first_id, first = next(steps)
    assert first_id == ids[0]
    # An operator re-queries P2 while the chunk runs: a new version, its claim dropped.
    operator.requery(db, REDUCTION, ids[1], actor="ops:amy", why="check", now=clock())
    after_operator = snapshot(db, SpecialReduction, ids[1])
    first()
    next(steps)[1]()
    next(steps)[1]()
    steps.close()
    assert snapshot(db, SpecialReduction, ids[1]) == after_operator  # our SUCCESS lost
    assert path(db, ids[1])[-1] == ("PROCESSING", "PROCESSING")
    assert history(db, SpecialReduction, ids[1])[-1][5] == "ops:amy"
    assert state(db, SpecialReduction, ids[0]) == RState.SUCCESS
    assert state(db, SpecialReduction, ids[2]) == RState.SUCCESS


def test_a_bill_changed_after_the_chunk_read_is_not_overwritten(
    db: Database, rec: Reconciler, provider: FakeProvider, clock: FakeClock
) -> None:
    ids, token = track_all(db, clock, ["BW1", "BW2"])
    provider.bill_answers.extend([bill("BW1", "ACCEPTED"), bill("BW2", "ACCEPTED")])
    steps = rec.steps(BILL, ids, token)
    first_id, first = next(steps)
    assert first_id == ids[0]
    bump(db, CompensationBill, ids[1])
    moved = snapshot(db, CompensationBill, ids[1])
    first()
    next(steps)[1]()
    steps.close()
    assert state(db, CompensationBill, ids[0]) == BState.ACCEPTED
    assert snapshot(db, CompensationBill, ids[1]) == moved
    assert [e[2] for e in history(db, CompensationBill, ids[1])] == ["TRACKING"]


# -- the steps of a chunk: new orders marked SUBMITTED together, before the first POST ---------


def test_a_chunk_marks_its_new_orders_in_one_commit_before_its_first_post(
    db: Database, rec: Reconciler, provider: FakeProvider, clock: FakeClock
) -> None:
    ids, token = intake_all(db, clock, ["N1", "N2", "N3"])
    provider.submit_answers.extend(reduction(no, "PROCESSING") for no in ("N1", "N2", "N3"))
    seen_at_each_post: list[list[str]] = []
    provider.hook = lambda: seen_at_each_post.append([state(db, SpecialReduction, i) for i in ids])
    commits: list[int] = []  # of transactions that wrote (a read ends with a COMMIT too)
    wrote: set[int] = set()

    def executing(conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if not statement.lstrip().upper().startswith(("SELECT", "BEGIN")):
            wrote.add(id(conn))

    def committed(conn: Any) -> None:
        if id(conn) in wrote:
            wrote.discard(id(conn))
            commits.append(1)

    event.listen(db.engine, "before_cursor_execute", executing)
    event.listen(db.engine, "commit", committed)
    try:
        assert run_chunk(rec.steps(REDUCTION, ids, token)) == [RState.PROCESSING] * 3
    finally:
        event.remove(db.engine, "before_cursor_execute", executing)
        event.remove(db.engine, "commit", committed)
    assert seen_at_each_post[0] == [RState.SUBMITTED] * 3  # all marked before the first POST
    # One commit marks the chunk, one writes its outcomes (one per order was one each).
    assert len(commits) == 2
    for i in ids:
        assert [to for _, to in path(db, i)] == ["RECEIVED", "SUBMITTED", "PROCESSING"]
        assert history(db, SpecialReduction, i)[1][3] == "sending"


def test_a_marked_order_never_sent_is_found_missing_and_sent_again_alike(
    db: Database, rec: Reconciler, provider: FakeProvider, clock: FakeClock
) -> None:
    ids, token = intake_all(db, clock, ["U1", "U2"])
    provider.submit_answers.append(reduction("U1", "PROCESSING"))
    steps = rec.steps(REDUCTION, ids, token)
    next(steps)[1]()
    steps.close()  # the worker stops before U2's turn: U2 is marked, never sent
    assert [r.out_request_no for r in provider.submits] == ["U1"]
    assert state(db, SpecialReduction, ids[1]) == RState.SUBMITTED
    clock.advance(1000)  # its lease is over, and the re-entry grace since its mark
    claims = claim_due(db, REDUCTION, limit=10, lease=120, now=clock())
    assert {c.id for c in claims} >= {ids[1]}
    provider.query_answers.extend([reduction("U1", "SUCCESS"), errors.NotFound("no such order")])
    provider.submit_answers.append(reduction("U2", "PROCESSING"))
    run_chunk(rec.steps(REDUCTION, ids, claims[0].token))
    assert [q[0] for q in provider.queries] == ["U1", "U2"]
    assert [r.out_request_no for r in provider.submits] == ["U1", "U2"]
    assert provider.submits[1] == make_request("U2")  # the very order, as stored
    assert path(db, ids[1]) == [
        (None, "RECEIVED"),
        ("RECEIVED", "SUBMITTED"),
        ("SUBMITTED", "SUBMITTED"),  # the re-entry, with its reason
        ("SUBMITTED", "PROCESSING"),
    ]


def test_an_invalid_stored_order_is_not_marked_but_rejected_by_its_step(
    db: Database, rec: Reconciler, provider: FakeProvider, clock: FakeClock
) -> None:
    ids, token = intake_all(db, clock, ["V1", "V2"])
    with db.begin() as conn:  # a row no validation would have let in
        conn.execute(
            update(SpecialReduction).where(SpecialReduction.id == ids[0]).values(amount=-5)
        )
    provider.submit_answers.append(reduction("V2", "PROCESSING"))
    assert run_chunk(rec.steps(REDUCTION, ids, token)) == [RState.REJECTED, RState.PROCESSING]
    assert path(db, ids[0]) == [(None, "RECEIVED"), ("RECEIVED", "REJECTED")]
    assert "stored order is invalid" in history(db, SpecialReduction, ids[0])[1][3]
    assert [r.out_request_no for r in provider.submits] == ["V2"]


# -- the steps of a chunk: one select, one pinned connection -----------------------------------


class Statements:
    """Records (DBAPI connection, SQL) of every statement an engine runs, and pool checkouts."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.seen: list[tuple[int, str]] = []
        self.checkouts = 0

    def _execute(self, conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        self.seen.append((id(conn.connection.dbapi_connection), statement))

    def _checkout(self, *_: Any) -> None:
        self.checkouts += 1

    def __enter__(self) -> Statements:
        event.listen(self.db.engine, "before_cursor_execute", self._execute)
        event.listen(self.db.engine.pool, "checkout", self._checkout)
        return self

    def __exit__(self, *_: Any) -> None:
        event.remove(self.db.engine, "before_cursor_execute", self._execute)
        event.remove(self.db.engine.pool, "checkout", self._checkout)

    def row_reads(self, table: str) -> int:
        return sum(
            1
            for _, sql in self.seen
            if sql.lstrip().upper().startswith("SELECT") and f"FROM {table}" in sql
        )


def test_a_chunk_reads_its_rows_in_one_select(
    db: Database, rec: Reconciler, provider: FakeProvider, clock: FakeClock
) -> None:
    ids, token = intake_all(db, clock, ["O1", "O2", "O3", "O4"])
    provider.submit_answers.extend(reduction(f"O{i}", "PROCESSING") for i in range(1, 5))
    with Statements(db) as seen:
        run_chunk(rec.steps(REDUCTION, ids, token))
    assert seen.row_reads("special_reductions") == 1
    assert all(state(db, SpecialReduction, i) == RState.PROCESSING for i in ids)
    bill_ids, bill_token = track_all(db, clock, ["OB1", "OB2", "OB3"])
    provider.bill_answers.extend(bill(f"OB{i}", "ACCEPTED") for i in range(1, 4))
    with Statements(db) as seen:
        run_chunk(rec.steps(BILL, bill_ids, bill_token))
    assert seen.row_reads("compensation_bills") == 1


@pytest.fixture
def pg_rec(
    pg_db: Database, provider: FakeProvider, engine_settings: EngineSettings, clock: FakeClock
) -> Reconciler:
    return Reconciler(pg_db, provider, engine_settings, clock=clock)


@pytest.mark.postgres
def test_a_chunk_runs_on_one_pinned_connection(
    pg_db: Database, pg_rec: Reconciler, provider: FakeProvider, clock: FakeClock
) -> None:
    rec, pool = pg_rec, pg_db.engine.pool
    idle = pool.checkedout()  # type: ignore[attr-defined]
    ids, token = intake_all(pg_db, clock, ["G1", "G2", "G3"])
    provider.submit_answers.extend(reduction(f"G{i}", "PROCESSING") for i in range(1, 4))
    with Statements(pg_db) as chunk:
        steps = rec.steps(REDUCTION, ids, token)
        for _, step in steps:
            assert pool.checkedout() == idle + 1  # type: ignore[attr-defined]
            step()
    assert pool.checkedout() == idle  # type: ignore[attr-defined]
    assert chunk.checkouts == 1
    assert len({conn for conn, _ in chunk.seen}) == 1
    # The read, the chunk's marks as one statement, its held outcomes as one more.
    assert len(chunk.seen) == 3, [sql[:60] for _, sql in chunk.seen]
    assert [sql.startswith("WITH v AS") for _, sql in chunk.seen] == [False, True, True]
    assert all(state(pg_db, SpecialReduction, i) == RState.PROCESSING for i in ids)

    # For contrast: one order at a time checks out a connection per order.
    more, token = intake_all(pg_db, clock, ["H1", "H2", "H3"])
    provider.submit_answers.extend(reduction(f"H{i}", "PROCESSING") for i in range(1, 4))
    with Statements(pg_db) as single:
        for order_id in more:
            rec.process(REDUCTION, order_id, token)
    assert single.checkouts == 3


@pytest.mark.postgres
def test_closing_a_chunk_early_returns_its_connection(
    pg_db: Database, pg_rec: Reconciler, provider: FakeProvider, clock: FakeClock
) -> None:
    rec, pool = pg_rec, pg_db.engine.pool
    idle = pool.checkedout()  # type: ignore[attr-defined]
    ids, token = intake_all(pg_db, clock, ["Q1", "Q2", "Q3"])
    provider.submit_answers.append(reduction("Q1", "PROCESSING"))
    steps = rec.steps(REDUCTION, ids, token)
    next(steps)[1]()
    assert pool.checkedout() == idle + 1  # type: ignore[attr-defined]
    steps.close()
    assert pool.checkedout() == idle  # type: ignore[attr-defined]
    assert [state(pg_db, SpecialReduction, i) for i in ids] == [
        RState.PROCESSING,
        RState.SUBMITTED,  # marked with the chunk, never sent: queried once due
        RState.SUBMITTED,
    ]
    # The connection is free again: the next order is processed on its own (queried, since
    # it may have been sent).
    provider.query_answers.append(reduction("Q2", "PROCESSING"))
    assert rec.process(REDUCTION, ids[1], token) == RState.PROCESSING


# -- the poll_reductions task: each order isolated --------------------------------------------


def bulk(db: Database, nos: list[str], chunk: int = 10) -> Sent:
    sent = Sent()
    with db.transaction() as session:
        intake.submit_reductions(session, [order(no) for no in nos], enqueue=sent, chunk=chunk)
    return sent


def states_by_no(db: Database) -> dict[str, str]:
    with db.read() as session:
        found = session.execute(select(SpecialReduction.out_request_no, SpecialReduction.state))
        return {no: str(s) for no, s in found}


def test_bulk_messages_run_through_the_chunk_task(
    installed: tuple[Database, FakeProvider],
) -> None:
    db, provider = installed
    sent = bulk(db, ["K1", "K2", "K3"], chunk=2)
    provider.submit_answers.extend(reduction(no, "PROCESSING") for no in ("K1", "K2", "K3"))
    done = [tasks.poll_reductions.apply(kwargs=kwargs).get() for _, kwargs in sent]
    assert done == [2, 1]
    assert [r.out_request_no for r in provider.submits] == ["K1", "K2", "K3"]
    assert states_by_no(db) == dict.fromkeys(("K1", "K2", "K3"), RState.PROCESSING)


def test_an_import_sized_message_runs_as_one_task(installed: tuple[Database, FakeProvider]) -> None:
    """The CSV import sends bulk_import.CHUNK ids a message, ten times poll_chunk: each such
    message is one task that sends each of its orders once, in order."""
    from wxrecon.cli.bulk_import import CHUNK

    db, provider = installed
    nos = [f"IM{i:03}" for i in range(2 * CHUNK + 7)]
    sent = bulk(db, nos, chunk=CHUNK)
    assert [len(m["ids"]) for _, m in sent] == [CHUNK, CHUNK, 7]
    provider.submit_answers.extend(reduction(no, "PROCESSING") for no in nos)
    done = [tasks.poll_reductions.apply(kwargs=kwargs).get() for _, kwargs in sent]
    assert done == [CHUNK, CHUNK, 7]
    assert [r.out_request_no for r in provider.submits] == nos
    assert states_by_no(db) == dict.fromkeys(nos, RState.PROCESSING)


def test_one_failing_order_does_not_stop_its_chunk(
    installed: tuple[Database, FakeProvider], caplog: pytest.LogCaptureFixture
) -> None:
    db, provider = installed
    [(_, kwargs)] = bulk(db, ["K1", "K2", "K3"])
    provider.submit_answers.extend(
        [reduction("K1", "PROCESSING"), RuntimeError("boom"), reduction("K3", "PROCESSING")]
    )
    assert tasks.poll_reductions.apply(kwargs=kwargs).get() == 3
    assert [r.out_request_no for r in provider.submits] == ["K1", "K2", "K3"]
    # K2 was marked SUBMITTED before its POST blew up: the sweep will query it.
    assert states_by_no(db) == {
        "K1": RState.PROCESSING,
        "K2": RState.SUBMITTED,
        "K3": RState.PROCESSING,
    }
    assert f"polling order {kwargs['ids'][1]} failed" in caplog.text


def test_one_failing_bill_does_not_stop_its_chunk(
    installed: tuple[Database, FakeProvider], clock: FakeClock
) -> None:
    db, provider = installed
    ids, token = track_all(db, clock, ["TB1", "TB2"])
    provider.bill_answers.extend([RuntimeError("boom"), bill("TB2", "ACCEPTED")])
    assert tasks.poll_bills.apply(kwargs={"ids": ids, "token": token}).get() == 2
    assert [state(db, CompensationBill, i) for i in ids] == [BState.TRACKING, BState.ACCEPTED]


def test_a_repeated_id_in_a_message_is_processed_once(
    installed: tuple[Database, FakeProvider],
) -> None:
    db, provider = installed
    [(_, kwargs)] = bulk(db, ["K1", "K2"])
    a, b = kwargs["ids"]
    provider.submit_answers.extend([reduction("K1", "PROCESSING"), reduction("K2", "PROCESSING")])
    tasks.poll_reductions.apply(kwargs={"ids": [a, a, b], "token": kwargs["token"]}, throw=True)
    assert [r.out_request_no for r in provider.submits] == ["K1", "K2"]
    assert states_by_no(db) == {"K1": RState.PROCESSING, "K2": RState.PROCESSING}


def test_out_of_time_propagates_and_closes_the_chunk(
    installed: tuple[Database, FakeProvider],
) -> None:
    db, provider = installed
    [(_, kwargs)] = bulk(db, ["K1", "K2", "K3"])
    ids, token = kwargs["ids"], kwargs["token"]
    pool = db.engine.pool
    idle = pool.checkedout() if db.is_postgresql else 0  # type: ignore[attr-defined]
    provider.submit_answers.extend([reduction("K1", "PROCESSING"), SoftTimeLimitExceeded()])
    steps = runtime.get().reconciler().steps(REDUCTION, ids, token)
    with pytest.raises(SoftTimeLimitExceeded):
        tasks._process_chunk(steps, ids)
    assert inspect.getgeneratorstate(steps) == inspect.GEN_CLOSED
    if db.is_postgresql:
        assert pool.checkedout() == idle  # type: ignore[attr-defined]
    # K1 is done and recorded; K2 and K3 were marked with the chunk; K3 was never sent.
    assert [r.out_request_no for r in provider.submits] == ["K1", "K2"]
    assert states_by_no(db) == {
        "K1": RState.PROCESSING,
        "K2": RState.SUBMITTED,
        "K3": RState.SUBMITTED,
    }


def test_out_of_time_fails_the_poll_task(installed: tuple[Database, FakeProvider]) -> None:
    db, provider = installed
    [(_, kwargs)] = bulk(db, ["K1", "K2"])
    provider.submit_answers.append(SoftTimeLimitExceeded())
    with pytest.raises(SoftTimeLimitExceeded):
        tasks.poll_reductions.apply(kwargs=kwargs, throw=True)
    assert len(provider.submits) == 1
    assert states_by_no(db) == {"K1": RState.SUBMITTED, "K2": RState.SUBMITTED}
    # K2 (marked, never sent) keeps its claim: its lease runs out and the sweep brings it back.
    assert snapshot(db, SpecialReduction, kwargs["ids"][1])["claim_token"] == kwargs["token"]


def test_a_fresh_process_reads_rows_before_any_other_orm_use(tmp_path: Any) -> None:
    # A new worker process may read a chunk before anything has configured the ORM's mappers:
    # the rows must still read and write their attributes.
    script = f"""
from datetime import UTC, datetime
from sqlalchemy import create_engine, insert
from wxrecon.domain.kinds import REDUCTION
from wxrecon.engine.steps import load_rows
from wxrecon.store.db import Database
from wxrecon.store.models import SpecialReduction
from wxrecon.store.rows import update_row
url = "sqlite:///{tmp_path / "fresh.db"}"
engine = create_engine(url)
SpecialReduction.metadata.create_all(engine)
with engine.begin() as conn:
    conn.execute(insert(SpecialReduction.__table__).values(
        id=7, mchid="1900000109", bal_account_no="6222", out_request_no="F1",
        reduction_type="FINANCIAL_PENALTY", amount=100, state="RECEIVED", attempts=0,
        version=1, created_at=datetime(2026, 1, 1, tzinfo=UTC),
        updated_at=datetime(2026, 1, 1, tzinfo=UTC)))
row = load_rows(Database(url), REDUCTION, [7])[7]
update_row(row, {{"state": "SUBMITTED"}})
print(row.out_request_no, row.amount, row.state)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["F1", "100", "SUBMITTED"]


@pytest.mark.postgres
def test_an_answer_the_database_refuses_costs_its_order_an_attempt_not_the_chunk(
    pg_db: Database, pg_rec: Reconciler, provider: FakeProvider, clock: FakeClock
) -> None:
    """A field too long for its column (were it to pass the client's bounds) fails the chunk's
    shared commit: the other orders' outcomes are still recorded, and the bad order spends
    an attempt and leaves its claim, so it can never stall."""
    ids, token = intake_all(pg_db, clock, ["L1", "L2", "L3"])
    too_long = reduction("L2", "PROCESSING")
    object.__setattr__(too_long, "request_id", "R" * 300)  # last_request_id is String(128)
    provider.submit_answers.extend([reduction("L1", "PROCESSING"), too_long])
    provider.submit_answers.append(reduction("L3", "PROCESSING"))
    run_chunk(pg_rec.steps(REDUCTION, ids, token))
    assert state(pg_db, SpecialReduction, ids[0]) == RState.PROCESSING
    assert state(pg_db, SpecialReduction, ids[2]) == RState.PROCESSING
    bad = snapshot(pg_db, SpecialReduction, ids[1])
    assert bad["state"] == RState.SUBMITTED and bad["attempts"] == 1
    assert bad["claim_token"] is None and "could not be recorded" in bad["last_error"]


class Limited:
    """The fake provider behind a real rate-limit hook, as the client calls it (submits)."""

    def __init__(self, inner: FakeProvider, hook: Callable[[Any, str], None]) -> None:
        self.inner, self.hook = inner, hook

    def submit_special_reduction(self, request: SpecialReductionRequest) -> Any:
        self.hook(Endpoint.SUBMIT_REDUCTION, request.mchid)
        return self.inner.submit_special_reduction(request)


def test_an_order_whose_merchant_has_no_grant_is_put_back_while_others_go(
    db: Database, provider: FakeProvider, engine_settings: EngineSettings, clock: FakeClock
) -> None:
    """A chunk of two merchants' new orders, one grant per merchant per 0.3 s: the second
    order of the first merchant waits while the second merchant's go, instead of holding
    the chunk; every order is sent once and ends as one sent alone would."""
    from wxrecon.ratelimit import LocalRateLimiter, rate_limit_hook

    a_ids, token = intake_all(db, clock, ["PA1", "PA2"])
    b_ids, _ = intake_all(db, clock, ["PB1", "PB2"], mchid=OTHER_MCHID, token=token)
    provider.submit_answers.extend(reduction(no, "PROCESSING") for no in ["x"] * 4)
    hook = rate_limit_hook(LocalRateLimiter(1, window=0.3), max_wait=2.0)
    rec = Reconciler(db, Limited(provider, hook), engine_settings, clock=clock)  # type: ignore[arg-type]
    results = [tasks._process_chunk(rec.steps(REDUCTION, a_ids + b_ids, token), a_ids + b_ids)]
    assert results == [4]  # each order counted once, put back or not
    assert [r.out_request_no for r in provider.submits] == ["PA1", "PB1", "PA2", "PB2"]
    assert {state(db, SpecialReduction, i) for i in a_ids + b_ids} == {RState.PROCESSING}
    for i in a_ids + b_ids:  # sent once: one mark, one answer
        assert [to for _, to in path(db, i)] == ["RECEIVED", "SUBMITTED", "PROCESSING"]

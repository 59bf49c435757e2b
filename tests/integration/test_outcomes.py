"""Outcome events: the pure rules (types, payload, signature, URL check), and the outbox row
written in the transaction of the change it reports, on SQLite and on PostgreSQL."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError

from tests.fixtures_db import FakeClock, FakeProvider, bill, reduction
from tests.integration.test_reconcile import intake, poll, row_of
from wxrecon import tasks
from wxrecon.config import Settings
from wxrecon.domain import outcomes
from wxrecon.domain.kinds import BILL, REDUCTION
from wxrecon.domain.states import BState, RState
from wxrecon.engine import operator
from wxrecon.engine.intake import intake_bill
from wxrecon.engine.steps import Reconciler
from wxrecon.outbound.webhook import check_url, sign, verify
from wxrecon.store import unit
from wxrecon.store.db import Database
from wxrecon.store.models import Outcome
from wxrecon.store.rows import ReductionRow
from wxrecon.worker import celery_config

LEDGER = "6222000011112222"


def rows(db: Database) -> list[Any]:
    with db.connect() as conn:
        return list(conn.execute(select(Outcome.__table__).order_by(Outcome.id)).mappings())


def count(db: Database) -> int:
    with db.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(Outcome)).scalar_one())


# -- pure rules -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "src", "dst", "actor", "expected"),
    [
        (REDUCTION, "PROCESSING", "SUCCESS", "engine", "reduction.succeeded"),
        (REDUCTION, "SUBMITTED", "FAILED", "engine", "reduction.failed"),
        (REDUCTION, "RECEIVED", "REJECTED", "engine", "reduction.rejected"),
        (REDUCTION, "SUBMITTED", "NEEDS_REVIEW", "engine", "reduction.needs_review"),
        (REDUCTION, "RECEIVED", "SUBMITTED", "engine", None),
        (REDUCTION, "SUBMITTED", "PROCESSING", "engine", None),
        (REDUCTION, "SUBMITTED", "SUBMITTED", "engine", None),
        (REDUCTION, "SUBMITTED", None, "ops", None),  # a re-query: the state stays
        (REDUCTION, "NEEDS_REVIEW", "SUBMITTED", "ops:li", "reduction.retried"),
        (REDUCTION, "SUCCESS", "SUBMITTED", "ops:li", "reduction.retried"),
        (BILL, "ACCEPTED", "SUCCESS", "engine", "bill.succeeded"),
        (BILL, "WAIT_USER_CONFIRM", "CLOSED", "engine", "bill.closed"),
        (BILL, "CANCELING", "CANCELLED", "engine", "bill.cancelled"),
        (BILL, "TRACKING", "NEEDS_REVIEW", "engine", "bill.needs_review"),
        (BILL, "TRACKING", "ACCEPTED", "engine", None),
        (BILL, "NEEDS_REVIEW", "TRACKING", "ops", "bill.retried"),
    ],
)
def test_outcome_type_table(
    kind: Any, src: str, dst: str | None, actor: str, expected: str | None
) -> None:
    assert outcomes.outcome_type(kind, src, dst, actor) == expected


def _row(**overrides: Any) -> ReductionRow:
    from datetime import UTC, datetime

    t = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
    values: dict[str, Any] = {
        "id": 7,
        "state": "PROCESSING",
        "version": 3,
        "attempts": 1,
        "next_poll_at": t,
        "claimed_until": None,
        "claim_token": "c",
        "last_error": None,
        "last_request_id": None,
        "created_at": t,
        "updated_at": t,
        "mchid": "1900000109",
        "bal_account_no": LEDGER,
        "out_request_no": "R7",
        "reduction_type": "FINANCIAL_PENALTY",
        "amount": 1234,
        "reason": "case 7",
        "provider_state": "PROCESSING",
        "fail_reason": None,
        "quota_change_no": None,
        "success_time": None,
        "fail_time": None,
        "submitted_at": t,
        "last_submit_at": t,
        "refusal": None,
        **overrides,
    }
    return ReductionRow(**values)


def test_order_event_is_the_row_after_the_write_and_never_the_ledger_number() -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 1, 5, 8, 1, tzinfo=UTC)
    row = _row()
    new = {"state": "SUCCESS", "version": 4, "quota_change_no": "Q7", "success_time": now}
    event = outcomes.order_event(
        REDUCTION,
        row,
        new,
        type_="reduction.succeeded",
        reason="signed answer",
        actor="engine",
        request_id="rid-1",
        now=now,
    )
    assert list(event) == list(outcomes.FIELDS)
    assert event["event_id"] == "wxr.reduction.7.v4"
    assert (event["state"], event["previous_state"]) == ("SUCCESS", "PROCESSING")
    assert (event["amount"], event["quota_change_no"]) == (1234, "Q7")
    assert event["success_time"] == now.isoformat() and event["request_id"] == "rid-1"
    stored = outcomes.outbox_row(event, now)
    assert LEDGER not in stored["payload"] and "bal_account_no" not in stored["payload"]
    assert json.loads(stored["payload"]) == event
    assert (stored["order_key"], stored["order_no"]) == ("reduction:7", "R7")


def test_refusal_event_is_bounded_and_keyed_by_its_message() -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 1, 5, tzinfo=UTC)
    fields = {"mchid": "1" * 999, "out_request_no": "R1", "bal_account_no": LEDGER, "amount": True}
    event = outcomes.refusal_event(REDUCTION, "msg-1", fields, "amount must be an integer", now)
    assert event["event_id"] == "wxr.reduction.refused.msg-1"
    assert event["type"] == "reduction.refused" and event["state"] == "REFUSED"
    assert len(event["mchid"]) == outcomes.MAX_TEXT and event["amount"] is None
    assert LEDGER not in json.dumps(event)
    assert outcomes.order_key(event) == event["event_id"]  # ordered with nothing else


def test_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    body = b'{"event_id":"wxr.reduction.1.v4"}'
    expected = hmac.new(b"s3cret-s3cret-16", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign("s3cret-s3cret-16", 1700000000, body) == f"v1={expected}"
    headers = {"Wxrecon-Timestamp": "1700000000", "Wxrecon-Signature": f"v1={expected}"}
    assert verify("s3cret-s3cret-16", headers, body, now=1700000100)
    assert not verify("s3cret-s3cret-17", headers, body, now=1700000100)
    assert not verify("s3cret-s3cret-16", headers, body + b" ", now=1700000100)
    assert not verify("s3cret-s3cret-16", headers, body, now=1700000000 + 301)  # a replay
    assert not verify("s3cret-s3cret-16", {**headers, "Wxrecon-Timestamp": "x"}, body, now=0)


@pytest.mark.parametrize(
    ("url", "allow_http", "ok"),
    [
        ("https://billing.example.com/hooks/wxrecon", False, True),
        ("http://127.0.0.1:8080/hook", False, True),
        ("http://[::1]:8080/hook", False, True),
        ("http://localhost/hook", False, True),
        ("http://billing.example.com/hook", False, False),
        ("http://billing.example.com/hook", True, True),
        ("https://user:pw@billing.example.com/hook", False, False),
        ("ftp://billing.example.com/hook", False, False),
        ("https:///nohost", False, False),
    ],
)
def test_webhook_url_rule(url: str, allow_http: bool, ok: bool) -> None:
    if ok:
        assert check_url(url, allow_http=allow_http) == url
    else:
        with pytest.raises(ValueError) as info:
            check_url(url, allow_http=allow_http)
        assert "pw" not in str(info.value)


def test_relay_is_scheduled_only_when_a_target_is_configured(tmp_path: Any) -> None:
    off = celery_config(Settings.model_validate({"data_dir": tmp_path}))
    assert "relay-outcomes" not in off["beat_schedule"]
    on = celery_config(
        Settings.model_validate({"data_dir": tmp_path, "outcome_task": "billing.on_outcome"})
    )
    entry = on["beat_schedule"]["relay-outcomes"]
    assert entry["task"] == "wxrecon.relay_outcomes"
    assert entry["options"]["queue"] == "wxrecon.outcomes"


# -- the outbox row, in the transaction of its change -------------------------------------------


@pytest.fixture
def rec(db: Database, provider: FakeProvider, engine_settings: Any, clock: FakeClock) -> Reconciler:
    return Reconciler(db, provider, engine_settings, clock=clock)


def test_a_final_state_writes_one_event_and_in_flight_states_none(
    db: Database, rec: Reconciler, provider: FakeProvider, clock: FakeClock
) -> None:
    order = intake(db, clock)
    provider.submit_answers.append(reduction("R1", "PROCESSING", request_id="rid-post"))
    assert rec.process(REDUCTION, order.order_id, order.token or "") == RState.PROCESSING
    assert count(db) == 0  # RECEIVED -> SUBMITTED -> PROCESSING: nothing to tell yet
    provider.query_answers.append(reduction("R1", "SUCCESS", request_id="rid-q1"))
    assert poll(rec, db, clock, order.order_id) == RState.SUCCESS
    [out] = rows(db)
    row = row_of(db, order.order_id)
    event = json.loads(out["payload"])
    assert out["event_id"] == f"wxr.reduction.{row.id}.v{row.version}" == event["event_id"]
    assert (out["type"], out["state"], out["delivery"]) == (
        "reduction.succeeded",
        "SUCCESS",
        "pending",
    )
    assert event["quota_change_no"] == "QR1" and event["amount"] == 1234
    assert event["request_id"] == "rid-q1" and event["mchid"] == row.mchid
    assert event["success_time"] == row.success_time.isoformat()  # type: ignore[union-attr]
    assert LEDGER not in out["payload"]


def test_a_lost_compare_and_set_writes_no_event(db: Database, clock: FakeClock) -> None:
    order = intake(db, clock)
    row = row_of(db, order.order_id)
    stale = row_of(db, order.order_id)
    first = unit.prepare(
        db, REDUCTION.model, row, RState.REJECTED, {}, reason="refused", now=clock()
    )
    second = unit.prepare(
        db, REDUCTION.model, stale, RState.REJECTED, {}, reason="refused too", now=clock()
    )
    assert unit.commit(db, [first]) == [True]
    assert unit.commit(db, [second]) == [False]
    assert [r["type"] for r in rows(db)] == ["reduction.rejected"]


def test_the_event_and_the_change_commit_together(db: Database, clock: FakeClock) -> None:
    """An outbox insert that fails takes the compare-and-set with it: never a change the app
    is not told about."""
    order = intake(db, clock)
    row = row_of(db, order.order_id)
    taken = outcomes.event_id("reduction", row.id, row.version + 1)
    squatter = {
        **outcomes.outbox_row(
            {"event_id": taken, "type": "x", "kind": "reduction", "order_id": row.id, "state": "X"},
            clock(),
        )
    }
    with db.begin() as conn:
        conn.execute(insert(Outcome.__table__), squatter)
    write = unit.prepare(db, REDUCTION.model, row, RState.REJECTED, {}, reason="r", now=clock())
    with pytest.raises(IntegrityError):
        unit.commit(db, [write])
    assert row_of(db, order.order_id).state == RState.RECEIVED
    assert count(db) == 1


def test_review_and_operator_actions_write_events(
    db: Database, rec: Reconciler, provider: FakeProvider, clock: FakeClock
) -> None:
    from wxrecon.wechatpay import errors

    order = intake(db, clock)
    provider.submit_answers.append(errors.UnexpectedAnswer("teapot", status=418, code="TEAPOT"))
    assert rec.process(REDUCTION, order.order_id, order.token or "") == RState.NEEDS_REVIEW
    state = operator.retry(db, REDUCTION, order.order_id, actor="ops:li", why="fixed", now=clock())
    assert state == RState.SUBMITTED
    operator.requery(db, REDUCTION, order.order_id, actor="ops:li", now=clock())  # state stays
    types = [(r["type"], json.loads(r["payload"])["actor"]) for r in rows(db)]
    assert types == [("reduction.needs_review", "engine"), ("reduction.retried", "ops:li")]
    retried = json.loads(rows(db)[1]["payload"])
    assert retried["previous_state"] == "NEEDS_REVIEW" and "fixed" in retried["reason"]


def test_bill_final_states_are_told(
    db: Database, provider: FakeProvider, engine_settings: Any, clock: FakeClock
) -> None:
    rec = Reconciler(db, provider, engine_settings, clock=clock)
    with db.transaction() as session:
        order = intake_bill(session, "B1", now=clock())
    provider.bill_answers.append(bill("B1", "CLOSED", close_reason="TIME_OUT"))
    assert rec.process(BILL, order.order_id, order.token or "") == BState.CLOSED
    [out] = rows(db)
    event = json.loads(out["payload"])
    assert (out["type"], out["order_no"]) == ("bill.closed", "B1")
    assert (event["out_bill_no"], event["close_reason"], event["amount"]) == ("B1", "TIME_OUT", 500)


# -- refused intake --------------------------------------------------------------------------------


GOOD = {
    "mchid": "1900000109",
    "bal_account_no": LEDGER,
    "out_request_no": "T1",
    "reduction_type": "FINANCIAL_PENALTY",
    "amount": 700,
}


def test_a_refused_intake_is_an_event_once_per_message(
    installed: tuple[Database, FakeProvider],
) -> None:
    db, _provider = installed
    bad = {**GOOD, "out_request_no": "T9", "amount": "700"}
    tasks.submit_special_reduction.apply(kwargs=bad, task_id="m-bad").get()
    tasks.submit_special_reduction.apply(kwargs=bad, task_id="m-bad").get()  # redelivered
    [out] = rows(db)
    event = json.loads(out["payload"])
    assert out["event_id"] == "wxr.reduction.refused.m-bad" and out["order_id"] is None
    assert (event["type"], event["out_request_no"], event["mchid"]) == (
        "reduction.refused",
        "T9",
        "1900000109",
    )
    assert "amount" in event["reason"] and LEDGER not in out["payload"]
    tasks.track_compensation_bill.apply(kwargs={"out_bill_no": "bad no!"}, task_id="m-b").get()
    assert rows(db)[-1]["type"] == "bill.refused"


def test_a_conflicting_intake_is_refused_with_an_event(
    installed: tuple[Database, FakeProvider],
) -> None:
    db, provider = installed
    provider.submit_answers.append(reduction("T1", "PROCESSING"))
    tasks.submit_special_reduction.apply(kwargs=GOOD).get()
    tasks.submit_special_reduction.apply(kwargs={**GOOD, "amount": 1}, task_id="m-c").get()
    [out] = [r for r in rows(db) if r["type"] == "reduction.refused"]
    assert "already exists" in json.loads(out["payload"])["reason"]


def test_prune_deletes_old_delivered_events_on_both_databases(db: Any) -> None:
    from datetime import UTC, datetime, timedelta

    from wxrecon.store import outbox
    from wxrecon.store.models import Outcome

    now = datetime.now(UTC)
    rows = []
    for i, (delivery, age) in enumerate(
        [("delivered", 40), ("delivered", 40), ("delivered", 40), ("delivered", 1), ("dead", 40)]
    ):
        event = dict.fromkeys(outcomes.FIELDS)
        event.update(event_id=f"e{i}", type="reduction.succeeded", kind="reduction", order_id=i)
        event.update(state="SUCCESS", occurred_at=now.isoformat())
        row = outcomes.outbox_row(event, now - timedelta(days=age))
        row.update(delivery=delivery, delivered_at=now - timedelta(days=age))
        rows.append(row)
    with db.begin() as conn:
        conn.execute(insert(Outcome.__table__), rows)
    cutoff = now - timedelta(days=30)
    assert outbox.prune(db, delivered_before=cutoff, batch=2) == 2  # one batch
    assert outbox.prune(db, delivered_before=cutoff, batch=2) == 1
    assert outbox.prune(db, delivered_before=cutoff, batch=2) == 0
    with db.connect() as conn:
        left = set(conn.execute(select(Outcome.event_id)).scalars())
    assert left == {"e3", "e4"}  # the recent one and the dead one

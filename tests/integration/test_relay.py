"""The relay against a real webhook receiver (a local HTTP server) and a real broker, on
SQLite and PostgreSQL: delivery, retry with backoff on 500s and timeouts, dead after the
limit, per-order order, re-delivery, and each target sent an event once it took it."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from kombu import Connection
from sqlalchemy import event

from tests.fixtures_db import FakeClock
from tests.webhook_receiver import Receiver
from wxrecon.domain import outcomes
from wxrecon.engine.relay import Relay, retry_delay
from wxrecon.outbound.task import TaskTarget
from wxrecon.outbound.webhook import WebhookTarget
from wxrecon.store import outbox
from wxrecon.store.db import Database
from wxrecon.store.models import Outcome

SECRET = "whsec-0123456789abcdef"
SCHEDULE = [5.0, 30.0, 120.0]


def add_event(db: Database, clock: FakeClock, order_id: int, version: int) -> str:
    event = dict.fromkeys(outcomes.FIELDS)
    event.update(
        event_id=outcomes.event_id("reduction", order_id, version),
        type="reduction.succeeded",
        kind="reduction",
        order_id=order_id,
        state="SUCCESS",
        out_request_no=f"R{order_id}",
        amount=100 * order_id,
        occurred_at=clock().isoformat(),
    )
    with db.begin() as conn:
        conn.execute(Outcome.__table__.insert(), outcomes.outbox_row(event, clock()))
    return str(event["event_id"])


def state_of(db: Database, event_id: str) -> Any:
    return outbox.find(db, event_id)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver(SECRET.encode()).start()
    yield server
    server.shutdown()
    server.server_close()


def relay(db: Database, clock: FakeClock, targets: list[Any], **kw: Any) -> Relay:
    params: dict[str, Any] = {"schedule": SCHEDULE, "max_attempts": 4, "lease": 60.0, **kw}
    return Relay(db, targets, clock=clock, **params)


def webhook(receiver: Receiver, timeout: float = 2.0) -> WebhookTarget:
    return WebhookTarget(receiver.url, SECRET, timeout=timeout)


def test_retry_delay_is_the_schedule_then_its_last_step() -> None:
    assert [retry_delay(SCHEDULE, n) for n in (1, 2, 3, 4, 9)] == [5, 30, 120, 120, 120]


def test_a_delivery_is_signed_and_marked_delivered(
    db: Database, clock: FakeClock, receiver: Receiver
) -> None:
    event_id = add_event(db, clock, 1, 4)
    result = relay(db, clock, [webhook(receiver)]).run_once()
    assert (result.delivered, result.retried, result.dead) == (1, 0, 0)
    [(headers, body, status)] = receiver.requests
    assert status == 200  # the receiver verified the signature
    assert headers["Wxrecon-Event-Id"] == event_id
    assert json.loads(body)["amount"] == 100
    row = state_of(db, event_id)
    assert row["delivery"] == "delivered" and row["webhook_sent_at"] is not None
    assert relay(db, clock, [webhook(receiver)]).run_once().attempted == 0


def test_a_500_is_retried_with_backoff_then_delivered(
    db: Database, clock: FakeClock, receiver: Receiver
) -> None:
    receiver.answer = lambda n: 500 if n <= 2 else 200
    event_id = add_event(db, clock, 1, 4)
    r = relay(db, clock, [webhook(receiver)])
    assert r.run_once().retried == 1
    row = state_of(db, event_id)
    assert row["attempts"] == 1 and row["last_error"] == "webhook: HTTP 500"
    assert row["next_attempt_at"] == clock() + timedelta(seconds=5)
    assert r.run_once().attempted == 0  # not due yet
    clock.advance(5)
    assert r.run_once().retried == 1
    assert state_of(db, event_id)["next_attempt_at"] == clock() + timedelta(seconds=30)
    clock.advance(30)
    assert r.run_once().delivered == 1
    assert state_of(db, event_id)["delivery"] == "delivered"
    assert [s for _h, _b, s in receiver.requests] == [500, 500, 200]


def test_no_answer_within_the_timeout_is_retried(
    db: Database, clock: FakeClock, receiver: Receiver
) -> None:
    receiver.answer = lambda n: 2.0 if n == 1 else 200
    event_id = add_event(db, clock, 1, 4)
    r = relay(db, clock, [webhook(receiver, timeout=0.3)])
    assert r.run_once().retried == 1
    assert state_of(db, event_id)["last_error"] == "webhook: no answer within the timeout"
    clock.advance(5)
    assert r.run_once().delivered == 1


def test_dead_after_the_limit_and_redelivered_by_an_operator(
    db: Database, clock: FakeClock, receiver: Receiver
) -> None:
    receiver.answer = lambda n: 503
    event_id = add_event(db, clock, 1, 4)
    r = relay(db, clock, [webhook(receiver)], max_attempts=3)
    for _ in range(3):
        r.run_once()
        clock.advance(3600)
    row = state_of(db, event_id)
    assert (row["delivery"], row["attempts"]) == ("dead", 3)
    assert r.run_once().attempted == 0
    assert outbox.backlog(db).counts == {"pending": 0, "dead": 1}
    receiver.answer = lambda n: 200
    assert outbox.redeliver(db, dead=True, now=clock()) == [row["id"]]
    assert r.run_once().delivered == 1
    assert len(receiver.requests) == 4 and receiver.requests[-1][2] == 200


def test_events_of_one_order_go_out_in_order(
    db: Database, clock: FakeClock, receiver: Receiver
) -> None:
    first = add_event(db, clock, 1, 4)
    second = add_event(db, clock, 1, 6)
    other = add_event(db, clock, 2, 3)
    receiver.answer = lambda n: 500 if n == 1 else 200
    r = relay(db, clock, [webhook(receiver)])
    result = r.run_once()
    # The first event of order 1 failed: its second waits; order 2 is not held back.
    assert (result.retried, result.delivered) == (1, 1)
    assert [e["event_id"] for e in receiver.accepted] == [other]
    assert r.run_once().attempted == 0
    clock.advance(5)
    assert r.run_once().delivered == 1
    assert r.run_once().delivered == 1
    assert [e["event_id"] for e in receiver.accepted] == [other, first, second]


def test_a_claim_is_leased_to_one_relay(db: Database, clock: FakeClock) -> None:
    add_event(db, clock, 1, 4)
    mine = outbox.claim(db, "a", limit=10, lease=60, now=clock())
    assert [c.event_id for c in mine] == ["wxr.reduction.1.v4"]
    assert outbox.claim(db, "b", limit=10, lease=60, now=clock()) == []
    clock.advance(61)  # the first relay died: its lease runs out and the event comes back
    assert len(outbox.claim(db, "b", limit=10, lease=60, now=clock())) == 1
    # The late first relay's verdict no longer counts.
    assert not outbox.record(db, mine[0], "a", {"delivery": "delivered"})


@pytest.fixture
def broker(redis_db: str) -> str:
    return redis_db  # a database of this session's private Redis that no other test uses


def test_a_target_that_took_the_event_is_not_sent_it_again(
    db: Database, clock: FakeClock, receiver: Receiver, broker: str
) -> None:
    """Both targets: the task goes out, the webhook fails; the retry sends only the webhook.
    The task message is what a plain Celery app consumes: its task name and JSON kwargs."""
    from celery import Celery

    queue = f"billing.outcomes.{uuid.uuid4().hex[:8]}"
    app = Celery("sender", broker=broker)
    receiver.answer = lambda n: 500 if n == 1 else 200
    event_id = add_event(db, clock, 1, 4)
    task = TaskTarget(app, "billing.on_wxrecon_outcome", queue)
    r = relay(db, clock, [task, webhook(receiver)])
    assert r.run_once().retried == 1
    clock.advance(5)
    assert r.run_once().delivered == 1
    row = state_of(db, event_id)
    assert row["task_sent_at"] < row["webhook_sent_at"]
    with Connection(broker) as conn:
        q = conn.SimpleQueue(queue)
        try:
            message = q.get(timeout=5)
            assert message.headers["task"] == "billing.on_wxrecon_outcome"
            _args, kwargs, _embed = message.decode()
            assert kwargs["event_id"] == event_id and kwargs["amount"] == 100
            message.ack()
            with pytest.raises(q.Empty):
                q.get(timeout=0.5)  # sent once, not on the webhook's retry
        finally:
            q.clear()
            q.close()


def test_the_backlog_gauges_read_the_outbox(db: Database, clock: FakeClock) -> None:
    from prometheus_client import generate_latest

    from wxrecon.metrics_server import build_registry, read_snapshot

    add_event(db, clock, 1, 4)
    dead = add_event(db, clock, 2, 4)
    with db.begin() as conn:
        conn.execute(
            Outcome.__table__.update().where(Outcome.event_id == dead).values(delivery="dead")
        )
    snap = read_snapshot(db, now=clock() + timedelta(seconds=90))
    assert snap.outcomes == {"pending": 1, "dead": 1}
    assert snap.oldest_undelivered_seconds == 90.0
    text = generate_latest(build_registry(lambda: snap)).decode()
    assert 'wxrecon_outcomes_undelivered{delivery="pending"} 1.0' in text
    assert "wxrecon_oldest_undelivered_outcome_age_seconds 90.0" in text
    assert "# TYPE wxrecon_outcome_deliveries_total counter" in text


def test_verdicts_are_recorded_a_batch_at_a_time_and_a_lost_claim_is_its_own(
    db: Database, clock: FakeClock, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """25 events: two transactions (20, then 5), not 25. An event whose claim another relay
    took meanwhile is left to it; the others of its batch are recorded all the same."""
    from wxrecon.engine import relay as relay_module

    ids = [add_event(db, clock, n, 4) for n in range(1, 26)]
    sizes: list[int] = []
    real = outbox.record_many

    def counted(db_: Database, token: str, verdicts: Any) -> list[bool]:
        sizes.append(len(verdicts))
        return real(db_, token, verdicts)

    monkeypatch.setattr(outbox, "record_many", counted)
    stolen = ids[7]

    class Thief:
        name = "task"

        def send(self, event: Any, body: bytes) -> None:
            if event["event_id"] == stolen:  # another relay's claim, while this one sends
                with db.begin() as conn:
                    conn.execute(
                        Outcome.__table__.update()
                        .where(Outcome.event_id == stolen)
                        .values(claim_token="someone-else")
                    )

        def close(self) -> None:
            pass

    result = relay(db, clock, [Thief(), webhook(receiver)]).run_once()
    assert sizes == [relay_module.RECORD_EVERY, 25 - relay_module.RECORD_EVERY]
    assert result.delivered == 24
    assert [state_of(db, i)["delivery"] for i in ids].count("delivered") == 24
    assert state_of(db, stolen)["delivery"] == "pending"


def test_the_webhook_reuses_its_connection(
    db: Database, clock: FakeClock, receiver: Receiver
) -> None:
    for n in range(1, 6):
        add_event(db, clock, n, 4)
    target = webhook(receiver)
    assert relay(db, clock, [target]).run_once().delivered == 5
    target.close()
    assert receiver.connections == 1  # the empty answers read to their end: one connection


def test_a_long_answer_is_a_delivery_and_its_connection_is_dropped(
    db: Database, clock: FakeClock, receiver: Receiver
) -> None:
    from wxrecon.outbound.webhook import KEEP_BODY

    receiver.reply = b"x" * (KEEP_BODY + 1)  # more than is read: never read whole
    ids = [add_event(db, clock, n, 4) for n in (1, 2)]
    target = webhook(receiver)
    assert relay(db, clock, [target]).run_once().delivered == 2
    target.close()
    assert [state_of(db, i)["delivery"] for i in ids] == ["delivered"] * 2
    assert receiver.connections == 2  # each long answer's connection closed, not reused


def test_a_refused_connection_is_retried_with_its_reason(db: Database, clock: FakeClock) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    event_id = add_event(db, clock, 1, 4)
    target = WebhookTarget(f"http://127.0.0.1:{port}/hook", SECRET, timeout=1.0)
    assert relay(db, clock, [target]).run_once().retried == 1
    assert state_of(db, event_id)["last_error"] == "webhook: ConnectError"


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1/a b", "http://127.0.0.1/a\r\nX-Evil: 1", "http://127.0.0.1/é"]
)
def test_a_url_that_cannot_go_on_the_wire_as_given_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="percent-encode"):
        WebhookTarget(url, SECRET, timeout=1.0)


def test_verdicts_of_different_shapes_in_one_batch_each_land(
    db: Database, clock: FakeClock, receiver: Receiver
) -> None:
    """Delivered and retried verdicts set different columns: on PostgreSQL one statement
    per shape in the batch's transaction; each event gets its own verdict."""
    receiver.answer = lambda n: 500 if n % 2 == 0 else 200
    ids = [add_event(db, clock, n, 4) for n in range(1, 7)]
    result = relay(db, clock, [webhook(receiver)]).run_once()
    assert (result.delivered, result.retried) == (3, 3)
    found = [state_of(db, i) for i in ids]
    assert [f["delivery"] for f in found] == ["delivered", "pending"] * 3
    assert [f["attempts"] for f in found] == [0, 1] * 3
    assert [f["last_error"] for f in found] == [None, "webhook: HTTP 500"] * 3
    assert all(f["claim_token"] is None for f in found)


def test_a_relay_run_takes_one_connection_for_its_batches(
    db: Database, clock: FakeClock, receiver: Receiver
) -> None:
    """Claims and verdicts (every RECORD_EVERY) of every batch of a run share one pooled
    connection on PostgreSQL: one checkout and pre-ping, not one per transaction."""
    for n in range(1, 31):
        add_event(db, clock, n, 4)
    checkouts: list[int] = []
    listener = lambda *_: checkouts.append(1)  # noqa: E731
    event.listen(db.engine, "checkout", listener)
    try:
        result = relay(db, clock, [webhook(receiver)], batch=12).run(budget=30.0)
    finally:
        event.remove(db.engine, "checkout", listener)
    assert result.delivered == 30
    assert [state_of(db, outcomes.event_id("reduction", n, 4))["delivery"] for n in (1, 30)] == [
        "delivered",
        "delivered",
    ]
    if db.is_postgresql:
        assert len(checkouts) == 1
    else:  # SQLite's transactions keep their own connections (no pinning there)
        assert len(checkouts) > 3


def test_the_claim_looks_up_older_events_by_order_not_through_the_pending_index(
    pg_db: Database, clock: FakeClock
) -> None:
    """PostgreSQL's plan of the claim, with the pending index full of the dead entries that
    delivered events leave until a vacuum: the older-event check goes to the order's index
    (scanning the pending index whole for each candidate cost up to 28 ms a claim)."""
    insert = (
        "INSERT INTO outcomes (event_id, type, kind, order_id, order_key, state, payload,"
        " occurred_at, delivery, attempts, next_attempt_at)"
        " SELECT 'e' || g, 'reduction.succeeded', 'reduction', g, 'reduction:' || g,"
        " 'SUCCESS', '{}', now(), 'pending', 0, now() - interval '1 minute'"
        " FROM generate_series(%s::int, %s::int) g"
    )
    with pg_db.begin() as conn:  # delivered since the last statistics; 50 pending since
        conn.exec_driver_sql(insert, (1, 3000))
        conn.exec_driver_sql("UPDATE outcomes SET delivery = 'delivered'")
    with pg_db.begin() as conn:
        conn.exec_driver_sql("ANALYZE outcomes")
        conn.exec_driver_sql(insert, (3001, 3050))
        stmt = outbox.claim_statement(pg_db, "t", limit=100, lease=60, now=clock.now)
        sql = stmt.compile(dialect=pg_db.engine.dialect, compile_kwargs={"literal_binds": True})
        plan = "\n".join(r[0] for r in conn.exec_driver_sql(f"EXPLAIN {sql}"))
    assert "ix_outcomes_order_key_id" in plan, plan
    assert plan.count("ix_outcomes_pending") <= 1, plan

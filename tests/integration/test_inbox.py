"""The intake pump on a real Redis: a by-name message is moved atomically into the pump's
in-flight list, leaves it only after its row is written (or it is handed on), waits out a
database outage of any length, and is put back when its pump dies."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from sqlalchemy.exc import OperationalError

from wxrecon import inbox
from wxrecon.inbox import ALIVE, DEAD, INFLIGHT, Inbox, Intake, Pump, queue_keys, read_intake
from wxrecon.worker import INTAKE_QUEUE, POLL_QUEUE

SUBMIT = "wxrecon.submit_special_reduction"
TRACK = "wxrecon.track_compensation_bill"
TASKS = (SUBMIT, TRACK)
ORDER = {"mchid": "1900000109", "bal_account_no": "6222000011112222", "out_request_no": "P1"}
DB_DOWN = OperationalError("SELECT 1", {}, Exception("connection refused"))


@pytest.fixture
def client(redis_db: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_db)
    yield c
    c.close()


@pytest.fixture
def business(redis_db: str) -> Iterator[Celery]:
    """A business app's plain Celery (JSON), as it sends wxrecon's tasks by name."""
    app = Celery("business", broker=redis_db)
    app.conf.update(task_serializer="json", accept_content=["json"])
    yield app
    app.close()


def sent(client: redis.Redis, key: str = INTAKE_QUEUE) -> list[bytes]:
    return [bytes(m) for m in client.lrange(key, 0, -1)]


class Recorder:
    """The pump's takers and publisher, recorded; ``fail`` is raised by the next takes."""

    def __init__(self, client: redis.Redis, inbox_: Inbox) -> None:
        self.client, self.inbox = client, inbox_
        self.taken: list[Intake] = []
        self.held_while_taking: list[int] = []
        self.published: list[Any] = []
        self.fail: list[BaseException] = []
        self.stop = False
        self.sleeps: list[float] = []

    def take(self, intake: Intake) -> Any:
        self.held_while_taking.append(self.client.llen(self.inbox.inflight))
        if self.fail:
            raise self.fail.pop(0)
        self.taken.append(intake)
        return ("follow", intake.id)

    def pump(self) -> Pump:
        return Pump(
            self.inbox,
            TASKS,
            self.take,
            self.published.append,
            (OperationalError,),
            lambda: self.stop,
            sleep=self.sleeps.append,
        )


def make(client: redis.Redis, ident: str = "host:1:a") -> tuple[Inbox, Recorder]:
    box = Inbox(client, INTAKE_QUEUE, POLL_QUEUE, ident)
    return box, Recorder(client, box)


# -- reading kombu's messages ------------------------------------------------------------------


def test_reads_what_a_plain_celery_app_sends_in_either_protocol(
    client: redis.Redis, business: Celery
) -> None:
    business.send_task(SUBMIT, kwargs=ORDER, queue=INTAKE_QUEUE, task_id="id-2")
    business.conf.task_protocol = 1
    business.send_task(TRACK, kwargs={"out_bill_no": "B1"}, queue=INTAKE_QUEUE, task_id="id-1")
    second, first = sent(client)  # kombu pushes on the left
    assert read_intake(first, TASKS) == Intake(SUBMIT, "id-2", [], ORDER)
    assert read_intake(second, TASKS) == Intake(TRACK, "id-1", [], {"out_bill_no": "B1"})


def test_anything_else_is_not_an_intake(client: redis.Redis, business: Celery) -> None:
    business.send_task("wxrecon.poll_reduction", kwargs={"id": 1, "token": "t"}, queue="x")
    business.send_task(SUBMIT, args=["6222000011112222"], queue="x")
    [positional, poll] = sent(client, "x")
    assert read_intake(poll, TASKS) is None
    assert read_intake(positional, TASKS) == Intake(
        SUBMIT, positional_id(positional), ["6222000011112222"], {}
    )
    envelope = json.loads(poll)
    pickled = json.dumps({**envelope, "content-type": "application/x-python-serialize"})
    for raw in (b"not json", b"[]", pickled.encode(), b"{" + b" " * inbox.MAX_MESSAGE + b"}"):
        assert read_intake(raw, TASKS) is None


def positional_id(raw: bytes) -> str:
    return str(json.loads(raw)["headers"]["id"])


def test_priority_keys_are_kombus() -> None:
    assert queue_keys("q") == ["q", "q\x06\x163", "q\x06\x166", "q\x06\x169"]


# -- the pump ----------------------------------------------------------------------------------


def test_an_intake_leaves_the_inflight_list_only_once_written(
    client: redis.Redis, business: Celery
) -> None:
    business.send_task(SUBMIT, kwargs=ORDER, queue=INTAKE_QUEUE, task_id="m1")
    box, rec = make(client)
    rec.pump().once()
    assert [i.id for i in rec.taken] == ["m1"]
    assert rec.held_while_taking == [1]  # in flight while its row is written
    assert rec.published == [("follow", "m1")]
    assert client.llen(box.inflight) == 0 and client.llen(INTAKE_QUEUE) == 0
    assert client.ttl(ALIVE + box.id) > 0


def test_other_messages_are_handed_to_celery_unchanged(
    client: redis.Redis, business: Celery
) -> None:
    business.send_task("wxrecon.poll_reduction", kwargs={"id": 1, "token": "t"}, queue=INTAKE_QUEUE)
    client.lpush(INTAKE_QUEUE, b"garbage")
    [garbage, poll] = sent(client)
    box, rec = make(client)
    pump = rec.pump()
    pump.once()
    pump.once()
    assert rec.taken == [] and rec.published == []
    assert sent(client, POLL_QUEUE) == [garbage, poll]  # the same bytes, in the same order
    assert client.llen(box.inflight) == 0


def test_higher_priorities_first(client: redis.Redis, business: Celery) -> None:
    business.send_task(SUBMIT, kwargs=ORDER, queue=INTAKE_QUEUE, task_id="plain")
    client.lpush(
        queue_keys(INTAKE_QUEUE)[2], client.lindex(INTAKE_QUEUE, 0).replace(b"plain", b"urgent")
    )  # type: ignore[union-attr]
    _box, rec = make(client)
    pump = rec.pump()
    pump.once()
    pump.once()
    assert [i.id for i in rec.taken] == ["urgent", "plain"]


def test_a_database_outage_of_any_length_only_waits(client: redis.Redis, business: Celery) -> None:
    business.send_task(SUBMIT, kwargs=ORDER, queue=INTAKE_QUEUE, task_id="m1")
    box, rec = make(client)
    rec.fail = [DB_DOWN] * 8
    rec.pump().once()
    assert [i.id for i in rec.taken] == ["m1"]
    assert rec.held_while_taking == [1] * 9  # held in flight all along, never dropped
    assert rec.sleeps == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0, 5.0]
    assert inbox.DB_WAIT_MAX < inbox.ALIVE_TTL  # it beats between tries: nobody takes it over
    assert client.llen(box.inflight) == 0


def test_a_pump_stopped_during_an_outage_leaves_the_message_to_another(
    client: redis.Redis, business: Celery
) -> None:
    business.send_task(SUBMIT, kwargs=ORDER, queue=INTAKE_QUEUE, task_id="m1")
    box, rec = make(client, "host:1:a")
    rec.fail = [DB_DOWN]
    pump = rec.pump()
    pump.sleep = lambda s: setattr(rec, "stop", True)  # SIGTERM while it waits
    pump.run()
    assert rec.taken == [] and client.llen(box.inflight) == 1
    assert not client.exists(ALIVE + box.id)  # gone: the next pump may take it at once
    other, rec2 = make(client, "host:2:b")
    other_pump = rec2.pump()
    other_pump.once()  # recovers, then takes it
    assert [i.id for i in rec2.taken] == ["m1"]
    assert client.llen(box.inflight) == 0 and client.llen(other.inflight) == 0


def test_orphans_of_dead_pumps_come_back_and_live_pumps_keep_theirs(client: redis.Redis) -> None:
    client.lpush(INFLIGHT + "dead:1:x", b"m-dead")
    client.lpush(INFLIGHT + "live:2:y", b"m-live")
    client.set(ALIVE + "live:2:y", "2", ex=30)
    box, _rec = make(client, "me:3:z")
    assert box.recover() == 1
    assert sent(client) == [b"m-dead"]
    assert sent(client, INFLIGHT + "live:2:y") == [b"m-live"]
    assert box.waiting() == 2


def test_a_failing_take_sets_the_message_aside_without_its_values(
    client: redis.Redis, business: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    business.send_task(SUBMIT, kwargs=ORDER, queue=INTAKE_QUEUE, task_id="m1")
    [raw] = sent(client)
    box, rec = make(client)
    rec.fail = [ValueError(f"bad {ORDER['bal_account_no']}")]
    with caplog.at_level(logging.ERROR, logger="wxrecon.inbox"):
        rec.pump().once()
    assert sent(client, DEAD) == [raw] and client.llen(box.inflight) == 0
    assert "m1" in caplog.text and "ValueError" in caplog.text
    assert ORDER["bal_account_no"] not in caplog.text


def test_a_broker_that_fails_after_the_write_is_retried_until_the_message_is_done(
    client: redis.Redis, business: Celery
) -> None:
    business.send_task(SUBMIT, kwargs=ORDER, queue=INTAKE_QUEUE, task_id="m1")
    box, rec = make(client)
    real_done, failures = box.done, [redis.ConnectionError("reset")] * 2

    def flaky_done(raw: bytes) -> None:
        if failures:
            raise failures.pop()
        real_done(raw)

    box.done = flaky_done  # type: ignore[method-assign]
    rec.pump().once()
    assert [i.id for i in rec.taken] == ["m1"]  # written once, not again
    assert rec.sleeps == [0.5, 1.0] and client.llen(box.inflight) == 0


# -- what operators see and do: wxrecon intake -----------------------------------------------


def test_a_listing_shows_ids_and_numbers_never_the_ledger_number(business: Celery) -> None:
    client = redis.Redis.from_url(business.conf.broker_url)
    business.send_task(SUBMIT, kwargs=ORDER, queue=INTAKE_QUEUE, task_id="m1")
    [raw] = sent(client)
    shown = inbox.describe(raw, TASKS)
    assert shown == {"id": "m1", "task": SUBMIT, "out_request_no": "P1", "mchid": "1900000109"}
    assert inbox.describe(b"garbage", TASKS) == {"id": None, "task": None}
    client.close()


def test_intake_cli_status_dead_and_replay(cli: Any, redis_db: str, business: Celery) -> None:
    client = redis.Redis.from_url(redis_db)
    cli.setenv(WXRECON_BROKER_URL=redis_db)
    business.send_task(SUBMIT, kwargs=ORDER, queue=INTAKE_QUEUE, task_id="m1")
    business.send_task(
        SUBMIT, kwargs={**ORDER, "out_request_no": "P2"}, queue=INTAKE_QUEUE, task_id="m2"
    )
    box, rec = make(client)
    rec.fail = [ValueError("a bug"), ValueError("a bug")]
    pump = rec.pump()
    pump.once()
    pump.once()
    assert client.llen(DEAD) == 2
    status = json.loads(cli.ok("intake", "status", "--json").stdout)
    assert status["queued"] == 0 and status["dead"] == 2
    assert status["pumps"] == {box.id: {"held": 0, "alive": True}}
    listing = cli.ok("intake", "dead").stdout
    assert "m1" in listing and "P2" in listing and ORDER["bal_account_no"] not in listing
    assert [m["id"] for m in json.loads(cli.ok("intake", "dead", "--json").stdout)["dead"]] == [
        "m1",
        "m2",
    ]
    assert "--id" in cli.fails("intake", "replay", code=2)
    assert "not set aside: nope" in cli.fails("intake", "replay", "--id", "nope")
    assert cli.run("intake", "replay", "--id", "m2", input="n\n").exit_code != 0  # asked, declined
    assert client.llen(DEAD) == 2
    assert json.loads(cli.ok("intake", "replay", "--id", "m2", "--json").stdout) == {"replayed": 1}
    assert [inbox.describe(m, TASKS)["id"] for m in sent(client)] == ["m2"]
    pump.once()  # taken again, and written this time
    assert [i.id for i in rec.taken] == ["m2"] and client.llen(DEAD) == 1
    assert "✓ 1 message(s)" in cli.ok("intake", "replay", "--all", "--yes").stdout
    assert "nothing is set aside" in cli.fails("intake", "replay", "--all", "--yes")
    client.close()


def test_intake_cli_refuses_other_brokers_and_a_silent_one_in_one_line(cli: Any) -> None:
    cli.setenv(WXRECON_BROKER_URL="filesystem://")
    assert "Redis brokers only" in cli.fails("intake", "status")
    cli.setenv(WXRECON_BROKER_URL="redis://127.0.0.1:1/0")
    assert "the broker does not answer" in cli.fails("intake", "dead")

"""A wxrecon task sent by name without ``queue=`` lands on the sender's default queue, which no
wxrecon worker reads: it must not wait there silently."""

from __future__ import annotations

import json

import redis
from celery import Celery

from wxrecon.metrics import OrdersCollector, OrdersSnapshot
from wxrecon.strays import count_strays, stray_tasks


def test_only_wxrecon_envelopes_count() -> None:
    envelopes = [
        json.dumps({"headers": {"task": "wxrecon.submit_special_reduction"}}),
        json.dumps({"headers": {"task": "billing.on_payment"}}),
        "not json",
        json.dumps(["no", "headers"]),
        json.dumps({"headers": {"task": 7}}),
    ]
    assert count_strays(envelopes) == 1


def test_a_task_sent_without_its_queue_is_found(redis_url: str) -> None:
    """A plain Celery app (no wxrecon import) forgets queue=: the message is on ``celery``."""
    app = Celery(broker=redis_url)
    app.conf.task_serializer = "json"
    client = redis.Redis.from_url(redis_url)
    client.delete("celery")
    try:
        app.send_task("wxrecon.track_compensation_bill", kwargs={"out_bill_no": "B1"})
        app.send_task("billing.something_else", kwargs={})
        assert stray_tasks(redis_url, ["celery", "other"]) == {"celery": 1, "other": 0}
    finally:
        client.delete("celery")
        client.close()


def test_not_a_redis_broker_is_not_looked_at() -> None:
    assert stray_tasks("filesystem://", ["celery"]) is None


def test_the_metric_names_the_queue() -> None:
    snap = OrdersSnapshot({}, {}, {"celery": 3})
    families = {f.name: f for f in OrdersCollector(lambda: snap).collect()}
    (sample,) = families["wxrecon_stray_tasks"].samples
    assert sample.labels == {"queue": "celery"} and sample.value == 3

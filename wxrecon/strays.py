"""wxrecon tasks waiting where no wxrecon worker reads: the trap of ``send_task(name, …)``
without ``queue=`` (or ``task_routes``), which puts the message on the sender's default queue
(``celery``) where it waits forever, telling nobody.

wxrecon does not consume those queues itself (a business app's own workers may, and a message
they cannot run is theirs to handle); it looks at them and reports what it finds, in ``wxrecon
stats`` and as the metric ``wxrecon_stray_tasks``. Redis brokers only: a queue is a list whose
items are the JSON messages kombu writes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from wxrecon.config import REDIS_SCHEMES

SAMPLE = 1000  # messages read per queue, at most: a look, not a scan


def count_strays(messages: Iterable[bytes | str]) -> int:
    """How many of ``messages`` (kombu JSON envelopes) are wxrecon tasks."""
    found = 0
    for raw in messages:
        try:
            envelope = json.loads(raw)
        except (ValueError, TypeError):
            continue
        headers = envelope.get("headers") if isinstance(envelope, dict) else None
        task = headers.get("task") if isinstance(headers, dict) else None
        if isinstance(task, str) and task.startswith("wxrecon."):
            found += 1
    return found


def stray_tasks(broker_url: str, queues: Iterable[str]) -> Mapping[str, int] | None:
    """``queue -> wxrecon tasks on it`` for the queues given (None: not a Redis broker)."""
    if not broker_url.startswith(REDIS_SCHEMES):
        return None
    import redis

    client = redis.Redis.from_url(broker_url, socket_timeout=2, socket_connect_timeout=2)
    try:
        return {q: count_strays(client.lrange(q, 0, SAMPLE - 1)) for q in queues}
    finally:
        client.close()

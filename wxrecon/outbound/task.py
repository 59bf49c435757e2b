"""The Celery-task target: the event's fields as JSON keyword arguments of a task the
business app names (``WXRECON_OUTCOME_TASK``), on its own queue (``WXRECON_OUTCOME_QUEUE``).
The app's worker consumes it without importing wxrecon: only the name and the queue are
shared.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kombu.exceptions import KombuError, OperationalError

from wxrecon.outbound import DeliveryFailed


class TaskTarget:
    name = "task"

    def __init__(self, app: Any, task_name: str, queue: str) -> None:
        self.app = app
        self.task_name = task_name
        self.queue = queue

    def send(self, event: Mapping[str, Any], body: bytes) -> None:
        try:
            # A direct exchange and routing key named after the queue: what a plain Celery
            # app declares for ``-Q <queue>``.
            self.app.send_task(
                self.task_name,
                kwargs=dict(event),
                queue=self.queue,
                serializer="json",
                retry=True,
                retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
            )
        except (OperationalError, KombuError, OSError) as exc:
            raise DeliveryFailed(f"task: broker unreachable ({type(exc).__name__})") from None

    def close(self) -> None:
        pass

"""The worker's intake pump process (wxrecon/inbox.py explains why it exists): settings,
Redis, the takers and the first poll wired to :class:`wxrecon.inbox.Pump`.

``python -m wxrecon.intake_pump PARENT_PID HOSTNAME``; the worker's bootstep
(``worker.IntakePumpStep``) starts it and stops it with SIGTERM. It also ends when its parent
worker is gone (a SIGKILLed worker must not leave a pump behind).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger(__name__)

BROKER_TIMEOUT = 10.0  # seconds a Redis call may take (the blocking take asks for 1 s)


def pump_id(hostname: str) -> str:
    """Unique per pump process: a restarted worker's pump never inherits a dead one's list."""
    return f"{hostname[:60]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def napper(stopped: Callable[[], bool]) -> Callable[[float], None]:
    """A sleep that ends within 0.2 s of ``stopped()`` turning true."""

    def nap(seconds: float) -> None:
        end = time.monotonic() + seconds
        while not stopped() and (left := end - time.monotonic()) > 0:
            time.sleep(min(0.2, left))

    return nap


def run(ident: str, stopped: Callable[[], bool]) -> int:
    import redis

    from wxrecon import metrics, takers, tasks
    from wxrecon.config import get_settings
    from wxrecon.inbox import Inbox, Intake, Pump
    from wxrecon.logs import configure_logging
    from wxrecon.worker import INTAKE_QUEUE, POLL_QUEUE, app

    settings = get_settings()
    configure_logging(settings)
    client = redis.Redis.from_url(
        settings.broker_url,
        socket_timeout=BROKER_TIMEOUT,
        socket_connect_timeout=5,
        health_check_interval=30,
    )
    connection = app.connection_for_write()
    producer = connection.Producer()

    def take(intake: Intake) -> Any:
        if intake.args:  # as the task refuses them
            takers.refuse_positional(intake.task, len(intake.args))
            return None
        kind, taker = takers.TAKERS[intake.task]
        taken = taker(intake.id, **intake.kwargs)  # a JSON object's keys: always strings
        if isinstance(taken, takers.Refused):
            return None  # the takers logged why and told the app
        log.info(
            "intake %s (%s): %s #%s %s",
            intake.id,
            intake.task,
            kind.name,
            taken.order_id,
            "written" if taken.created else f"already known ({taken.state})",
        )
        return None if taken.token is None else (kind, taken)

    def publish(follow: Any) -> None:
        kind, taken = follow
        tasks.FIRST_POLL[kind.name].apply_async(
            kwargs={"id": taken.order_id, "token": taken.token},
            queue=POLL_QUEUE,
            producer=producer,
            retry=True,
            retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5},
        )

    pump = Pump(
        Inbox(client, INTAKE_QUEUE, POLL_QUEUE, ident),
        list(takers.TAKERS),
        take,
        publish,
        takers.DB_DOWN,
        stopped,
        on_waiting=metrics.INTAKE_WAITING.set,
        sleep=napper(stopped),
    )
    log.info("intake pump %s reading %s", ident, INTAKE_QUEUE)
    try:
        pump.run()
    finally:
        producer.release()
        connection.release()
        client.close()
        metrics.mark_process_dead(os.getpid())
    log.info("intake pump %s stopped after %d intake(s)", ident, pump.taken)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parent = int(args[0]) if args else os.getppid()
    hostname = args[1] if len(args) > 1 else socket.gethostname()
    stopping = {"now": False}

    def stop(*_: Any) -> None:
        stopping["now"] = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return run(pump_id(hostname), lambda: stopping["now"] or os.getppid() != parent)


if __name__ == "__main__":
    code = main()
    # Everything is released and logged; the interpreter's teardown of the imported modules
    # would add 0.3-0.5 s (more on a loaded machine) to the worker's warm shutdown.
    logging.shutdown()
    os._exit(code)

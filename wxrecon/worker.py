"""The Celery app: queues, money-safe delivery settings, the beat schedule, and signals.

Run ``celery -A wxrecon.worker worker`` (consumes both queues) and ``celery -A wxrecon.worker
beat``. The broker is ``WXRECON_BROKER_URL``: Redis in production; on one machine the
embedded Valkey server (``wxrecon.demo.broker``), the same transport. kombu's ``filesystem://``
(folders under ``WXRECON_DATA_DIR``) still works but can crash a worker under load
(docs/embedded-broker.md).

Timing invariants (so a message or a lease never outlives the work it guards):
``soft time limit < hard time limit < claim lease < broker visibility timeout``. A task past
its hard limit is killed and its lease later expires, so the sweep picks the order up again;
a message is only redelivered by the broker after the visibility timeout, by when its claim
token is stale and the redelivered task does nothing.
"""

from __future__ import annotations

import gc
import itertools
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from celery import Celery, bootsteps, signals
from kombu import Exchange, Queue

from wxrecon.config import REDIS_SCHEMES, Settings, SettingsError, get_settings
from wxrecon.filemodes import private_dir

log = logging.getLogger(__name__)

INTAKE_QUEUE = "wxrecon.intake"
POLL_QUEUE = "wxrecon.poll"
# Three queues for the engine's work, which a worker reads in turn (kombu rotates them), so
# a bulk import's thousands of chunks on wxrecon.poll hold neither the beat's sweeps (whose
# messages expire unread behind them) nor the polls of orders already in flight:
# wxrecon.poll   the first polls intake publishes (an order's own, or a bulk chunk's);
# wxrecon.due    the chunks of due orders a sweep claimed;
# wxrecon.sweep  the beat's sweeps and ledger snapshots (a few small messages).
DUE_QUEUE = "wxrecon.due"
SWEEP_QUEUE = "wxrecon.sweep"
# The relay's queue: consumed by its own worker (``-Q wxrecon.outcomes``), not the engine's.
OUTCOME_QUEUE = "wxrecon.outcomes"

ROUTES = {
    "wxrecon.submit_special_reduction": {"queue": INTAKE_QUEUE},
    "wxrecon.track_compensation_bill": {"queue": INTAKE_QUEUE},
    "wxrecon.poll_reduction": {"queue": POLL_QUEUE},
    "wxrecon.poll_bill": {"queue": POLL_QUEUE},
    "wxrecon.snapshot_ledgers": {"queue": SWEEP_QUEUE},
    "wxrecon.poll_reductions": {"queue": POLL_QUEUE},
    "wxrecon.poll_bills": {"queue": POLL_QUEUE},
    "wxrecon.sweep_reductions": {"queue": SWEEP_QUEUE},
    "wxrecon.sweep_bills": {"queue": SWEEP_QUEUE},
    "wxrecon.relay_outcomes": {"queue": OUTCOME_QUEUE},
}


def _queue(name: str) -> Queue:
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


def time_limits(settings: Settings) -> tuple[float, float]:
    """(soft, hard) task time limits, derived from the claim lease."""
    hard = max(10.0, settings.claim_lease * 0.75)
    return hard * 0.8, hard


# The longest countdown any task is retried with (an intake waiting out a database outage).
RETRY_BACKOFF_MAX = 30


def visibility_timeout(settings: Settings) -> int:
    # How long Redis waits before handing a dead worker's unacknowledged message to another.
    # Every task ends within its hard time limit (< claim_lease), a retry waits at most
    # RETRY_BACKOFF_MAX in the worker that holds it, and a handed-back chunk at most a lease
    # (tasks.hand_back_groups' horizon), so a few leases (and twice that wait) is safe; it
    # bounds how long a poll held by a SIGKILLed worker waits (by-name intake on Redis never
    # sits in kombu's unacked set: the intake pump reads it, see inbox.py).
    return int(max(2.0 * RETRY_BACKOFF_MAX, settings.claim_lease * 3))


def filesystem_folder(settings: Settings) -> Path:
    # Messages hold plaintext ledger numbers: the folders are 0700.
    folder = private_dir(Path(settings.data_dir) / "broker", ours=True)
    private_dir(folder / "processed", ours=True)
    private_dir(folder / "control", ours=True)
    return folder


def relay_schedule(settings: Settings) -> dict[str, Any]:
    """The relay's beat entry, only when an outcome target is configured (a relay queue no
    worker consumes must not fill up)."""
    if not settings.delivers_outcomes:
        return {}
    interval = settings.outcome_relay_interval
    return {
        "relay-outcomes": {
            "task": "wxrecon.relay_outcomes",
            "schedule": interval,
            "options": {"queue": OUTCOME_QUEUE, "expires": max(1.0, interval)},
        }
    }


def celery_config(settings: Settings) -> dict[str, Any]:
    soft, hard = time_limits(settings)
    private_dir(Path(settings.data_dir))  # beat's schedule file lives there
    transport_options: dict[str, Any] = {}
    if settings.broker_url.startswith("filesystem://"):
        folder = filesystem_folder(settings)
        transport_options = {
            "data_folder_in": str(folder),
            "data_folder_out": str(folder),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
            # The transport polls its folder; kombu's 1 s default would add a second of
            # latency to every hop of every order.
            "polling_interval": 0.1,
        }
    elif settings.broker_url.startswith("sqla+"):
        transport_options = {}  # kombu hands these to create_engine: no polling_interval
    else:
        transport_options = {"visibility_timeout": visibility_timeout(settings)}
    interval = settings.sweep_interval
    return {
        "broker_url": settings.broker_url,
        "broker_transport_options": transport_options,
        "broker_connection_retry_on_startup": True,
        # JSON only: a business app can call us by name, and nothing unpickles broker data.
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "result_backend": None,
        "task_ignore_result": True,
        # A task's message is acknowledged only when it finished; a killed worker's message
        # goes back to the queue. One message reserved per process at a time.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_soft_time_limit": soft,
        "task_time_limit": hard,
        # Each queue on its own direct exchange and key: left implicit, Celery binds both to
        # the default exchange and key, so a publisher naming that exchange reaches both.
        "task_queues": [
            _queue(INTAKE_QUEUE),
            _queue(POLL_QUEUE),
            _queue(DUE_QUEUE),
            _queue(SWEEP_QUEUE),
        ],
        "task_default_queue": INTAKE_QUEUE,
        "task_routes": ROUTES,
        "task_create_missing_queues": True,
        "worker_hijack_root_logger": False,
        "beat_schedule": {
            **relay_schedule(settings),
            "sweep-reductions": {
                "task": "wxrecon.sweep_reductions",
                "schedule": interval,
                # A sweep that waited longer than one interval is stale: the next one comes.
                "options": {"queue": SWEEP_QUEUE, "expires": max(1.0, interval)},
            },
            "ledger-snapshots": {
                "task": "wxrecon.snapshot_ledgers",
                "schedule": settings.ledger_snapshot_interval,
                "options": {"queue": SWEEP_QUEUE, "expires": settings.ledger_snapshot_interval},
            },
            "sweep-bills": {
                "task": "wxrecon.sweep_bills",
                "schedule": interval,
                "options": {"queue": SWEEP_QUEUE, "expires": max(1.0, interval)},
            },
        },
        # Only the beat holding the leader lock on the broker sends (wxrecon.beat).
        "beat_scheduler": "wxrecon.beat:LeaderScheduler",
        "beat_schedule_filename": str(Path(settings.data_dir) / "celerybeat-schedule"),
        "timezone": "UTC",
        "enable_utc": True,
    }


def make_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    celery = Celery("wxrecon", include=["wxrecon.tasks"])
    celery.conf.update(celery_config(settings))
    return celery


try:
    app = make_app()
except SettingsError as exc:  # one line naming the setting, not Celery's traceback
    raise SystemExit(f"wxrecon worker refuses to start: {exc}") from None


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    from wxrecon.logs import configure_logging

    configure_logging(get_settings())


# A worker (re)started while the database is down waits for it this long before refusing:
# an outage must not leave the node dead when the database comes back.
DATABASE_WAIT = 600.0


def _wait_for_database(url: str, wait: float = DATABASE_WAIT) -> None:
    """check_schema, waiting with capped backoff while the database does not answer."""
    import time

    from wxrecon.store.db import DatabaseDown, check_schema

    deadline = time.monotonic() + wait
    pause = 0.5
    while True:
        try:
            check_schema(url)
            return
        except DatabaseDown as exc:
            if time.monotonic() + pause > deadline:
                raise
            log.warning("wxrecon worker waiting for the database: %s", exc)
            time.sleep(pause)
            pause = min(pause * 2, 10.0)


@signals.worker_init.connect
def _refuse_old_schema(**_: Any) -> None:
    """The worker does not start on a missing or old schema, nor without credentials."""
    from wxrecon.config import SettingsError
    from wxrecon.filemodes import warn_loose_keys
    from wxrecon.provider import load_all
    from wxrecon.store import sealing
    from wxrecon.store.db import Database, SchemaError
    from wxrecon.store.sealed import SealError, keyring
    from wxrecon.wechatpay.keys import CredentialError

    settings = get_settings()
    try:
        keys = keyring(settings)  # ledger numbers are sealed at rest: no keys, no worker
        _wait_for_database(settings.database_url)
        db = Database(settings.database_url, keyring=keys)
        try:
            sealing.ready(db, keys)  # none left unsealed; the current key is the right one
        finally:
            db.dispose()
        load_all(settings)  # every caller profile, not only the default one
    except (SchemaError, CredentialError, SettingsError, SealError) as exc:
        log.critical("wxrecon worker refuses to start: %s", exc)
        raise SystemExit(1) from None
    warn_loose_keys(settings.mch_private_key_path)


@signals.worker_process_init.connect
def _fresh_runtime(**_: Any) -> None:
    from wxrecon import runtime

    runtime.reset()


# A full collection of a pool process's heap (imports, runtime, caches) took 180-330 ms on
# the benchmark's machine: a pause that can fall between a rate-limit grant and its send and
# bunch requests past the limiter's guard (docs/benchmarks.md). What is alive after start-up
# and the first tasks stays alive; frozen, no collection scans it again (and frozen before
# the fork, the parent's pages stay shared with the pool's).
FREEZE_AFTER_TASKS = frozenset({1, 10, 100, 1000})
_tasks_done = itertools.count(1)


@signals.worker_init.connect
def _freeze_before_fork(**_: Any) -> None:
    gc.freeze()


@signals.task_postrun.connect
def _freeze_once_warm(**_: Any) -> None:
    if next(_tasks_done) in FREEZE_AFTER_TASKS:
        gc.freeze()


@signals.worker_process_shutdown.connect
def _mark_process_dead(pid: int | None = None, **_: Any) -> None:
    from wxrecon import metrics

    metrics.mark_process_dead(pid or os.getpid())


def pump_wanted(broker_url: str, consumed: Any) -> bool:
    """A worker reads wxrecon.intake through its intake pump (wxrecon/inbox.py), not kombu,
    when the broker is Redis and the worker would consume that queue."""
    return broker_url.startswith(REDIS_SCHEMES) and INTAKE_QUEUE in consumed


class IntakePumpStep(bootsteps.StartStopStep):
    """Starts the worker's intake pump process and takes wxrecon.intake away from kombu's
    consumer (whose Redis transport can lose a message to a SIGKILL: see wxrecon/inbox.py)."""

    label = "wxrecon intake pump"
    STOP_WAIT = 15.0  # seconds for the pump to finish the intake it holds
    WATCH_EVERY = 2.0

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        queues = worker.app.amqp.queues
        self.enabled = pump_wanted(str(worker.app.conf.broker_url), queues.consume_from)
        if self.enabled:  # before the consumer starts: it never subscribes to the queue
            queues.deselect([INTAKE_QUEUE])
        self.proc: subprocess.Popen[bytes] | None = None
        self.watch: Any = None

    def start(self, worker: Any) -> None:
        self._spawn(worker.hostname)
        self.watch = worker.timer.call_repeatedly(self.WATCH_EVERY, self._watch, (worker,))

    def _spawn(self, hostname: str) -> None:
        command = [sys.executable, "-m", "wxrecon.intake_pump", str(os.getpid()), hostname]
        self.proc = subprocess.Popen(command)
        log.info("wxrecon intake pump started (pid %d)", self.proc.pid)

    def _watch(self, worker: Any) -> None:
        """A pump that died (killed, crashed) is started again; what it held is recovered."""
        if self.proc is not None and self.proc.poll() is not None:
            log.warning("wxrecon intake pump exited (%s); starting another", self.proc.returncode)
            self._spawn(worker.hostname)

    def close(self, worker: Any) -> None:
        """Warm shutdown closes every step before it stops any: the pump starts finishing its
        intake now, beside the pool, instead of after it (honcho kills at 5 s)."""
        if self.watch is not None:
            self.watch.cancel()
            self.watch = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def stop(self, worker: Any) -> None:
        self.close(worker)
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            proc.wait(self.STOP_WAIT)
        except subprocess.TimeoutExpired:  # what it holds stays in flight, recovered later
            proc.kill()
            proc.wait()

    shutdown = stop


app.steps["worker"].add(IntakePumpStep)

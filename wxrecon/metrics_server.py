"""The ``metrics`` process: one HTTP endpoint with the aggregate of every process's metrics.

Celery prefork children each write their samples to files in ``PROMETHEUS_MULTIPROC_DIR``;
this process merges them with prometheus_client's ``MultiProcessCollector`` and adds gauges
read from the database at scrape time (orders by state, oldest due order age), which are the
same whatever the number of workers.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, CollectorRegistry, multiprocess, start_http_server

from wxrecon.config import Settings
from wxrecon.metrics import OrdersCollector, OrdersSnapshot

if TYPE_CHECKING:
    from wxrecon.store.db import Database

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def build_registry(snapshot: Callable[[], OrdersSnapshot] | None) -> CollectorRegistry:
    """The aggregate of all processes when ``PROMETHEUS_MULTIPROC_DIR`` is set, otherwise this
    process's own registry; plus the database gauges when ``snapshot`` is given."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry()
        registry.register(_Forward(REGISTRY))
    if snapshot is not None:
        registry.register(OrdersCollector(snapshot))
    return registry


class _Forward:
    """Expose another registry's samples (we must not add DB gauges to the global one)."""

    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self):  # type: ignore[no-untyped-def]
        return self.source.collect()


def read_snapshot(db: Database, now: datetime | None = None) -> OrdersSnapshot:
    """Counts by (kind, state) and, per kind, how long the most overdue in-flight order has
    waited past its ``next_poll_at`` (two grouped counts and two indexed MIN queries)."""
    from sqlalchemy import func, select

    from wxrecon.domain.kinds import KINDS

    now = now or datetime.now(UTC)
    counts: dict[tuple[str, str], int] = {}
    oldest: dict[str, float] = {}
    with db.read() as session:
        for name, kind in KINDS.items():
            model = kind.model
            for state, count in session.execute(
                select(model.state, func.count()).group_by(model.state)
            ):
                counts[(name, state)] = int(count)
            due = session.execute(
                select(func.min(model.next_poll_at)).where(
                    model.state.in_(sorted(kind.active)), model.next_poll_at <= now
                )
            ).scalar_one_or_none()
            oldest[name] = (now - _aware(due)).total_seconds() if due is not None else 0.0
    from wxrecon.domain.outcomes import ledger_label
    from wxrecon.store.ledgers import unexplained_debit_totals
    from wxrecon.store.outbox import backlog

    outcomes = backlog(db)
    debits = {(m, ledger_label(h)): fen for m, h, fen in unexplained_debit_totals(db)}
    pending_since = outcomes.oldest_pending
    return OrdersSnapshot(
        counts=counts,
        oldest_due_seconds=oldest,
        outcomes=outcomes.counts,
        oldest_undelivered_seconds=(now - pending_since).total_seconds() if pending_since else 0.0,
        ledger_unexplained_debit_fen=debits,
    )


def _aware(value: Any) -> datetime:
    # MIN() bypasses the column type on SQLite: it comes back as naive UTC (or text).
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def database_snapshot(settings: Settings) -> Callable[[], OrdersSnapshot]:
    """A snapshot function over one pooled connection set, for the life of the process."""
    from wxrecon.store.db import Database
    from wxrecon.strays import stray_tasks

    db = Database(settings.database_url)

    def snapshot() -> OrdersSnapshot:
        snap = read_snapshot(db)
        try:
            strays = stray_tasks(settings.broker_url, settings.watch_queues) or {}
        except Exception:  # the broker is down: the database's gauges still count
            log.warning("metrics: cannot look at the watched queues", exc_info=True)
            strays = {}
        return dataclasses.replace(snap, stray_tasks=strays)

    return snapshot


def start(
    settings: Settings, *, host: str = "127.0.0.1", port: int | None = None, with_db: bool = True
) -> tuple[WSGIServer, threading.Thread]:
    """Start serving in a background thread; returns the server and its thread."""
    registry = build_registry(database_snapshot(settings) if with_db else None)
    server, thread = start_http_server(
        settings.metrics_port if port is None else port, addr=host, registry=registry
    )
    return server, thread

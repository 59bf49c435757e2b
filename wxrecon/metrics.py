"""Prometheus metrics. Names follow Prometheus conventions; no order ids as labels.

Under Celery prefork set ``PROMETHEUS_MULTIPROC_DIR`` so every process writes its samples to
files that the ``metrics`` process aggregates.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

PROVIDER_REQUEST_SECONDS = Histogram(
    "wxrecon_provider_request_duration_seconds",
    "Duration of requests to the provider by endpoint, outcome (HTTP status or error) and "
    "caller (the merchant profile that signed).",
    ["endpoint", "outcome", "caller"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
PROVIDER_ERRORS = Counter(
    "wxrecon_provider_errors_total",
    "Provider errors by endpoint, code (or error class when there is no code) and caller.",
    ["endpoint", "code", "caller"],
)
TRANSITIONS = Counter(
    "wxrecon_transitions_total",
    "State transitions of orders by kind (reduction, bill), from and to.",
    ["kind", "from_state", "to_state"],
)
RATELIMIT_WAIT_SECONDS = Counter(
    "wxrecon_ratelimit_wait_seconds_total",
    "Seconds spent waiting for the shared rate limiter, by endpoint.",
    ["endpoint"],
)
RATELIMIT_DEFERRALS = Counter(
    "wxrecon_ratelimit_deferrals_total",
    "Calls deferred by the shared rate limiter (not counted as attempts), by endpoint.",
    ["endpoint"],
)
INTAKE_WAITING = Gauge(
    "wxrecon_intake_waiting",
    "By-name intake messages not yet written: on wxrecon.intake or held by an intake pump "
    "(each pump looks every few seconds; the newest look wins).",
    multiprocess_mode="livemostrecent",
)
INTAKE_DB_RETRIES = Counter(
    "wxrecon_intake_db_retries_total",
    "Intake messages put back to wait for the database (never dropped), by task name.",
    ["task"],
)


OUTCOME_DELIVERIES = Counter(
    "wxrecon_outcome_deliveries_total",
    "Outcome event deliveries by target (task, webhook; all: dead) and result.",
    ["target", "result"],
)


# Set by each sweep task that finishes. "max" over the prefork children's files (dead ones'
# included) is the newest sweep; the exporter reads those files, so no table is needed.
LAST_SWEEP = Gauge(
    "wxrecon_last_sweep_timestamp_seconds",
    "Unix time the last sweep of due orders of this kind finished (alert: sweeps stopped).",
    ["kind"],
    multiprocess_mode="max",
)


def mark_process_dead(pid: int) -> None:
    """A dead process's live gauges must leave the multiprocess aggregate."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def mark_sweep(kind: str, at: float | None = None) -> None:
    LAST_SWEEP.labels(kind).set(time.time() if at is None else at)


def count_outcome_delivery(target: str, result: str) -> None:
    OUTCOME_DELIVERIES.labels(target, result).inc()


def observe_provider_request(
    endpoint: str, outcome: str, seconds: float, *, caller: str = "default"
) -> None:
    """Matches the client's ``Observer`` signature (the runtime binds ``caller``)."""
    PROVIDER_REQUEST_SECONDS.labels(str(endpoint), outcome, caller).observe(seconds)


def count_provider_error(endpoint: str, code: str, *, caller: str = "default") -> None:
    PROVIDER_ERRORS.labels(str(endpoint), code, caller).inc()


def count_transition(kind: str, from_state: str, to_state: str, n: int = 1) -> None:
    TRANSITIONS.labels(kind, from_state, to_state).inc(n)


def count_ratelimit_wait(endpoint: str, seconds: float, *, deferred: bool) -> None:
    if seconds > 0:
        RATELIMIT_WAIT_SECONDS.labels(str(endpoint)).inc(seconds)
    if deferred:
        RATELIMIT_DEFERRALS.labels(str(endpoint)).inc()


# -- read at scrape time from the database (served by the ``metrics`` process) ---------------


@dataclass(frozen=True)
class OrdersSnapshot:
    """What the database says now: order counts by (kind, state), and per kind the age in
    seconds of the oldest order whose next query is overdue (0 when none is)."""

    counts: Mapping[tuple[str, str], int]
    oldest_due_seconds: Mapping[str, float]
    # wxrecon tasks on queues no wxrecon worker reads (see wxrecon.strays), by queue.
    stray_tasks: Mapping[str, int] = field(default_factory=dict)
    # Outcome events not delivered (pending, dead) and the oldest pending one's age.
    outcomes: Mapping[str, int] = field(default_factory=dict)
    oldest_undelivered_seconds: float = 0.0
    # Unexplained debits in fen by (mchid, ledger label: a prefix of the ledger's hash).
    ledger_unexplained_debit_fen: Mapping[tuple[str, str], int] = field(default_factory=dict)


class OrdersCollector(Collector):
    """Gauges computed at scrape time, so they are right however many workers there are."""

    def __init__(self, snapshot: Callable[[], OrdersSnapshot]) -> None:
        self._snapshot = snapshot

    def describe(self) -> list[Metric]:
        return []  # computed on scrape: never registered eagerly

    def collect(self) -> Iterator[Metric]:
        orders = GaugeMetricFamily(
            "wxrecon_orders",
            "Orders in the database by kind and local state.",
            labels=["kind", "state"],
        )
        oldest = GaugeMetricFamily(
            "wxrecon_oldest_due_order_age_seconds",
            "Seconds the most overdue non-final order has been waiting for its next query.",
            labels=["kind"],
        )
        up = GaugeMetricFamily(
            "wxrecon_database_up", "1 when the metrics process could read the database."
        )
        strays = GaugeMetricFamily(
            "wxrecon_stray_tasks",
            "wxrecon tasks waiting on a queue no wxrecon worker reads (sent without queue=).",
            labels=["queue"],
        )
        try:
            snap = self._snapshot()
        except Exception:
            log.warning("metrics: cannot read the database", exc_info=True)
            up.add_metric([], 0)
            yield up
            return
        for (kind, state), count in sorted(snap.counts.items()):
            orders.add_metric([kind, state], count)
        for kind, seconds in sorted(snap.oldest_due_seconds.items()):
            oldest.add_metric([kind], max(0.0, seconds))
        for queue, count in sorted(snap.stray_tasks.items()):
            strays.add_metric([queue], count)
        up.add_metric([], 1)
        yield orders
        yield oldest
        yield strays
        yield from _outcome_gauges(snap)
        yield _ledger_gauge(snap)
        yield up


def _outcome_gauges(snap: OrdersSnapshot) -> Iterator[Metric]:
    undelivered = GaugeMetricFamily(
        "wxrecon_outcomes_undelivered",
        "Outcome events not delivered, by delivery state (pending, dead).",
        labels=["delivery"],
    )
    for delivery, count in sorted(snap.outcomes.items()):
        undelivered.add_metric([delivery], count)
    age = GaugeMetricFamily(
        "wxrecon_oldest_undelivered_outcome_age_seconds",
        "Seconds since the oldest pending outcome event occurred (0 when none is pending).",
    )
    age.add_metric([], max(0.0, snap.oldest_undelivered_seconds))
    yield undelivered
    yield age


def _ledger_gauge(snap: OrdersSnapshot) -> Metric:
    debit = GaugeMetricFamily(
        "wxrecon_ledger_unexplained_debit_fen",
        "Fen that left a quota ledger without a reduction wxrecon recorded SUCCESS (all time), "
        "by target merchant and ledger (a prefix of the ledger number's keyed hash).",
        labels=["mchid", "ledger"],
    )
    for (mchid, label), fen in sorted(snap.ledger_unexplained_debit_fen.items()):
        debit.add_metric([mchid, label], fen)
    return debit

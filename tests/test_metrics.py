"""The database-backed gauges and the metrics registry."""

from __future__ import annotations

from prometheus_client import generate_latest

from wxrecon.metrics import OrdersSnapshot
from wxrecon.metrics_server import build_registry


def test_orders_gauges_come_from_the_snapshot(monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    snap = OrdersSnapshot(
        counts={
            ("reduction", "SUCCESS"): 7,
            ("reduction", "NEEDS_REVIEW"): 1,
            ("bill", "ACCEPTED"): 2,
        },
        oldest_due_seconds={"reduction": 12.5, "bill": 0.0},
    )
    text = generate_latest(build_registry(lambda: snap)).decode()
    assert 'wxrecon_orders{kind="reduction",state="SUCCESS"} 7.0' in text
    assert 'wxrecon_orders{kind="reduction",state="NEEDS_REVIEW"} 1.0' in text
    assert 'wxrecon_orders{kind="bill",state="ACCEPTED"} 2.0' in text
    assert 'wxrecon_oldest_due_order_age_seconds{kind="reduction"} 12.5' in text
    assert "wxrecon_database_up 1.0" in text
    # the process's own metrics are served too (no multiprocess dir: this process only)
    assert "# TYPE wxrecon_transitions_total counter" in text


def test_an_unreadable_database_is_a_gauge_not_a_failed_scrape(monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)

    def broken() -> OrdersSnapshot:
        raise RuntimeError("no such table")

    text = generate_latest(build_registry(broken)).decode()
    assert "wxrecon_database_up 0.0" in text
    assert "wxrecon_orders{" not in text

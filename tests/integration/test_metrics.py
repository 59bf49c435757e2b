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


def test_samples_of_several_processes_are_summed(tmp_path, monkeypatch):
    """Prefork children each write their own files; the metrics process adds them up."""
    import subprocess
    import sys

    code = (
        "from wxrecon import metrics\n"
        "metrics.count_transition('reduction', 'PROCESSING', 'SUCCESS')\n"
        "metrics.observe_provider_request('query_bill', '200', 0.02, caller='platform')\n"
    )
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    for _ in range(3):
        subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    assert len(list(tmp_path.glob("counter_*.db"))) == 3
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    text = generate_latest(build_registry(None)).decode()
    assert (
        'wxrecon_transitions_total{from_state="PROCESSING",kind="reduction",to_state="SUCCESS"} 3.0'
        in text
    )
    count = "wxrecon_provider_request_duration_seconds_count"
    assert f'{count}{{caller="platform",endpoint="query_bill",outcome="200"}} 3.0' in text


def test_the_endpoint_serves_over_http(sqlite_url, monkeypatch):
    import httpx

    from wxrecon.config import Settings
    from wxrecon.metrics_server import start

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    server, thread = start(Settings(database_url=sqlite_url), port=0)
    try:
        port = server.server_address[1]
        body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    finally:
        server.shutdown()
        thread.join(timeout=10)
    assert "wxrecon_database_up 1.0" in body
    assert 'wxrecon_oldest_due_order_age_seconds{kind="bill"} 0.0' in body


def test_last_sweep_is_the_newest_of_every_process(tmp_path, monkeypatch):
    """Each prefork child stamps its own file; the exporter shows the newest (dead ones too)."""
    import subprocess
    import sys

    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    for at in (1000.0, 3000.0, 2000.0):
        code = f"from wxrecon import metrics\nmetrics.mark_sweep('reduction', {at})\n"
        subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    text = generate_latest(build_registry(None)).decode()
    assert 'wxrecon_last_sweep_timestamp_seconds{kind="reduction"} 3000.0' in text

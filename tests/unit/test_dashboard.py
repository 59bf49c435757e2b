"""deploy/grafana/wxrecon.json: every panel queries metrics wxrecon actually exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from wxrecon.metrics import OrdersSnapshot
from wxrecon.metrics_server import build_registry

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "wxrecon.json"


def _exported(monkeypatch) -> set[str]:  # type: ignore[no-untyped-def]
    """Family and sample names of the metrics process's registry, database gauges included."""
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    snap = OrdersSnapshot(counts={}, oldest_due_seconds={})
    names: set[str] = set()
    for family in build_registry(lambda: snap).collect():
        names.add(family.name)
        names.update(s.name for s in family.samples)
    return names


def test_every_panel_names_only_exported_metrics(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    exported = _exported(monkeypatch)
    assert "wxrecon_last_sweep_timestamp_seconds" in exported
    dash = json.loads(DASHBOARD.read_text())
    assert dash["panels"]
    for panel in dash["panels"]:
        exprs = [t["expr"] for t in panel["targets"]]
        assert exprs, panel["title"]
        for expr in exprs:
            used = set(re.findall(r"\bwxrecon_\w+", expr))
            assert used, f"{panel['title']}: {expr} names no wxrecon metric"
            for name in used:
                # a histogram's _bucket and a counter's _total are sample names of a family
                family = re.sub(r"_(bucket|count|sum|total)$", "", name)
                assert name in exported or family in exported, f"{panel['title']}: {name}"


def test_panels_have_unique_ids_and_the_alerted_metrics() -> None:
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    text = DASHBOARD.read_text()
    for metric in (
        "wxrecon_orders",
        "wxrecon_oldest_due_order_age_seconds",
        "wxrecon_last_sweep_timestamp_seconds",
        "wxrecon_provider_errors_total",
        "wxrecon_ratelimit_deferrals_total",
        "wxrecon_oldest_undelivered_outcome_age_seconds",
        "wxrecon_ledger_unexplained_debit_fen",
    ):
        assert metric in text, metric

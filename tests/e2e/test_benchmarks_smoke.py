"""The benchmark's own code, run small: it must finish, produce every figure, keep every order
safe and respect the provider's rate limit. Speed is never asserted here."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from benchmarks import run
from tests.fixtures_chaos import report_figures

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.timeout(600)]


def refused(figures: dict) -> int:
    """The 429s the simulator answered in a phase, over its endpoints."""
    return sum(e.get("429", 0) for e in figures["requests_by_endpoint"].values())


def test_benchmark_smoke(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run, "POSTGRES_URL", postgres_url)
    unique = f"{os.getpid()}_{uuid.uuid4().hex[:8]}"  # concurrent runs never share a database
    monkeypatch.setattr(run, "DB_NAME", f"wxrecon_bench_smoke_{unique}")
    monkeypatch.setattr(run, "CLAIM_DB", f"wxrecon_bench_smoke_claim_{unique}")
    report = run.main(
        [
            "--orders",
            "200",
            "--merchants",
            "4",
            "--hot-orders",
            "150",
            "--delivery-orders",
            "-1",  # as many as --orders on each side of the delivery blocks
            "--limit-merchants",
            "2",
            "--limit-orders",
            "100",
            "--concurrency",
            "2",
            "--baseline-requests",
            "60",
            "--claim-rows",
            "1000,5000",
            "--claim-batch",
            "50",
            "--claim-repeats",
            "3",
            "--timeout",
            "240",
            "--out-dir",
            str(tmp_path),
            # Its own small test (test_benchmark_import.py); left in, the phase would import
            # its default 1,000,000 rows here.
            "--skip",
            "import",
        ]
    )
    written = json.loads(Path(report["json_path"]).read_text())
    assert written["parameters"]["orders"] == 200

    for phase, n in (("throughput", 200), ("hot_merchant", 150)):
        figures = written[phase]
        assert figures["final"] == figures["orders"] == n, figures["not_final"]
        assert figures["problems"] == []
        assert figures["requests"] >= 2 * n  # at least a submit and a query per order
        assert set(figures["latency_ms"]) == {"p50", "p90", "p99", "max"}
        assert 0 < figures["latency_ms"]["p50"] <= figures["latency_ms"]["p99"]
        peaks = figures["peak_per_second"]["by_endpoint"]
        assert set(peaks) >= {"submit_reduction", "query_reduction"}
        assert max(peaks.values()) <= run.LIMIT + refused(figures)
    assert written["hot_merchant"]["peak_per_second"]["overall_mchid"] == run.HOT_MCHID
    limited = written["rate_limit"]
    assert limited["final"] == limited["orders"] == 200 and limited["problems"] == []
    # The limiter grants at most 20 in any 1 s + RATE_LIMIT_GUARD (unit-tested in
    # test_ratelimit.py); the simulator counts arrivals, which a process descheduled for
    # longer than the guard between its grant and its send can push over on a loaded machine
    # (CI run 2 of 3 December, guard 50 ms: 21; a full run that afternoon: 22), so no bound
    # on them holds on every machine. What does: each arrival over the limit was refused
    # (429) and counted, and the orders still ended as the provider says (problems, above).
    # The benchmark reports both.
    peak = max(limited["peak_per_second"]["by_endpoint"].values())
    assert peak <= limited["efficiency"]["limit"] + limited["refused_429"]
    floor = written["throughput"]["crypto_floor"]
    assert floor["per_order_ms"] > 0 and floor["when"] in ("during the phase", "after it")
    assert written["throughput"]["crypto_floor_after"]["per_order_ms"] > 0
    on, off = written["delivery_on"], written["delivery_off"]
    for side in (on, off):  # 200 each, in blocks of 50 (delivery_phase.PATTERN)
        assert side["final"] == side["orders"] == 200 and side["problems"] == []
        assert len(side["blocks"]) == 4 and all(r > 0 for r in side["blocks"])
    assert on["delivered"] == 200  # every on block's final outcomes reached the receiver once
    assert written["ratios"]["delivery_on_vs_off"] > 0
    t = written["throughput"]
    assert t["worker_cpu_seconds"] > 0 and t["rss"]["peak_mb"] > 0

    for name in ("floor", "floor_urllib3", "wechatpayv3", "wxrecon"):
        b = written["baselines"][name]
        assert b["requests"] == 60 and b["errors"] == 0, (name, b)
        assert b["cpu_ms_per_request"] > 0
    for size, rows in (("small", 1000), ("large", 5000)):
        c = written["claim"][size]
        assert c["rows"] == rows and len(c["claim_ms"]) == 3

    assert set(written["goals"]) == set(run.GOALS)
    for name, goal in written["goals"].items():
        assert goal["value"] is not None, name
    assert written["goals"]["peak_requests_per_second"]["met"] is True
    report_figures(
        "benchmark smoke (tiny N, not a measurement): "
        + ", ".join(f"{k} {v['value']}" for k, v in written["goals"].items())
    )

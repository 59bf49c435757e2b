"""The benchmark report's arithmetic (the rate-limit phase, benchmarks/limit_phase.py; the
delivery blocks, benchmarks/delivery_phase.py; ratios of phases corrected for the machine's
speed, benchmarks/report.py), on made-up figures."""

from __future__ import annotations

from benchmarks import limit_phase
from benchmarks.delivery_phase import PATTERN, blocks, side
from benchmarks.harness import machine_cpu
from benchmarks.report import goals, ratios


def series(counts: list[int], start: int = 1000) -> dict[str, int]:
    return {str(start + i): n for i, n in enumerate(counts)}


def test_backlog_leaves_out_the_partial_first_and_last_seconds() -> None:
    assert limit_phase.backlog_seconds(series([3, 20, 20, 19, 5])) == [1001, 1002, 1003]
    assert limit_phase.backlog_seconds(series([3, 5])) == []
    assert limit_phase.backlog_seconds({"7": 0, "8": 4, "9": 4, "10": 4}) == [9]


def test_efficiency_is_the_mean_sustained_rate_over_the_limit_worst_endpoint_first() -> None:
    admitted = {
        "submit_reduction": {"a": series([2, 20, 20, 20, 1]), "b": series([5, 18, 18, 18, 3])},
        "query_reduction": {"a": series([1, 10, 10, 10, 1]), "b": series([1, 10, 12, 14, 9])},
    }
    e = limit_phase.efficiency(admitted, ["a", "b"], 20)
    sub, query = e["by_endpoint"]["submit_reduction"], e["by_endpoint"]["query_reduction"]
    assert sub["sustained_per_merchant"] == {"a": 20.0, "b": 18.0}
    assert sub["efficiency"] == 0.95 and sub["worst_merchant_efficiency"] == 0.9
    assert query["sustained_per_merchant"] == {"a": 10.0, "b": 12.0}
    assert e["min"] == query["efficiency"] == 0.55


def test_a_merchant_without_a_span_has_no_rate_and_none_at_all_no_efficiency() -> None:
    e = limit_phase.efficiency({"submit_reduction": {"a": series([4])}}, ["a", "b"], 20)
    assert e["by_endpoint"]["submit_reduction"]["sustained_per_merchant"] == {"a": None, "b": None}
    assert e["min"] is None


def test_the_report_divides_the_peak_by_the_limit_and_checks_the_goals() -> None:
    report = {
        "rate_limit": {
            "efficiency": limit_phase.efficiency(
                {"submit_reduction": {"a": series([1, 19, 20, 19, 1])}}, ["a"], 20
            ),
            "peak_per_second": {"by_endpoint": {"submit_reduction": 21}},
        }
    }
    r = ratios(report)
    assert r["ratelimit_peak_vs_limit"] == 1.05
    g = goals(r)
    assert g["ratelimit_peak_vs_limit"]["met"] is False
    assert g["ratelimit_efficiency"] == {"value": 0.967, "goal": "≥ 0.95", "met": True}


RIG = {  # a throughput phase's other figures, as ratios() reads them
    "cpu_ms_per_order": 3.0,
    "rss": {},
    "peak_per_second": {"by_endpoint": {}},
    "requests_per_second": 600.0,
}


def test_delivery_on_is_compared_with_the_off_blocks_between_which_it_ran() -> None:
    """On ÷ off over the interleaved blocks; the spread of the blocks' own rates (the
    machine's drift) and on ÷ the throughput phase are kept beside it."""
    report = {
        "throughput": {**RIG, "orders_per_second": 400.0},
        "delivery_off": {"orders_per_second": 300.0, "blocks": [280.0, 320.0]},
        "delivery_on": {"orders_per_second": 270.0, "blocks": [250.0, 290.0]},
    }
    r = ratios(report)
    assert r["delivery_on_vs_off"] == 0.9
    assert r["delivery_blocks_fastest_vs_slowest"] == 1.28  # 320 ÷ 250
    assert r["delivery_on_vs_throughput_phase"] == 0.675
    del report["delivery_off"]
    assert "delivery_on_vs_off" not in ratios(report)


def test_delivery_blocks_follow_a_balanced_pattern_with_as_many_orders_on_each_side() -> None:
    """ABBABAAB: the off (A) and on (B) blocks' mean positions, and the means of their
    squared positions, are equal, so a linear or quadratic drift weighs on both alike."""
    found = blocks(10_001)
    assert [on for on, _ in found] == [c == "B" for c in PATTERN]
    assert sum(n for on, n in found if on) == sum(n for on, n in found if not on) == 10_001
    for power in (1, 2):
        a = sum(i**power for i, c in enumerate(PATTERN) if c == "A")
        b = sum(i**power for i, c in enumerate(PATTERN) if c == "B")
        assert a == b


def test_a_side_adds_its_blocks_machine_cpu_and_divides_it_by_their_orders() -> None:
    results = [
        {
            "orders": 100,
            "final": 100,
            "seconds": 1.0,
            "orders_per_second": 100.0,
            "problems": [],
            "machine_cpu_seconds": {"busy": 0.5, "postgres": 0.1, "steal": 0.0},
        },
        {
            "orders": 300,
            "final": 300,
            "seconds": 2.0,
            "orders_per_second": 150.0,
            "problems": [],
            "machine_cpu_seconds": {"busy": 1.5, "postgres": 0.3, "steal": 0.2},
        },
    ]
    found = side(results)
    assert found["orders_per_second"] == 133.3
    assert found["machine_cpu_ms_per_order"] == {"busy": 5.0, "postgres": 1.0, "steal": 0.5}


def test_the_machine_s_cpu_is_read_whole_and_grows_with_work() -> None:
    import time

    before = machine_cpu()
    assert set(before) == {"busy", "steal", "postgres"}
    end = time.process_time() + 0.3
    while time.process_time() < end:  # burn a third of a second of this process's CPU
        pass
    after = machine_cpu()
    assert after["busy"] - before["busy"] >= 0.2
    assert after["steal"] >= before["steal"] >= 0 and after["postgres"] >= 0

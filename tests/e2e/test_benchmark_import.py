"""The benchmark's import phase, run small: ``wxrecon import`` as a child process into
PostgreSQL with a private Redis, at two sizes, then SIGKILLed half-way and run again. Its
figures must all be there and the killed-then-re-run import must end exact. Speed is never
asserted here."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from benchmarks import run

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.timeout(300)]


def test_import_phase_counts_exactly(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run, "POSTGRES_URL", postgres_url)
    monkeypatch.setattr(
        run, "IMPORT_DB", f"wxrecon_bench_import_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    )
    # Small batches, so that the kill lands while the file is still being written.
    argv = ["--skip", "e2e", "--skip", "baselines", "--skip", "claim", "--import-rows", "3000,1000"]
    argv += ["--import-kill-rows", "8000", "--import-batch", "20", "--out-dir", str(tmp_path)]
    report = run.main(argv)
    written = json.loads(Path(report["json_path"]).read_text())["import"]

    for size in (3000, 1000):
        r = written["runs"][str(size)]
        assert r["exit_code"] == 0 and (r["created"], r["existing"]) == (size, 0), r
        assert r["enqueued_ids"] == size  # every new order sent once, after its batch
        assert r["peak_rss_mb"] > 0 and r["rows_per_second"] > 0 and r["load_before"] >= 0
    assert written["rss_large_vs_small_pct"] is not None
    assert set(written["goals"]) == {"rows_per_second", "peak_rss_mb", "rss_large_vs_small_pct"}

    k = written["kill_and_rerun"]
    assert k["killed"] and 0 < k["stored_when_killed"] < 8000, k
    assert k["rerun"]["exit_code"] == 0
    assert k["rerun"]["existing"] == k["stored_when_killed"]
    assert k["rerun"]["created"] + k["rerun"]["existing"] == 8000
    assert k["orders"] == k["distinct_orders"] == 8000
    assert k["enqueued_ids"] == k["enqueued_distinct"] <= 8000
    assert k["exact"] is True

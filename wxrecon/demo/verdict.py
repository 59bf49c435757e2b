"""The demo's verdict: every order final and equal to the simulator's ground truth, nothing
applied twice, every submit of one order with the same parameters; and its summary."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from wxrecon.demo.view import Tracked


@dataclass
class Verdict:
    matched: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _disagreement(t: Tracked, truth: dict[str, Any] | None) -> str:
    """How a demo order differs from the simulator's ground truth ("" when it does not): the
    same state, applied at most once, the same parameters on every submit."""
    if truth is None:
        return f"the provider never saw it, local {t.state}"
    if truth.get("applied_count", 0) > 1:
        return f"applied {truth['applied_count']} times"
    if truth.get("mismatched_param_submits"):
        return "a submit carried different parameters"
    if t.state != truth["state"]:
        return f"local {t.state}, provider {truth['state']}"
    return ""


def verdict(tracked: Iterable[Tracked], admin: Any) -> Verdict:
    """Every demo order final and equal to the simulator's ground truth; nothing applied
    twice; every submit of one order carried the same parameters."""
    v = Verdict()
    truth = {
        "reduction": {r["out_request_no"]: r for r in admin.reductions()},
        "bill": {b["out_bill_no"]: b for b in admin.bills()},
    }
    for t in tracked:
        problem = _disagreement(t, truth[t.kind].get(t.number))
        if problem:
            v.problems.append(f"{t.number}: {problem}")
        else:
            v.matched += 1
    return v


def summary(demo: Any, v: Verdict, admin: Any, elapsed: float) -> dict[str, Any]:
    by_category: dict[str, Counter[str]] = {}
    times: dict[str, list[float]] = {}
    for t in demo.tracked.values():
        by_category.setdefault(t.category, Counter())[t.state] += 1
        if t.final_at is not None and t.first_seen is not None:
            times.setdefault(t.category, []).append(t.final_at - t.first_seen)
    try:
        faults = {r["kind"]: r["fired"] for r in admin.faults() if r.get("fired")}
    except Exception:
        faults = {}
    try:
        sim_stats = admin.stats()
    except Exception:
        sim_stats = {}
    return {
        "run_id": demo.run_id,
        "ok": v.ok,
        "orders": len(demo.tracked),
        "matched_ground_truth": v.matched,
        "problems": v.problems,
        "elapsed_seconds": round(elapsed, 1),
        "by_category": {k: dict(c) for k, c in by_category.items()},
        "seconds_to_final": {
            k: {"median": round(sorted(x)[len(x) // 2], 1), "max": round(max(x), 1)}
            for k, x in times.items()
        },
        "faults_injected": faults,
        "provider_requests": sim_stats.get("requests"),
        "work_dir": str(demo.work),
    }

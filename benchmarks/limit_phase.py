"""The rate-limit phase: the limit lowered (both in the workers and in the simulator) and a
backlog for several target merchants, so that the limit and not the CPU bounds the rate.

Efficiency is the rate sustained while the backlog lasts, on each endpoint, divided by the
limit. The simulator counts admitted requests per whole second of its clock for each
(endpoint, merchant); the backlog of one endpoint lasts, for one merchant, from its first
request there to its last (every order of the phase is handed in at once, and each needs a
submit and at least one query). The first and last seconds of that span are partial and left
out. The peak is the simulator's highest count of requests, admitted or
not, for one merchant and endpoint in any one-second window: it must never exceed the limit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ENDPOINTS = ("submit_reduction", "query_reduction")


def backlog_seconds(series: Mapping[str, int]) -> list[int]:
    """The whole seconds strictly inside the span of a merchant's requests on an endpoint."""
    seconds = sorted(int(s) for s, n in series.items() if n > 0)
    if len(seconds) < 3:
        return []
    return list(range(seconds[0] + 1, seconds[-1]))


def efficiency(
    admitted: Mapping[str, Mapping[str, Mapping[str, int]]], mchids: list[str], limit: int
) -> dict[str, Any]:
    """Per endpoint: the requests per second sustained by each merchant while its backlog
    lasted, and their mean ÷ ``limit``; ``min`` is the worst endpoint's."""
    by_endpoint: dict[str, Any] = {}
    for endpoint in ENDPOINTS:
        rates: dict[str, float | None] = {}
        spans: dict[str, int] = {}
        for mchid in mchids:
            series = admitted.get(endpoint, {}).get(mchid, {})
            window = backlog_seconds(series)
            spans[mchid] = len(window)
            rates[mchid] = (
                sum(series.get(str(s), 0) for s in window) / len(window) if window else None
            )
        known = [r for r in rates.values() if r is not None]
        by_endpoint[endpoint] = {
            "sustained_per_merchant": {
                m: None if r is None else round(r, 2) for m, r in rates.items()
            },
            "backlog_seconds": spans,
            "efficiency": round(sum(known) / len(known) / limit, 3) if known else None,
            "worst_merchant_efficiency": round(min(known) / limit, 3) if known else None,
        }
    found = [v["efficiency"] for v in by_endpoint.values() if v["efficiency"] is not None]
    return {"limit": limit, "by_endpoint": by_endpoint, "min": min(found) if found else None}

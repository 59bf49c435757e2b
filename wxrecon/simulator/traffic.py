"""Traffic accounting: the provider's rate limit and the statistics tests read back.

The limit is a sliding one-second window per (endpoint, target mchid) over admitted requests:
the 101st request inside any one second is refused. Peaks count every request that named a
target merchant, admitted or not, so a benchmark can see how hard a client pushed. Admitted
requests are also counted per whole second of the clock (``admitted_per_second``), so a
benchmark can tell the rate sustained while a backlog lasts from the edges of a phase.
"""

from __future__ import annotations

import threading
from collections import Counter, defaultdict, deque
from typing import Any

WINDOW = 1.0


class _Window:
    __slots__ = ("times",)

    def __init__(self) -> None:
        self.times: deque[float] = deque()

    def add(self, now: float) -> int:
        times = self.times
        times.append(now)
        edge = now - WINDOW
        while times[0] <= edge:
            times.popleft()
        return len(times)

    def count(self, now: float) -> int:
        times = self.times
        edge = now - WINDOW
        while times and times[0] <= edge:
            times.popleft()
        return len(times)


class Traffic:
    def __init__(self, limit: int = 100) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._admitted: defaultdict[tuple[str, str], _Window] = defaultdict(_Window)
        self._seen: defaultdict[tuple[str, str], _Window] = defaultdict(_Window)
        self._seen_any: defaultdict[str, _Window] = defaultdict(_Window)
        self._peak_endpoint: Counter[str] = Counter()
        self._peak_endpoint_mchid: dict[str, str] = {}
        self._peak_overall = 0
        self._peak_overall_mchid: str | None = None
        self._requests: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._faults: Counter[str] = Counter()
        # (endpoint, mchid) -> whole second of the clock -> admitted requests
        self._per_second: defaultdict[tuple[str, str], Counter[int]] = defaultdict(Counter)

    def arrive(self, endpoint: str, mchid: str, now: float) -> bool:
        """Record a request for ``mchid`` and say whether the rate limit admits it."""
        with self._lock:
            n = self._seen[(endpoint, mchid)].add(now)
            if n > self._peak_endpoint[endpoint]:
                self._peak_endpoint[endpoint] = n
                self._peak_endpoint_mchid[endpoint] = mchid
            n = self._seen_any[mchid].add(now)
            if n > self._peak_overall:
                self._peak_overall = n
                self._peak_overall_mchid = mchid
            window = self._admitted[(endpoint, mchid)]
            if self.limit > 0 and window.count(now) >= self.limit:
                return False
            window.add(now)
            self._per_second[(endpoint, mchid)][int(now)] += 1
            return True

    def answered(self, endpoint: str, outcome: str) -> None:
        """``outcome`` is the HTTP status, or ``reset`` / ``hang`` when none was sent."""
        with self._lock:
            self._requests[endpoint][outcome] += 1

    def fault(self, kind: str) -> None:
        with self._lock:
            self._faults[kind] += 1

    def reset(self) -> None:
        with self._lock:
            self._admitted.clear()
            self._seen.clear()
            self._seen_any.clear()
            self._peak_endpoint.clear()
            self._peak_endpoint_mchid.clear()
            self._peak_overall = 0
            self._peak_overall_mchid = None
            self._requests.clear()
            self._faults.clear()
            self._per_second.clear()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": {ep: dict(c) for ep, c in self._requests.items()},
                "requests_total": sum(sum(c.values()) for c in self._requests.values()),
                "faults": dict(self._faults),
                "faults_total": sum(self._faults.values()),
                "peak_per_second": {
                    "overall": self._peak_overall,
                    "overall_mchid": self._peak_overall_mchid,
                    "by_endpoint": dict(self._peak_endpoint),
                    "by_endpoint_mchid": dict(self._peak_endpoint_mchid),
                },
                "rate_limit": self.limit,
            }

    def admitted_per_second(self) -> dict[str, dict[str, dict[str, int]]]:
        """endpoint -> mchid -> {whole second (as text, for JSON): admitted requests}."""
        with self._lock:
            out: dict[str, dict[str, dict[str, int]]] = {}
            for (endpoint, mchid), seconds in self._per_second.items():
                out.setdefault(endpoint, {})[mchid] = {str(s): n for s, n in seconds.items()}
            return out

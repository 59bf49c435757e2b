"""The admin API (``/_sim/...``): a table of (method, path) -> handler.

Every handler takes ``(now, params, data)`` and returns ``(status, JSON)``; bad input raises
ValueError, which the HTTP handler turns into a 400 with a one-line error.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from wxrecon.simulator import material
from wxrecon.simulator.faults import FaultRule

if TYPE_CHECKING:
    from wxrecon.simulator.server import Simulator

Answer = tuple[int, Any]
Handler = Callable[[float, dict[str, str], Any], Answer]

TIMING_SETTINGS = ("latency", "hang", "idle_timeout")
RESETTABLE = ("books", "stats", "faults")
MAX_ADJUST = 10**12  # fen: an adjustment's bound either way


def _bad(message: str) -> Any:
    raise ValueError(message)


def _rows(data: Any, plural: str, singular: str) -> list[Any]:
    """``{"ledgers": [...]}``, one object, or a bare list."""
    rows = data.get(plural, [data]) if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise ValueError(f'expected a {singular} object or {{"{plural}": [...]}}')
    return rows


def _non_negative(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{name} must be a non-negative number")
    return float(value)


def _rate_limit(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("rate_limit must be a non-negative integer (0: unlimited)")
    return value


class AdminApi:
    """The admin routes of one ``Simulator``."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.routes: dict[tuple[str, str], Handler] = {
            ("GET", "/_sim/health"): self.health,
            ("GET", "/_sim/ledgers"): self.get_ledgers,
            ("POST", "/_sim/ledgers"): self.set_ledgers,
            ("POST", "/_sim/ledgers/adjust"): self.adjust_ledger,
            ("GET", "/_sim/reductions"): self.get_reductions,
            ("GET", "/_sim/bills"): self.get_bills,
            ("POST", "/_sim/bills"): self.seed_bills,
            ("GET", "/_sim/faults"): self.get_faults,
            ("POST", "/_sim/faults"): self.set_faults,
            ("GET", "/_sim/config"): self.get_config,
            ("POST", "/_sim/config"): self.set_config,
            ("GET", "/_sim/stats"): self.get_stats,
            ("GET", "/_sim/stats/seconds"): self.get_seconds,
            ("POST", "/_sim/clock"): self.advance_clock,
            ("POST", "/_sim/reset"): self.reset,
        }

    def request(self, method: str, path: str, params: dict[str, str], data: Any) -> Answer:
        """Answer one admin call; raises ValueError (→ 400) on bad input."""
        handler = self.routes.get((method, path.rstrip("/")))
        if handler is None:
            return 404, {"error": f"no admin route {method} {path}"}
        return handler(time.time(), params, data)

    # -- routes ---------------------------------------------------------------------------

    def health(self, now: float, params: dict[str, str], data: Any) -> Answer:
        return 200, {"ok": True, "mchid": self.sim.keys.merchant_mchid, "url": self.sim.url}

    def get_ledgers(self, now: float, params: dict[str, str], data: Any) -> Answer:
        found = self.sim.books.ledgers(now, params.get("mchid"), params.get("bal_account_no"))
        return 200, {"ledgers": found}

    def set_ledgers(self, now: float, params: dict[str, str], data: Any) -> Answer:
        seeds = [
            material.LedgerSeed.create(r.get("mchid"), r.get("bal_account_no"), r.get("balance"))
            if isinstance(r, dict)
            else _bad("a ledger is a JSON object")
            for r in _rows(data, "ledgers", "ledger")
        ]
        books = self.sim.books
        done = [books.set_ledger(s.mchid, s.bal_account_no, s.balance) for s in seeds]
        return 200, {"ledgers": done}

    def adjust_ledger(self, now: float, params: dict[str, str], data: Any) -> Answer:
        """``{"mchid", "bal_account_no", "amount"}``: credit (amount > 0) or debit (< 0) a
        ledger in fen, outside any order."""
        if not isinstance(data, dict):
            return _bad("an adjustment is a JSON object")
        amount = data.get("amount")
        if isinstance(amount, bool) or not isinstance(amount, int) or amount == 0:
            return _bad("amount must be a non-zero integer number of fen")
        if abs(amount) > MAX_ADJUST:
            return _bad(f"amount must be at most {MAX_ADJUST} fen either way")
        seed = material.LedgerSeed.create(data.get("mchid"), data.get("bal_account_no"), 0)
        done = self.sim.books.adjust_ledger(now, seed.mchid, seed.bal_account_no, amount)
        return 200, {"ledger": done}

    def get_reductions(self, now: float, params: dict[str, str], data: Any) -> Answer:
        return 200, {"reductions": self.sim.books.reductions(now, params.get("out_request_no"))}

    def get_bills(self, now: float, params: dict[str, str], data: Any) -> Answer:
        return 200, {"bills": self.sim.books.bills(now)}

    def seed_bills(self, now: float, params: dict[str, str], data: Any) -> Answer:
        rows = _rows(data, "bills", "bill")
        # A seeded bill is the platform merchant's, when there is one (its sp_mchid).
        mchid = self.sim.dir.sp_mchid or self.sim.keys.merchant_mchid
        return 200, {"bills": [self.sim.books.seed_bill(now, r, mchid) for r in rows]}

    def get_faults(self, now: float, params: dict[str, str], data: Any) -> Answer:
        return 200, {"rules": self.sim.faults.rules()}

    def set_faults(self, now: float, params: dict[str, str], data: Any) -> Answer:
        if not isinstance(data, dict):
            raise ValueError('expected {"rules": [...], "mode": "replace"|"add"}')
        raw = data.get("rules", [])
        if not isinstance(raw, list):
            raise ValueError("rules must be a list")
        rules = [FaultRule.from_json(r) for r in raw]
        modes = {"replace": self.sim.faults.replace, "add": self.sim.faults.add}
        mode = data.get("mode", "replace")
        apply = modes.get(mode) if isinstance(mode, str) else None
        if apply is None:
            raise ValueError("mode is replace or add")
        apply(rules)
        return 200, {"rules": self.sim.faults.rules()}

    def get_config(self, now: float, params: dict[str, str], data: Any) -> Answer:
        return 200, self.config()

    def set_config(self, now: float, params: dict[str, str], data: Any) -> Answer:
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object of settings")
        changes = dict(data)
        raw_limit = changes.pop("rate_limit", None)
        literal = changes.pop("docs_literal", None)
        if literal is not None and not isinstance(literal, bool):
            raise ValueError("docs_literal must be true or false")
        timing = {k: changes.pop(k) for k in TIMING_SETTINGS if k in changes}
        seconds = {name: _non_negative(name, value) for name, value in timing.items()}
        rate_limit = None if raw_limit is None else _rate_limit(raw_limit)
        if changes:
            self.sim.books.set_config(changes)
        if rate_limit is not None:
            self.sim.traffic.limit = rate_limit
        if literal is not None:
            self.sim.provider.docs_literal = literal
        for name, value in seconds.items():
            # idle_timeout belongs to the HTTP server, latency and hang to the fault timing
            setattr(self.sim if name == "idle_timeout" else self.sim.timing, name, value)
        return 200, self.config()

    def get_stats(self, now: float, params: dict[str, str], data: Any) -> Answer:
        return 200, self.sim.traffic.snapshot()

    def get_seconds(self, now: float, params: dict[str, str], data: Any) -> Answer:
        return 200, self.sim.traffic.admitted_per_second()

    def advance_clock(self, now: float, params: dict[str, str], data: Any) -> Answer:
        seconds = data.get("advance") if isinstance(data, dict) else None
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise ValueError('expected {"advance": SECONDS}')
        return 200, {"clock_offset": self.sim.books.advance_clock(float(seconds))}

    def reset(self, now: float, params: dict[str, str], data: Any) -> Answer:
        what = data.get("what", list(RESETTABLE)) if isinstance(data, dict) else None
        if not isinstance(what, list) or not set(what) <= set(RESETTABLE):
            raise ValueError("what is a list of books, stats, faults")
        if "books" in what:
            self.sim.books.reset()
            self.sim.seed_ledgers()
        if "stats" in what:
            self.sim.traffic.reset()
        if "faults" in what:
            self.sim.faults.replace([])
        return 200, {"reset": what}

    # -- views ----------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        sim = self.sim
        return {
            **asdict(sim.books.config),
            "rate_limit": sim.traffic.limit,
            "latency": sim.timing.latency,
            "hang": sim.timing.hang,
            "idle_timeout": sim.idle_timeout,
            "clock_offset": sim.books.clock_offset,
            "cert_mode": sim.keys.cert_mode,
            "docs_literal": sim.provider.docs_literal,
        }

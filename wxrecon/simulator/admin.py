"""A client for the simulator's admin API (``/_sim/…``), for tests, benchmarks and the demo."""

from __future__ import annotations

from typing import Any

import httpx

from wxrecon.simulator.faults import FaultRule


class AdminError(RuntimeError):
    """The admin API refused a call (its one-line ``error`` is the message)."""


def _rule(rule: FaultRule | dict[str, Any] | str) -> dict[str, Any]:
    if isinstance(rule, str):
        rule = FaultRule.parse(rule)
    if isinstance(rule, FaultRule):
        data = rule.to_json()
        data.pop("fired")
        data.pop("seen")
        return data
    return dict(rule)


class AdminClient:
    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(
        self, method: str, path: str, json: Any = None, params: dict[str, str] | None = None
    ) -> Any:
        response = self._http.request(method, f"/_sim/{path}", json=json, params=params)
        try:
            data = response.json()
        except ValueError:
            raise AdminError(f"admin {path}: HTTP {response.status_code}, not JSON") from None
        if response.status_code != 200:
            raise AdminError(f"admin {path}: {data.get('error', response.status_code)}")
        return data

    # -- health -------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return self._call("GET", "health")

    # -- ledgers ------------------------------------------------------------------------

    def seed_ledger(self, mchid: str, bal_account_no: str, balance: int) -> dict[str, Any]:
        """Create a ledger or set its balance (fen); returns its public view."""
        data = {"mchid": mchid, "bal_account_no": bal_account_no, "balance": balance}
        return self._call("POST", "ledgers", data)["ledgers"][0]

    def adjust_ledger(self, mchid: str, bal_account_no: str, amount: int) -> dict[str, Any]:
        """Credit (amount > 0) or debit (< 0) a ledger in fen outside any order."""
        data = {"mchid": mchid, "bal_account_no": bal_account_no, "amount": amount}
        return self._call("POST", "ledgers/adjust", data)["ledger"]

    def ledgers(self) -> list[dict[str, Any]]:
        return self._call("GET", "ledgers")["ledgers"]

    def ledger(self, mchid: str, bal_account_no: str) -> dict[str, Any] | None:
        found = self._call(
            "GET", "ledgers", params={"mchid": mchid, "bal_account_no": bal_account_no}
        )
        return found["ledgers"][0] if found["ledgers"] else None

    def balance(self, mchid: str, bal_account_no: str) -> int:
        found = self.ledger(mchid, bal_account_no)
        if found is None:
            raise AdminError("no such ledger")
        return int(found["balance"])

    # -- bills --------------------------------------------------------------------------

    def seed_bill(
        self, out_bill_no: str, amount: int, outcome: str = "SUCCESS", **spec: Any
    ) -> dict[str, Any]:
        """Seed a compensation bill; ``spec`` may hold close_reason, confirm_after,
        final_after, states, sp_mchid, transfer_remark, sponsor_mchid."""
        data = {"out_bill_no": out_bill_no, "amount": amount, "outcome": outcome, **spec}
        if "states" in spec:
            data.pop("outcome")
        return self._call("POST", "bills", data)["bills"][0]

    def bills(self) -> list[dict[str, Any]]:
        return self._call("GET", "bills")["bills"]

    def bill(self, out_bill_no: str) -> dict[str, Any] | None:
        return next((b for b in self.bills() if b["out_bill_no"] == out_bill_no), None)

    # -- reductions (ground truth) ------------------------------------------------------

    def reductions(self) -> list[dict[str, Any]]:
        return self._call("GET", "reductions")["reductions"]

    def reduction(self, out_request_no: str) -> dict[str, Any] | None:
        found = self._call("GET", "reductions", params={"out_request_no": out_request_no})[
            "reductions"
        ]
        return found[0] if found else None

    # -- faults, config, stats ----------------------------------------------------------

    def set_faults(
        self, *rules: FaultRule | dict[str, Any] | str, mode: str = "replace"
    ) -> list[dict[str, Any]]:
        """Replace (or ``mode="add"``) the fault rules; strings use the CLI syntax
        ``KIND[=PROBABILITY][@ENDPOINT][#TIMES]``."""
        return self._call("POST", "faults", {"rules": [_rule(r) for r in rules], "mode": mode})[
            "rules"
        ]

    def add_fault(
        self,
        kind: str,
        *,
        probability: float = 1.0,
        endpoint: str = "all",
        times: int | None = None,
        every: int | None = None,
        seconds: float | None = None,
    ) -> list[dict[str, Any]]:
        rule = {
            "kind": kind,
            "probability": probability,
            "endpoint": endpoint,
            "times": times,
            "every": every,
            "seconds": seconds,
        }
        return self.set_faults(rule, mode="add")

    def clear_faults(self) -> None:
        self.set_faults()

    def faults(self) -> list[dict[str, Any]]:
        return self._call("GET", "faults")["rules"]

    def set_config(self, **changes: Any) -> dict[str, Any]:
        """settle_delay_min/max, fail_rate, fail_reason, bill_confirm_after, bill_final_after,
        reentry_window, rate_limit, latency, hang, idle_timeout."""
        return self._call("POST", "config", changes)

    def config(self) -> dict[str, Any]:
        return self._call("GET", "config")

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "stats")

    def admitted_per_second(self) -> dict[str, dict[str, dict[str, int]]]:
        """endpoint -> target mchid -> {whole second: requests admitted} since the stats reset."""
        seconds: dict[str, dict[str, dict[str, int]]] = self._call("GET", "stats/seconds")
        return seconds

    def advance_clock(self, seconds: float) -> float:
        return float(self._call("POST", "clock", {"advance": seconds})["clock_offset"])

    def reset(self, *what: str) -> None:
        """Reset ``books`` (back to the seeded ledgers), ``stats`` and ``faults`` (default: all)."""
        self._call("POST", "reset", {"what": list(what)} if what else {})

"""Fault injection: rules, their parsing, and the draw made for each request.

A rule names a kind, the endpoint it targets (or ``all``), a probability or a schedule
(``every``: the Nth, 2Nth, … matching request) and optionally how many times it may fire
(``times``: a rule with ``times=1`` and probability 1 fires on exactly the next matching
request, which is how tests target one call).

Faults act at three points of a request:

- before anything is checked (``PRE_KINDS``): added latency, a hang, a reset connection, a
  500 SYSTEM_ERROR or a 429 FREQUENCY_LIMITED. The request has no effect.
- on a 2xx answer (``SIGNED_KINDS``): a bad signature, a ``WECHATPAY/SIGNTEST/`` signature, a
  stale timestamp, or a malformed JSON body (correctly signed). A POST has taken effect.
- after the request took effect, whatever the answer (``APPLY_THEN_KINDS``): the client gets a
  500, a reset or a hang instead of the answer.
- on the JSON of a 2xx answer, before it is signed (``SHAPE_KINDS``): ``docs_literal`` reshapes
  the true answer the way the provider's pages show answers (see :mod:`.docs_literal`).
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from wxrecon.wechatpay.client import Endpoint


class FaultKind(StrEnum):
    LATENCY = "latency"
    HANG = "hang"
    RESET = "reset"
    SYSTEM_ERROR = "system_error"
    RATE_LIMITED = "rate_limited"
    BAD_SIGNATURE = "bad_signature"
    SIGNTEST = "signtest"
    STALE_TIMESTAMP = "stale_timestamp"
    MALFORMED_JSON = "malformed_json"
    APPLY_THEN_500 = "apply_then_500"
    APPLY_THEN_RESET = "apply_then_reset"
    APPLY_THEN_HANG = "apply_then_hang"
    DOCS_LITERAL = "docs_literal"


PRE_KINDS = (
    FaultKind.LATENCY,
    FaultKind.HANG,
    FaultKind.RESET,
    FaultKind.SYSTEM_ERROR,
    FaultKind.RATE_LIMITED,
)
SIGNED_KINDS = (
    FaultKind.BAD_SIGNATURE,
    FaultKind.SIGNTEST,
    FaultKind.STALE_TIMESTAMP,
    FaultKind.MALFORMED_JSON,
)
APPLY_THEN_KINDS = (FaultKind.APPLY_THEN_500, FaultKind.APPLY_THEN_RESET, FaultKind.APPLY_THEN_HANG)
SHAPE_KINDS = (FaultKind.DOCS_LITERAL,)

ALL = "all"
ENDPOINTS = (ALL, *(e.value for e in Endpoint))


class FaultSpecError(ValueError):
    pass


def _kind(value: object) -> FaultKind:
    if isinstance(value, str) and value in FaultKind.__members__.values():
        return FaultKind(value)
    raise FaultSpecError(f"unknown fault kind {str(value)[:40]!r} (one of {', '.join(FaultKind)})")


@dataclass
class FaultRule:
    kind: FaultKind
    probability: float = 1.0
    endpoint: str = ALL
    times: int | None = None  # fire at most this many times, then stay quiet
    every: int | None = None  # deterministic schedule: fire on every Nth matching request
    seconds: float | None = None  # latency/hang duration; None: the simulator's default
    fired: int = 0
    seen: int = 0

    def __post_init__(self) -> None:
        self.kind = _kind(self.kind)
        if isinstance(self.probability, bool) or not isinstance(self.probability, int | float):
            raise FaultSpecError("fault probability must be a number")
        if not 0 <= self.probability <= 1:
            raise FaultSpecError("fault probability must be between 0 and 1")
        if self.endpoint not in ENDPOINTS:
            raise FaultSpecError(
                f"unknown endpoint {self.endpoint[:40]!r} (one of {', '.join(ENDPOINTS)})"
            )
        if self.times is not None and (
            isinstance(self.times, bool) or not isinstance(self.times, int) or self.times < 0
        ):
            raise FaultSpecError("fault times must be a non-negative integer")
        if self.every is not None and (
            isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1
        ):
            raise FaultSpecError("fault every must be a positive integer")
        if self.seconds is not None and (
            isinstance(self.seconds, bool)
            or not isinstance(self.seconds, int | float)
            or self.seconds < 0
        ):
            raise FaultSpecError("fault seconds must be a non-negative number")

    @classmethod
    def from_json(cls, data: object) -> FaultRule:
        if not isinstance(data, dict):
            raise FaultSpecError("a fault rule is a JSON object")
        allowed = {"kind", "probability", "endpoint", "times", "every", "seconds"}
        unknown = set(data) - allowed
        if unknown:
            raise FaultSpecError(f"unknown fault field {sorted(unknown)[0]!r}")
        if "kind" not in data:
            raise FaultSpecError("a fault rule needs a kind")
        return cls(
            kind=_kind(data["kind"]),
            probability=data.get("probability", 1.0),
            endpoint=data.get("endpoint", ALL),
            times=data.get("times"),
            every=data.get("every"),
            seconds=data.get("seconds"),
        )

    @classmethod
    def parse(cls, spec: str) -> FaultRule:
        """``KIND[=PROBABILITY|=1/N][@ENDPOINT][#TIMES]``, e.g. ``reset=0.05@submit_reduction``;
        ``=1/N`` fires on every Nth matching request instead of at random."""
        text = spec.strip()
        times = None
        if "#" in text:
            text, _, raw_times = text.partition("#")
            if not raw_times.isdigit():
                raise FaultSpecError(f"fault {spec!r}: #TIMES must be a whole number")
            times = int(raw_times)
        endpoint = ALL
        if "@" in text:
            text, _, endpoint = text.partition("@")
        probability = 1.0
        every = None
        if "=" in text:
            text, _, raw_p = text.partition("=")
            if raw_p.startswith("1/"):  # "one in N": every Nth matching request
                if not raw_p[2:].isdigit() or int(raw_p[2:]) < 1:
                    raise FaultSpecError(f"fault {spec!r}: 1/N needs a whole N of at least 1")
                every = int(raw_p[2:])
            else:
                try:
                    probability = float(raw_p)
                except ValueError:
                    raise FaultSpecError(f"fault {spec!r}: probability must be a number") from None
        return cls(
            kind=_kind(text.strip()),
            probability=probability,
            endpoint=endpoint.strip(),
            times=times,
            every=every,
        )

    def matches(self, endpoint: str) -> bool:
        return self.endpoint in (ALL, endpoint)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "probability": self.probability,
            "endpoint": self.endpoint,
            "times": self.times,
            "every": self.every,
            "seconds": self.seconds,
            "fired": self.fired,
            "seen": self.seen,
        }


class FaultPlan:
    """The active rules; ``draw`` is thread-safe and counts what fires."""

    def __init__(self, rules: list[FaultRule] | None = None, *, seed: int | None = None) -> None:
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._rules = list(rules or [])

    def replace(self, rules: list[FaultRule]) -> None:
        with self._lock:
            self._rules = list(rules)

    def add(self, rules: list[FaultRule]) -> None:
        with self._lock:
            self._rules.extend(rules)

    def rules(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r.to_json() for r in self._rules]

    def draw(self, endpoint: str, kinds: tuple[FaultKind, ...]) -> list[FaultRule]:
        """Rules among ``kinds`` that fire for this request, in rule order.

        Latency adds up; of the other kinds only the first that fires acts (and is counted).
        """
        fired: list[FaultRule] = []
        with self._lock:
            if not self._rules:
                return fired
            for rule in self._rules:
                if rule.kind not in kinds or not rule.matches(endpoint):
                    continue
                if rule.times is not None and rule.fired >= rule.times:
                    continue
                rule.seen += 1
                if rule.every is not None:
                    fires = rule.seen % rule.every == 0
                else:
                    fires = rule.probability >= 1 or self._rng.random() < rule.probability
                if fires:
                    rule.fired += 1
                    fired.append(rule)
                    if rule.kind is not FaultKind.LATENCY:
                        break
        return fired

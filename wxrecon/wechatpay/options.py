"""The client's options: endpoints, hooks, retries and timeouts."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import tenacity

from wxrecon.wechatpay.errors import TransientError

log = logging.getLogger("wxrecon.wechatpay.client")


class Endpoint(StrEnum):
    """Rate-limit and metrics label for each call."""

    SUBMIT_REDUCTION = "submit_reduction"
    QUERY_REDUCTION = "query_reduction"
    QUERY_BALANCE = "query_balance"
    QUERY_BILL = "query_bill"


# Called before every attempt with (endpoint, target mchid), right before it is signed and
# sent; may block, or raise Throttled. A hook may also have ``ready(endpoint, mchid)``, called
# before the call's encrypted fields are built: it may raise what the hook would, knowing
# without a round trip (the rate limiter's remembered refusal).
BeforeRequest = Callable[[Endpoint, str], None]
# Called after every attempt with (endpoint, outcome label, seconds).
Observer = Callable[[Endpoint, str, float], None]
# Called for every failed attempt, retried or not, with (endpoint, error kind).
ErrorObserver = Callable[[Endpoint, str], None]


@dataclass(frozen=True)
class RetryPolicy:
    """In-call retries for transient failures; the engine's own backoff takes over after."""

    attempts: int = 3
    initial_wait: float = 0.2
    max_wait: float = 2.0


@dataclass(frozen=True)
class Timeouts:
    connect: float = 3.0
    read: float = 10.0  # the longest silence while sending or reading
    # The provider drops idle keep-alive connections after 8 s; retire ours before that.
    keepalive_expiry: float = 5.0
    # One attempt's whole time: pool wait, connect, send and the entire read. None: connect +
    # read, so a server dribbling a byte at a time cannot hold a call past that.
    total: float | None = None

    @property
    def deadline(self) -> float:
        return self.total if self.total is not None else self.connect + self.read


def retrying(policy: RetryPolicy, sleep: Callable[[float], None] = time.sleep) -> tenacity.Retrying:
    """In-call retries of transient failures with bounded, jittered waits. Built once per
    client: tenacity keeps per-call state in thread-locals, so one object serves all."""
    return tenacity.Retrying(
        stop=tenacity.stop_after_attempt(max(1, policy.attempts)),
        wait=tenacity.wait_random_exponential(multiplier=policy.initial_wait, max=policy.max_wait),
        retry=tenacity.retry_if_exception_type(TransientError),
        before_sleep=_log_retry,
        sleep=sleep,
        reraise=True,
    )


def _log_retry(retry_state: tenacity.RetryCallState) -> None:
    outcome = retry_state.outcome
    error = outcome.exception() if outcome is not None else None
    log.info(
        "attempt %d failed (%s); retrying in %.2fs",
        retry_state.attempt_number,
        error,
        retry_state.upcoming_sleep,
    )

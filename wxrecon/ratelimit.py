"""Per (endpoint, target merchant) rate limiting shared by every worker process.

The provider allows 100 requests per second per target merchant and endpoint, counted over any
one-second window. The submit and query pages each say "单特殊减额目标商户号100qps", which may
also be read as one budget per target merchant for both: ``scope="merchant"`` (the setting
``WXRECON_RATE_LIMIT_SCOPE``) puts a merchant's submits and queries under one key.

A token bucket of capacity N lets 2N through in some windows (a full bucket
plus a second of refill), so this is a sliding-window log instead: at most ``rate`` grants in
any ``window`` seconds. The window is a little longer than a second (the guard,
``WXRECON_RATE_LIMIT_GUARD``) because requests granted 1.000 s apart can arrive at the
provider closer together than that. The guard caps the rate at ``rate / (1 + guard)``: 20 ms
(0.980 of the limit) covers the jitter of a loaded two-core host on loopback (docs/
benchmarks.md); a request that still arrives early is refused with a 429, which costs a retry
and never money.

In Redis the log is a sorted set per key, updated by one Lua script using the Redis server's
clock, so every process on every host shares one clock and one count. Orders handed back to
wait for a grant are booked on the key's line by another script (``book``): docs/design.md,
"Waiting for a grant".
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import redis

from wxrecon import metrics, putback
from wxrecon.config import REDIS_SCHEMES
from wxrecon.wechatpay.client import BeforeRequest, Endpoint
from wxrecon.wechatpay.errors import NotYet, Throttled

log = logging.getLogger(__name__)

Scope = Literal["endpoint", "merchant"]
SCOPES: tuple[Scope, ...] = ("endpoint", "merchant")
# The endpoints the "单特殊减额目标商户号100qps" budget may be shared by, and its key's name.
SPECIAL_REDUCTION = frozenset({Endpoint.SUBMIT_REDUCTION, Endpoint.QUERY_REDUCTION})
SHARED_KEY = "special_reduction"

DEFAULT_GUARD = 0.02  # seconds added to the one-second window (the setting's default)
REDIS_DOWN_RETRY = 1.0  # with no limiter there is no permission: defer, never send unmetered


class RateLimiter(Protocol):
    rate: int
    window: float

    def acquire(self, key: str) -> float:
        """Take a grant: 0.0 on success, else the seconds until one may be free (none taken)."""
        ...

    def book(self, key: str, n: int, after: float, horizon: float) -> Booking:
        """Book ``n`` turns on ``key``'s line, one every ``window / rate`` seconds, from
        ``after`` seconds on or after the turns booked already, as many of them as begin
        within ``horizon`` seconds (``Booking.count``). A booking grants nothing
        (each call still takes its grant); it spreads the orders handed back by every
        process over the budget's time, so they do not all wake for the same grant and
        ask again in turn (docs/design.md, "Waiting for a grant")."""
        ...


@dataclass(frozen=True)
class Booking:
    """Turns booked on a budget's line, in seconds from now: where the line began (its
    windows of ``rate`` turns start there), this booking's first turn, a turn's length, and
    how many turns it holds (those asked for that began within the horizon)."""

    origin: float
    first: float
    spacing: float
    count: int


def within(first: float, n: int, spacing: float, horizon: float) -> int:
    """How many of ``n`` turns from ``first`` on begin within ``horizon`` (all in seconds)."""
    return max(0, min(n, int((horizon - first) / spacing) + 1)) if first <= horizon else 0


def booked_groups(booking: Booking, rate: int) -> list[tuple[float, range]]:
    """The orders of ``booking`` in groups by the line's window their turns fall in,
    each due when its window starts (not before now). The orders of a window take their
    grants as it starts, so those are free again as the next one starts; and a window's
    groups, from every process, are ``rate`` orders at most."""
    start = round((booking.first - booking.origin) / booking.spacing)  # turns before ours
    width = rate * booking.spacing
    groups: list[tuple[float, range]] = []
    j, n = 0, booking.count
    while j < n:
        window = (start + j) // rate
        end = min(n, (window + 1) * rate - start)
        groups.append((max(booking.origin + window * width, 0.0), range(j, end)))
        j = end
    return groups


class LocalRateLimiter:
    """The same sliding-window log in one process (the server-less demo, tests)."""

    def __init__(
        self,
        rate: int,
        window: float = 1.0 + DEFAULT_GUARD,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.window = window
        self.clock = clock
        self._logs: dict[str, deque[float]] = {}
        self._lines: dict[str, tuple[float, float]] = {}  # key -> (origin, next free turn)
        self._lock = threading.Lock()

    def acquire(self, key: str) -> float:
        with self._lock:
            now = self.clock()
            grants = self._logs.setdefault(key, deque())
            while grants and grants[0] <= now - self.window:
                grants.popleft()
            if len(grants) < self.rate:
                grants.append(now)
                return 0.0
            return max(grants[0] + self.window - now, 0.001)

    def book(self, key: str, n: int, after: float, horizon: float) -> Booking:
        spacing = self.window / self.rate
        with self._lock:
            now = self.clock()
            origin, first = self._lines.get(key, (0.0, 0.0))
            if first < now + after:  # the line ran dry: a new one from the earliest grant
                origin = first = now + after
            count = within(first - now, n, spacing, horizon)
            if count:
                self._lines[key] = (origin, first + count * spacing)
            return Booking(origin - now, first - now, spacing, count)


# KEYS[1]: the log. ARGV: rate, window in microseconds, a unique member.
# Returns 0 when granted, else the microseconds until the oldest grant leaves the window.
_SLIDING_WINDOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local rate = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < rate then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000) + 1000)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = tonumber(oldest[2]) + window - now
if wait < 1000 then wait = 1000 end
return wait
"""


# KEYS[1]: the key's line, a hash: where it began and its next free turn (microseconds of
# the server's clock). ARGV: turns, microseconds a turn, microseconds from now to the
# earliest turn, to the horizon. Books the turns that begin within the horizon; returns the
# line's start and the first turn, from now, and how many turns it booked (``within``).
_BOOK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local spacing = tonumber(ARGV[2])
local earliest = now + tonumber(ARGV[3])
local line = redis.call('HMGET', KEYS[1], 'origin', 'next')
local origin, first = tonumber(line[1]), tonumber(line[2])
if not first or first < earliest then
  origin, first = earliest, earliest
end
local count = 0
local horizon = now + tonumber(ARGV[4])
if first <= horizon then
  count = math.min(tonumber(ARGV[1]), math.floor((horizon - first) / spacing) + 1)
end
if count > 0 then
  local stop = first + count * spacing
  local fmt = string.format
  redis.call('HSET', KEYS[1], 'origin', fmt('%d', origin), 'next', fmt('%d', stop))
  redis.call('PEXPIRE', KEYS[1], math.ceil((stop - now) / 1000) + 1000)
end
return {origin - now, first - now, count}
"""


def _sha(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()  # noqa: S324 (Redis's name for it)


_SCRIPT_SHA = _sha(_SLIDING_WINDOW)
_BOOK_SHA = _sha(_BOOK)


class RedisRateLimiter:
    """The script on one connection of its own (made from the client's settings), sent
    as a bare EVALSHA: through the client's pool, command wrappers and retry layers each
    grant cost three times the CPU. A connection that fails is dropped and made again once
    at once (a grant it may have taken only counts against us); still failing, the call is
    deferred. A process forked with a connection makes its own."""

    def __init__(
        self,
        client: redis.Redis,
        rate: int,
        window: float = 1.0 + DEFAULT_GUARD,
        prefix: str = "wxrecon:rl:",
    ) -> None:
        self.rate = rate
        self.window = window
        self.window_us = int(window * 1_000_000)
        self.prefix = prefix
        self._client = client
        self._conn: Any = None
        self._pid = 0
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._tag = f"{os.getpid()}:{id(self):x}"

    def acquire(self, key: str) -> float:
        member = f"{self._tag}:{next(self._ids)}"
        args = (1, self.prefix + key, self.rate, self.window_us, member)
        wait_us = self._call(_SLIDING_WINDOW, _SCRIPT_SHA, args)
        return REDIS_DOWN_RETRY if wait_us is None else int(wait_us) / 1_000_000

    def book(self, key: str, n: int, after: float, horizon: float) -> Booking:
        spacing_us = -(-self.window_us // self.rate)  # rounded up: a line never runs fast
        us = (max(after, 0.0), horizon)
        args = (1, f"{self.prefix}book:{key}", n, spacing_us, *(int(x * 1_000_000) for x in us))
        spacing = spacing_us / 1_000_000
        line = self._call(_BOOK, _BOOK_SHA, args)
        if line is None:  # no line: a new one from the earliest grant, as if alone
            return Booking(after, after, spacing, within(after, n, spacing, horizon))
        origin_us, first_us, count = line
        return Booking(origin_us / 1_000_000, first_us / 1_000_000, spacing, int(count))

    def _call(self, script: str, sha: str, args: tuple[Any, ...]) -> Any:
        """The script's answer; None when Redis cannot be reached (logged)."""
        with self._lock:
            try:
                try:
                    return self._run(script, sha, args)
                except (redis.ConnectionError, redis.TimeoutError):
                    self._drop()
                    return self._run(script, sha, args)
            except redis.RedisError as exc:
                self._drop()
                log.warning("rate limiter unavailable (%s); deferring", type(exc).__name__)
                return None

    def _run(self, script: str, sha: str, args: tuple[Any, ...]) -> Any:
        if self._conn is None or self._pid != os.getpid():
            self._conn = self._client.connection_pool.make_connection()
            self._pid = os.getpid()
        conn = self._conn
        try:
            conn.send_command("EVALSHA", sha, *args)
            return conn.read_response()
        except redis.exceptions.NoScriptError:  # a fresh or flushed server: load it
            conn.send_command("EVAL", script, *args)
            return conn.read_response()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and self._pid == os.getpid():
            conn.disconnect()


def make_limiter(
    url: str | None, rate_per_second: int, guard: float = DEFAULT_GUARD
) -> RateLimiter:
    """Redis-backed when ``url`` is a Redis URL, else in-process (one worker process only)."""
    if url and url.startswith(REDIS_SCHEMES):
        client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        return RedisRateLimiter(client, rate_per_second, window=1.0 + guard)
    return LocalRateLimiter(rate_per_second, window=1.0 + guard)


def limit_key(endpoint: Endpoint, mchid: str, scope: Scope = "endpoint") -> str:
    """The budget a call counts against: its endpoint's for the target merchant, or with
    ``scope="merchant"`` one shared by a merchant's special-reduction submits and queries
    (the balance and bill queries keep their own either way)."""
    if scope == "merchant" and endpoint in SPECIAL_REDUCTION:
        return f"{SHARED_KEY}:{mchid}"
    return f"{endpoint}:{mchid}"


MAX_REMEMBERED = 10_000  # budgets whose next grant a process remembers, at most


def rate_limit_hook(
    limiter: RateLimiter,
    *,
    max_wait: float,
    scope: Scope = "endpoint",
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> BeforeRequest:
    """The client's ``before_request``: wait for a grant up to ``max_wait`` seconds in all,
    then give up with Throttled so the caller reschedules without spending an attempt;
    inside ``putback.putting_back()``, raise NotYet at once instead of waiting."""
    if scope not in SCOPES:
        raise ValueError(f"rate limit scope must be one of {', '.join(SCOPES)}")
    return _Hook(limiter, max_wait, scope, sleep, clock)


class _Hook:
    """A refusal says when the budget's oldest grant leaves the window, and no grant can be
    free before then (other processes only take more), so until then this process answers
    NotYet without asking: a chunk of a saturated merchant's orders costs one round trip to
    the limiter, not one per order, and ``ready`` (before the client encrypts anything)
    spares the encryption too."""

    def __init__(
        self,
        limiter: RateLimiter,
        max_wait: float,
        scope: Scope,
        sleep: Callable[[float], None],
        clock: Callable[[], float],
    ) -> None:
        self.limiter, self.max_wait, self.scope = limiter, max_wait, scope
        self.sleep, self.clock = sleep, clock
        self.not_before: dict[str, float] = {}  # key -> this process's clock at a free grant

    def ready(self, endpoint: Endpoint, mchid: str) -> None:
        """Inside a chunk's turns, NotYet while a refusal is remembered; else nothing."""
        if putback.on():
            key = limit_key(endpoint, mchid, self.scope)
            wait = self._left(key)
            if wait > 0:
                raise NotYet(wait, key, str(endpoint))

    def _left(self, key: str) -> float:
        """Seconds until a remembered refusal of ``key`` may have a grant free (≤ 0: none)."""
        return self.not_before.get(key, 0.0) - self.clock()

    def __call__(self, endpoint: Endpoint, mchid: str) -> None:
        key = limit_key(endpoint, mchid, self.scope)
        waited = 0.0
        while True:
            wait = self._left(key)
            if wait <= 0:
                wait = self.limiter.acquire(key)
                if wait <= 0:
                    metrics.count_ratelimit_wait(endpoint, waited, deferred=False)
                    return
                if len(self.not_before) >= MAX_REMEMBERED:
                    self.not_before.clear()
                self.not_before[key] = self.clock() + wait
            if putback.on():
                raise NotYet(wait, key, str(endpoint))
            if waited + wait > self.max_wait:
                metrics.count_ratelimit_wait(endpoint, waited, deferred=True)
                raise Throttled(wait, key)
            self.sleep(wait)
            waited += wait

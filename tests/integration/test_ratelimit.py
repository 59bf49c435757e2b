"""The shared rate limiter: the sliding-window rule, the hook, and real Redis across processes."""

from __future__ import annotations

import math
import multiprocessing
import random
import time
import uuid
from collections.abc import Iterable
from typing import Any

import pytest
import redis

from wxrecon.putback import putting_back
from wxrecon.ratelimit import (
    REDIS_DOWN_RETRY,
    Booking,
    LocalRateLimiter,
    RedisRateLimiter,
    booked_groups,
    limit_key,
    make_limiter,
    rate_limit_hook,
    within,
)
from wxrecon.wechatpay.client import Endpoint
from wxrecon.wechatpay.errors import NotYet, Throttled


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def max_in_window(times: Iterable[float], window: float = 1.0) -> int:
    """The largest number of events inside any half-open window of ``window`` seconds."""
    ordered = sorted(times)
    best = lo = 0
    for hi, t in enumerate(ordered):
        while ordered[lo] <= t - window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def test_max_in_window_counts_the_densest_second() -> None:
    assert max_in_window([0.0, 0.5, 0.99, 1.0, 1.5]) == 3
    assert max_in_window([]) == 0


def test_local_limiter_grants_rate_then_says_how_long_to_wait() -> None:
    clock = FakeClock()
    limiter = LocalRateLimiter(3, window=1.0, clock=clock)
    assert [limiter.acquire("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    clock.now += 0.25
    wait = limiter.acquire("k")
    assert wait == pytest.approx(0.75)
    clock.now += wait
    assert limiter.acquire("k") == 0.0


def test_local_limiter_keys_are_independent() -> None:
    limiter = LocalRateLimiter(1, window=1.0, clock=FakeClock())
    assert limiter.acquire("submit_reduction:1") == 0.0
    assert limiter.acquire("submit_reduction:2") == 0.0
    assert limiter.acquire("query_reduction:1") == 0.0
    assert limiter.acquire("submit_reduction:1") > 0


def test_local_limiter_never_exceeds_rate_in_any_window() -> None:
    clock = FakeClock()
    limiter = LocalRateLimiter(100, window=1.05, clock=clock)
    granted = []
    for step in range(5000):
        clock.now = 1000.0 + step * 0.0007  # callers far faster than the limit
        if limiter.acquire("k") == 0.0:
            granted.append(clock.now)
    assert max_in_window(granted) <= 100
    assert len(granted) > 300  # it refills: ~3.5 s of time passed


def test_hook_waits_then_proceeds_and_defers_past_max_wait() -> None:
    clock = FakeClock()
    limiter = LocalRateLimiter(1, window=1.0, clock=clock)
    slept, sleep = clock.slept, clock.sleep
    hook = rate_limit_hook(limiter, max_wait=2.0, sleep=sleep, clock=clock)
    hook(Endpoint.QUERY_REDUCTION, "1900000001")
    hook(Endpoint.QUERY_REDUCTION, "1900000001")  # waits a full window
    assert slept == [pytest.approx(1.0)]

    impatient = rate_limit_hook(limiter, max_wait=0.1, sleep=sleep, clock=clock)
    with pytest.raises(Throttled) as info:
        impatient(Endpoint.QUERY_REDUCTION, "1900000001")
    assert info.value.retry_after == pytest.approx(1.0)
    assert info.value.key == "query_reduction:1900000001"
    assert not info.value.maybe_sent

    # Inside a chunk's turns: no sleep, NotYet (a Throttled) at once, with the wait.
    slept.clear()
    with putting_back(), pytest.raises(NotYet) as later:
        hook(Endpoint.QUERY_REDUCTION, "1900000001")
    assert slept == [] and later.value.retry_after == pytest.approx(1.0)
    assert later.value.endpoint == "query_reduction"  # the waits' metric label
    assert isinstance(later.value, Throttled) and not later.value.maybe_sent
    clock.now += 1.0
    with putting_back():
        hook(Endpoint.QUERY_REDUCTION, "1900000001")  # a grant free: no NotYet
    with putting_back(False):
        hook(Endpoint.QUERY_REDUCTION, "1900000001")  # off again: it waits
    assert slept == [pytest.approx(1.0)]


class CountingLimiter(LocalRateLimiter):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.asked = 0

    def acquire(self, key: str) -> float:
        self.asked += 1
        return super().acquire(key)


def test_a_refused_budget_is_not_asked_again_before_its_grant_can_be_free() -> None:
    """A saturated merchant's chunk asks the limiter once, not once per order: its refusal
    says when the oldest grant leaves the window, and until then the hook answers NotYet
    itself (with the time left). Other budgets are still asked; so is this one after."""
    clock = FakeClock()
    limiter = CountingLimiter(2, window=1.0, clock=clock)
    slept, sleep = clock.slept, clock.sleep
    hook = rate_limit_hook(limiter, max_wait=2.0, clock=clock, sleep=sleep)
    with putting_back():
        hook(Endpoint.SUBMIT_REDUCTION, "1900000001")
        clock.now += 0.4
        hook(Endpoint.SUBMIT_REDUCTION, "1900000001")
        waits = []
        for _ in range(50):
            with pytest.raises(NotYet) as later:
                hook(Endpoint.SUBMIT_REDUCTION, "1900000001")
            waits.append(later.value.retry_after)
            clock.now += 0.01
        assert limiter.asked == 3  # two grants, one refusal: the other 49 answered here
        with pytest.raises(NotYet):  # what the client asks before it encrypts anything
            hook.ready(Endpoint.SUBMIT_REDUCTION, "1900000001")  # type: ignore[attr-defined]
        hook.ready(Endpoint.SUBMIT_REDUCTION, "1900000002")  # type: ignore[attr-defined]
        assert limiter.asked == 3
        assert waits[0] == pytest.approx(0.6) and waits[-1] == pytest.approx(0.11)
        hook(Endpoint.QUERY_REDUCTION, "1900000001")  # another budget: asked, granted
        hook(Endpoint.SUBMIT_REDUCTION, "1900000002")
        assert limiter.asked == 5
        clock.now += 0.11  # the first grant has left the window
        hook(Endpoint.SUBMIT_REDUCTION, "1900000001")
        assert limiter.asked == 6
        with pytest.raises(NotYet):
            hook(Endpoint.SUBMIT_REDUCTION, "1900000001")
        assert limiter.asked == 7
    hook.ready(Endpoint.SUBMIT_REDUCTION, "1900000001")  # type: ignore[attr-defined]
    # Outside a chunk (ready is silent there) the remembered wait is slept, then the limiter
    # asked once.
    hook(Endpoint.SUBMIT_REDUCTION, "1900000001")
    assert slept == [pytest.approx(0.39)] and limiter.asked == 8
    assert max_in_window(limiter._logs[limit_key(Endpoint.SUBMIT_REDUCTION, "1900000001")]) <= 2


def test_make_limiter_picks_the_backend() -> None:
    assert isinstance(make_limiter(None, 10), LocalRateLimiter)
    assert isinstance(make_limiter("filesystem://", 10), LocalRateLimiter)
    assert isinstance(make_limiter("redis://127.0.0.1:1/0", 10), RedisRateLimiter)


def test_redis_down_defers_instead_of_sending_unmetered() -> None:
    limiter = make_limiter("redis://127.0.0.1:1/0", 10)  # nothing listens on port 1
    assert limiter.acquire("k") == REDIS_DOWN_RETRY


class _Ids:
    """The limiter's member counter, remembering the last id it gave."""

    def __init__(self) -> None:
        self.last = -1

    def __next__(self) -> int:
        self.last += 1
        return self.last


def _hammer(url: str, prefix: str, rate: int, seconds: float, out: Any) -> None:
    client = redis.Redis.from_url(url)
    limiter = RedisRateLimiter(client, rate, prefix=prefix)
    limiter._ids = ids = _Ids()  # type: ignore[assignment]
    hook = rate_limit_hook(limiter, max_wait=10.0)
    log = prefix + limit_key(Endpoint.SUBMIT_REDUCTION, "1900000001")
    granted: list[float | None] = []
    deadline = time.time() + seconds
    while time.time() < deadline:
        hook(Endpoint.SUBMIT_REDUCTION, "1900000001")
        # When the limiter granted it, by the server's clock that the limiter counts on: a
        # time read here, after the grant, carries this process's scheduling delay, and on
        # a loaded machine two such delays 50 ms apart put 51 grants in one second.
        score = client.zscore(log, f"{limiter._tag}:{ids.last}")
        granted.append(None if score is None else score / 1e6)
    out.put(granted)


@pytest.mark.redis
def test_redis_limiter_holds_across_processes(redis_url: str) -> None:
    rate, procs, seconds = 50, 4, 2.5
    prefix = f"test:rl:{uuid.uuid4().hex}:"
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    workers = [
        ctx.Process(target=_hammer, args=(redis_url, prefix, rate, seconds, out))
        for _ in range(procs)
    ]
    for w in workers:
        w.start()
    results = [out.get(timeout=60) for _ in workers]
    for w in workers:
        w.join(timeout=30)
    everything = [t for granted in results for t in granted]
    assert all(granted for granted in results), "every process got some grants"
    assert None not in everything, "every grant found in the limiter's log"
    assert max_in_window(everything) <= rate
    assert len(everything) > rate  # the window slides: more than one second's worth


@pytest.mark.redis
def test_redis_limiter_reports_wait_and_expires_keys(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    prefix = f"test:rl:{uuid.uuid4().hex}:"
    limiter = RedisRateLimiter(client, 2, window=1.0, prefix=prefix)
    assert limiter.acquire("k") == 0.0
    assert limiter.acquire("k") == 0.0
    wait = limiter.acquire("k")
    assert 0 < wait <= 1.0
    assert client.zcard(prefix + "k") == 2
    assert 0 < client.pttl(prefix + "k") <= 2000


@pytest.mark.redis
def test_redis_limiter_survives_a_flushed_script_and_a_killed_connection(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    prefix = f"test:rl:{uuid.uuid4().hex}:"
    limiter = RedisRateLimiter(client, 3, window=5.0, prefix=prefix)
    assert limiter.acquire("k") == 0.0
    client.script_flush()  # the server forgot the script: it is sent again
    assert limiter.acquire("k") == 0.0
    conn = limiter._conn  # the limiter's own connection, and only it (the Redis is shared)
    conn.send_command("CLIENT", "ID")
    client.client_kill_filter(_id=conn.read_response())
    assert limiter.acquire("k") == 0.0  # made again at once
    assert limiter.acquire("k") > 0  # and the count held throughout: 3 grants, no fourth
    assert client.zcard(prefix + "k") == 3


@pytest.mark.parametrize("backend", ["local", "redis"])
def test_the_factory_grants_exactly_the_rate_it_was_given(backend: str, request: Any) -> None:
    """A limiter from ``make_limiter`` grants ``rate`` calls in a window and defers the next
    (a factory that passed on a doubled or a default rate would let twice as many through)."""
    url = request.getfixturevalue("redis_url") if backend == "redis" else None
    limiter = make_limiter(url, 7)
    key = f"factory-{backend}-{uuid.uuid4().hex}"
    waits = [limiter.acquire(key) for _ in range(8)]
    assert waits[:7] == [0.0] * 7
    assert waits[7] > 0


# -- the scope of a budget (issue 18: "单特殊减额目标商户号100qps" on both pages) -----------------


def test_limit_keys_per_endpoint_by_default_and_per_merchant_when_shared() -> None:
    from wxrecon.ratelimit import limit_key

    m = "1900000001"
    assert limit_key(Endpoint.SUBMIT_REDUCTION, m) == f"submit_reduction:{m}"
    assert limit_key(Endpoint.QUERY_REDUCTION, m) == f"query_reduction:{m}"
    submit = limit_key(Endpoint.SUBMIT_REDUCTION, m, "merchant")
    assert submit == limit_key(Endpoint.QUERY_REDUCTION, m, "merchant") == f"special_reduction:{m}"
    assert limit_key(Endpoint.QUERY_REDUCTION, "1900000002", "merchant") != submit
    # The balance and bill queries have budgets of their own in either scope.
    for endpoint in (Endpoint.QUERY_BALANCE, Endpoint.QUERY_BILL):
        assert limit_key(endpoint, m, "merchant") == limit_key(endpoint, m) == f"{endpoint}:{m}"


@pytest.mark.parametrize(("scope", "shared"), [("endpoint", False), ("merchant", True)])
def test_the_scope_decides_whether_submits_and_queries_share_a_budget(
    scope: Any, shared: bool
) -> None:
    limiter = LocalRateLimiter(2, window=1.0, clock=FakeClock())
    hook = rate_limit_hook(limiter, max_wait=0.0, scope=scope)
    m = "1900000001"
    hook(Endpoint.SUBMIT_REDUCTION, m)
    hook(Endpoint.SUBMIT_REDUCTION, m)
    if shared:  # the merchant's two grants are spent: a query now waits for the window
        with pytest.raises(Throttled) as info:
            hook(Endpoint.QUERY_REDUCTION, m)
        assert info.value.key == f"special_reduction:{m}"
    else:
        hook(Endpoint.QUERY_REDUCTION, m)
        hook(Endpoint.QUERY_REDUCTION, m)
        with pytest.raises(Throttled):
            hook(Endpoint.QUERY_REDUCTION, m)
    hook(Endpoint.QUERY_REDUCTION, "1900000002")  # another target merchant: its own budget
    hook(Endpoint.QUERY_BALANCE, m)  # the balance query is never in the shared budget


def test_an_unknown_scope_is_refused() -> None:
    with pytest.raises(ValueError, match="endpoint, merchant"):
        rate_limit_hook(LocalRateLimiter(1), max_wait=0.0, scope="global")  # type: ignore[arg-type]


def test_the_scope_setting_reaches_the_runtime_client(
    monkeypatch: pytest.MonkeyPatch, keys: Any, tmp_path: Any
) -> None:
    from wxrecon import runtime
    from wxrecon.config import Settings, SettingsError

    monkeypatch.chdir(tmp_path)  # no stray .env
    for name, value in keys.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("WXRECON_RATE_LIMIT_PER_SECOND", "1")
    monkeypatch.setenv("WXRECON_RATE_LIMIT_MAX_WAIT", "0")
    monkeypatch.setenv("WXRECON_BROKER_URL", "filesystem://")  # an in-process limiter
    assert Settings().rate_limit_scope == "endpoint"  # the default: per endpoint
    monkeypatch.setenv("WXRECON_RATE_LIMIT_SCOPE", "merchant")
    client = runtime.build_client(Settings())
    try:
        hook = client.before_request  # type: ignore[attr-defined]
        hook(Endpoint.SUBMIT_REDUCTION, "1900000109")
        with pytest.raises(Throttled):
            hook(Endpoint.QUERY_REDUCTION, "1900000109")
    finally:
        client.close()  # type: ignore[attr-defined]
    monkeypatch.setenv("WXRECON_RATE_LIMIT_SCOPE", "everything")
    with pytest.raises((SettingsError, ValueError)):
        Settings()


def test_the_guard_setting_is_the_windows_length_past_a_second(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, redis_url: str
) -> None:
    from wxrecon import runtime
    from wxrecon.config import Settings, SettingsError

    monkeypatch.chdir(tmp_path)  # no stray .env
    assert Settings().rate_limit_guard == 0.02
    monkeypatch.setenv("WXRECON_RATE_LIMIT_GUARD", "250ms")
    monkeypatch.setenv("WXRECON_BROKER_URL", "filesystem://")  # an in-process limiter
    local = runtime.make_shared_limiter(Settings())
    assert isinstance(local, LocalRateLimiter) and local.window == 1.25
    monkeypatch.setenv("WXRECON_BROKER_URL", redis_url)
    shared = runtime.make_shared_limiter(Settings())
    assert isinstance(shared, RedisRateLimiter) and shared.window_us == 1_250_000
    for bad in ("-1", "1s", "soon"):
        monkeypatch.setenv("WXRECON_RATE_LIMIT_GUARD", bad)
        with pytest.raises((SettingsError, ValueError)):
            Settings()


def test_booked_orders_go_in_groups_by_the_window_of_the_line_their_turns_fall_in() -> None:
    # A new line at 0.5 s, 4 turns a window of 1 s: the first 4 then 2 in the next window.
    assert booked_groups(Booking(0.5, 0.5, 0.25, 6), 4) == [(0.5, range(4)), (1.5, range(4, 6))]
    # A line begun 0.6 s ago, its next free turn the fourth of its first window (now past):
    # that one at once, then 4 as the next window starts, and so on.
    assert booked_groups(Booking(-0.6, 0.15, 0.25, 7), 4) == [
        (0.0, range(1)),
        (0.4, range(1, 5)),
        (1.4, range(5, 7)),
    ]


def test_a_line_s_windows_hold_at_most_rate_orders_whoever_booked_them() -> None:
    """Bookings of any sizes with time passing between them (now and then long enough for
    the line to run dry and begin again): no window of a line gets more than ``rate``
    orders in all, and a group is due as its window starts, or at once inside it."""
    rng, clock = random.Random(7), FakeClock()
    limiter = LocalRateLimiter(5, window=1.02, clock=clock)
    per_window: dict[tuple[float, int], int] = {}
    for round_ in range(300):
        n = rng.randint(1, 12)
        booking = limiter.book("k", n, rng.uniform(0.1, 1.0), horizon=3600)
        line, width = round(clock.now + booking.origin, 6), 5 * booking.spacing
        groups = booked_groups(booking, 5)
        assert [j for _, turns in groups for j in turns] == list(range(n))
        for due, turns in groups:
            at = (clock.now + due - line) / width  # windows of the line so far
            k = round(at) if due > 0 else math.floor(at + 1e-6)
            if due > 0:  # due as its window starts
                assert at == pytest.approx(k, abs=1e-5)
            per_window[(line, k)] = per_window.get((line, k), 0) + len(turns)
        clock.now += 60.0 if round_ % 25 == 24 else rng.uniform(0.0, 0.4)
    assert max(per_window.values()) == 5
    assert len({line for line, _ in per_window}) > 5  # lines ran dry and began again


def test_local_bookings_follow_each_other_and_a_stale_line_is_forgotten() -> None:
    clock = FakeClock()
    limiter = LocalRateLimiter(4, window=1.0, clock=clock)
    about = pytest.approx
    assert limiter.book("k", 6, 0.5, 60) == Booking(about(0.5), about(0.5), 0.25, 6)  # to 1.75
    assert limiter.book("k", 2, 0.1, 60) == Booking(about(0.5), about(2.0), 0.25, 2)  # after
    assert limiter.book("other", 1, 0.1, 60) == Booking(about(0.1), about(0.1), 0.25, 1)
    clock.now += 10  # the line is long done: a new one from its own wait
    again = limiter.book("k", 1, 0.3, 60)
    assert again.origin == again.first == pytest.approx(0.3)
    assert limiter.acquire("k") == 0.0  # a booking takes no grant


@pytest.mark.redis
def test_redis_bookings_are_one_line_across_limiters_and_expire(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    prefix = f"test:rl:{uuid.uuid4().hex}:"
    one = RedisRateLimiter(client, 4, window=1.0, prefix=prefix)
    two = RedisRateLimiter(redis.Redis.from_url(redis_url), 4, window=1.0, prefix=prefix)
    first = one.book("k", 6, 0.5, 60)
    assert 0.49 <= first.origin == first.first <= 0.5 and first.spacing == 0.25
    assert first.count == 6
    # The other process's booking starts where the first ends (6 turns of 0.25 s), in the
    # same line, less the moment that passed between the two calls.
    second = two.book("k", 2, 0.1, 60)
    assert 1.9 <= second.first <= 2.0
    assert second.first - second.origin == pytest.approx(1.5)
    assert 0 < client.pttl(prefix + "book:k") <= 3500
    assert one.acquire("k") == 0.0  # a booking takes no grant
    client.delete(prefix + "book:k")
    assert 0.29 <= one.book("k", 1, 0.3, 60).first <= 0.3


def test_a_booking_with_redis_down_is_a_line_of_its_own_from_the_wait() -> None:
    limiter = RedisRateLimiter(redis.Redis.from_url("redis://127.0.0.1:1/0"), 4)
    assert limiter.book("k", 3, 0.4, 60) == Booking(0.4, 0.4, 0.255, 3)


@pytest.mark.parametrize("backend", ["local", "redis"])
def test_a_booking_holds_only_the_turns_that_begin_within_the_horizon(
    backend: str, request: Any
) -> None:
    """4 turns a second, the line's first turn at 0.5 s, a horizon of 1.5 s: the turns at
    0.5, 0.75 … 1.5 (five) are booked of the eight asked; the next booking begins where those
    end, and one with nothing inside its horizon books nothing and leaves the line be."""
    if backend == "redis":
        client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
        prefix = f"test:rl:{uuid.uuid4().hex}:"
        limiter: Any = RedisRateLimiter(client, 4, window=1.0, prefix=prefix)
    else:
        limiter = LocalRateLimiter(4, window=1.0, clock=FakeClock())
    assert limiter.book("k", 8, 0.5, 1.5).count == 5
    assert limiter.book("k", 3, 0.1, 1.0).count == 0  # the line's next turn is at 1.75
    later = limiter.book("k", 3, 0.1, 60)
    assert later.count == 3 and later.first == pytest.approx(1.75, abs=0.02)


def test_within_counts_the_turns_that_begin_by_the_horizon() -> None:
    assert within(0.5, 8, 0.25, 1.5) == 5
    assert within(0.5, 3, 0.25, 60) == 3
    assert within(2.0, 3, 0.25, 1.0) == 0
    assert within(1.0, 3, 0.25, 1.0) == 1

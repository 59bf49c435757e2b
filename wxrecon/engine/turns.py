"""A chunk's orders in turns: one whose rate-limit grant is not free is put back while the
others go on, and a chunk left waiting is handed back (docs/design.md, "Waiting for a
grant"). Pure but for the clock, the sleep and the hand-back it is given."""

from __future__ import annotations

import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable, Collection, Generator, Iterable
from dataclasses import dataclass
from typing import Any

from wxrecon import metrics, putback

Step = Callable[[], "str | Later | None"]  # one order's step of a chunk: returns its state
Steps = Generator[tuple[int, Step], None, None]  # (order id, its step); a Later one again
PATIENCE = 2.0  # seconds an order of a chunk is put back in all, then its call waits
HAND_BACK_AFTER = 0.1  # seconds: a shorter wait of a whole chunk is slept, a longer handed back


@dataclass(frozen=True)
class Waiting:
    """An order of a chunk left waiting for a grant, as it is handed back."""

    id: int
    key: str  # the budget it waits for ("": not known)
    delay: float  # seconds until a grant of it may be free
    unsent: bool  # its first POST has never left


# A chunk's waiting orders, in the order they were put back, to publish again; returns the
# ids it published (the chunk keeps the others and waits for them itself).
HandBack = Callable[[list[Waiting]], Collection[int]]
# Keep these orders' claims until this many seconds from now, and a lease past that; False
# when the database refused (nothing is published then).
Hold = Callable[[list[int], float], bool]
# The same, for a chunk's task: with the row version the hand-back saw of each unsent one,
# and the chunk's Hold.
Publish = Callable[[list[Waiting], dict[int, int], Hold], Collection[int]]


@dataclass(frozen=True)
class Later:
    """A step whose call found no rate-limit grant free: nothing was sent; ``resume``
    carries on from that call after ``wait`` seconds."""

    wait: float
    resume: Callable[[], str | Later | None]
    endpoint: str = ""  # whose budget it waits for (the wait metric's label)
    unsent: bool = False  # the call is the order's first POST: it has never been sent
    key: str = ""  # the rate limiter's key of that budget


def turns(
    pairs: Iterable[tuple[int, Step]],
    patience: float = PATIENCE,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    hand_back: HandBack | None = None,
) -> Steps:
    """Each (order id, step) in turn. A step that returns Later (its merchant's budget is
    spent for now) is put back and comes again when its wait is over, while the others go
    on: one saturated merchant no longer holds a chunk that has others. When every step
    left is waiting, sleep until the first is due, or, for a wait of ``HAND_BACK_AFTER`` or
    more, give the waiting orders to ``hand_back`` and end, so the process serves other
    merchants and endpoints meanwhile (a sleeping chunk held it: bigger chunks starved the
    queries); what it could not publish, the chunk waits for itself. An order put back
    ``patience`` seconds in all makes its call like a lone one (the limiter's own wait, then
    Throttled). The time an order spent put back is counted as rate-limit wait once its call
    is made or it is handed back."""
    fresh = deque(pairs)
    # (due, seq, id, resume, seconds put back, the endpoint waited for, first POST unsent,
    # the limiter's key)
    waiting: list[tuple[float, int, int, Step, float, str, bool, str]] = []
    seq = itertools.count()
    while fresh or waiting:
        if waiting and not fresh and hand_back is not None:
            now = clock()
            if waiting[0][0] - now >= HAND_BACK_AFTER:
                left = sorted(waiting, key=lambda w: w[1])  # in the order they were put back
                gone = set(hand_back([Waiting(w[2], w[7], w[0] - now, w[6]) for w in left]))
                for w in waiting:
                    if w[2] in gone:
                        metrics.count_ratelimit_wait(w[5], w[4], deferred=False)
                waiting[:] = [w for w in waiting if w[2] not in gone]
                heapq.heapify(waiting)
                hand_back = None  # what is not published, this chunk waits for itself
                if not waiting:
                    return
        if waiting and (not fresh or waiting[0][0] <= clock()):
            due, _, order_id, step, waited, endpoint, _, _ = heapq.heappop(waiting)
            pause = due - clock()
            if pause > 0:
                sleep(pause)
        else:
            (order_id, step), waited, endpoint = fresh.popleft(), 0.0, ""

        def call(
            order_id: int = order_id,
            step: Step = step,
            waited: float = waited,
            endpoint: str = endpoint,
        ) -> Any:
            with putback.putting_back(waited < patience):
                result = step()
            if isinstance(result, Later):
                due, waited = clock() + result.wait, waited + result.wait
                entry = (due, next(seq), order_id, result.resume, waited, result.endpoint)
                heapq.heappush(waiting, (*entry, result.unsent, result.key))
            elif waited:
                metrics.count_ratelimit_wait(endpoint, waited, deferred=False)
            return result

        yield order_id, call

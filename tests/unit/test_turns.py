"""engine/turns.turns: a chunk's order whose rate-limit grant is not free is put back while
the others go on (a fake clock; no I/O)."""

from __future__ import annotations

import pytest

from wxrecon import putback
from wxrecon.engine.turns import Later, Waiting, turns


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 3))
        self.now += seconds


def test_a_step_put_back_comes_again_after_the_others() -> None:
    clock = Clock()
    log: list[tuple[str, bool]] = []
    budgets = {"A": 1, "B": 1}

    def step(name: str, merchant: str) -> object:
        def run() -> object:
            log.append((name, putback.on()))
            if budgets[merchant] == 0:
                return Later(0.5, run)
            budgets[merchant] -= 1
            return "SUBMITTED"

        return run

    pairs = [(1, step("A1", "A")), (2, step("A2", "A")), (3, step("B1", "B")), (4, step("B2", "B"))]
    results = []
    for order_id, call in turns(pairs, patience=2.0, clock=clock, sleep=clock.sleep):
        if order_id in (2, 4) and clock.now >= 0.5:
            budgets["A" if order_id == 2 else "B"] = 1  # the window moved on
        results.append((order_id, call()))
    # A2 waits on A's budget while B1 goes; then, every step left waiting, one sleep.
    assert [n for n, _ in log] == ["A1", "A2", "B1", "B2", "A2", "B2"]
    assert all(put_back for _, put_back in log)
    assert clock.slept == [0.5]
    assert [r for _, r in results if not isinstance(r, Later)] == ["SUBMITTED"] * 4


def test_past_its_patience_an_order_waits_like_a_lone_one() -> None:
    clock = Clock()
    seen: list[bool] = []

    def run() -> object:
        seen.append(putback.on())
        return Later(0.8, run) if len(seen) < 4 else "SUBMITTED"

    out = [call() for _, call in turns([(1, run)], patience=2.0, clock=clock, sleep=clock.sleep)]
    # Put back at 0, 0.8 and 1.6 s; at 2.4 s waited in all, its call waits itself.
    assert seen == [True, True, True, False]
    assert out[-1] == "SUBMITTED"
    assert clock.slept == [0.8, 0.8, 0.8]


def test_each_order_once_when_nothing_is_put_back() -> None:
    clock = Clock()
    pairs = [(i, lambda i=i: f"S{i}") for i in range(5)]
    assert [(i, call()) for i, call in turns(pairs, clock=clock, sleep=clock.sleep)] == [
        (i, f"S{i}") for i in range(5)
    ]
    assert clock.slept == []
    assert putback.on() is False  # the flag does not leak out of a step


def test_the_time_put_back_is_counted_as_rate_limit_wait() -> None:
    from wxrecon import metrics

    counter = metrics.RATELIMIT_WAIT_SECONDS.labels("query_reduction")
    before = counter._value.get()
    clock = Clock()
    tries: list[int] = []

    def run() -> object:
        tries.append(1)
        return Later(0.4, run, "query_reduction") if len(tries) < 3 else "SUCCESS"

    for _, call in turns([(1, run)], clock=clock, sleep=clock.sleep):
        call()
    assert counter._value.get() - before == pytest.approx(0.8)  # two waits of 0.4 s


class HandBack:
    """Publishes the first ``accept`` of what it is given (all by default)."""

    def __init__(self, accept: int | None = None) -> None:
        self.accept = accept
        self.calls: list[tuple[list[int], list[int], float]] = []
        self.keys: list[list[str]] = []

    def __call__(self, waiting: list[Waiting]) -> list[int]:
        ids = [w.id for w in waiting]
        delay = round(min(w.delay for w in waiting), 3)
        self.calls.append((ids, [w.id for w in waiting if w.unsent], delay))
        self.keys.append([w.key for w in waiting])
        return ids[: self.accept]


def waits_once(wait: float, unsent: bool, seen: list[int]) -> object:
    def run() -> object:
        seen.append(1)
        return Later(wait, run, "submit_reduction", unsent) if len(seen) == 1 else "SUBMITTED"

    return run


def test_a_chunk_left_waiting_is_handed_back_instead_of_sleeping() -> None:
    """Every order left waits 0.5 s: the chunk gives them to hand_back (the unsent first
    POSTs named) and ends; nothing sleeps, and the wait so far counts as rate-limit wait."""
    from wxrecon import metrics

    counter = metrics.RATELIMIT_WAIT_SECONDS.labels("submit_reduction")
    before = counter._value.get()
    clock, back, seen_a, seen_b = Clock(), HandBack(), [], []  # type: ignore[var-annotated]
    pairs = [(1, lambda: "PROCESSING"), (2, waits_once(0.5, True, seen_a))]
    pairs.append((3, waits_once(0.7, False, seen_b)))
    out = [(i, call()) for i, call in turns(pairs, clock=clock, sleep=clock.sleep, hand_back=back)]
    assert [i for i, _ in out] == [1, 2, 3]  # each called once, then handed back
    assert back.calls == [([2, 3], [2], 0.5)]
    assert clock.slept == []
    assert counter._value.get() - before == pytest.approx(1.2)


def test_a_short_wait_is_slept_and_a_refused_hand_back_sleeps_as_before() -> None:
    clock, back, seen = Clock(), HandBack(), []  # type: ignore[var-annotated]
    steps = turns(
        [(1, waits_once(0.05, True, seen))], clock=clock, sleep=clock.sleep, hand_back=back
    )
    assert [call() for _, call in steps][-1] == "SUBMITTED"
    assert back.calls == [] and clock.slept == [0.05]  # below HAND_BACK_AFTER: slept

    clock, refused, seen = Clock(), HandBack(accept=0), []
    pairs = [(1, waits_once(0.5, True, seen))]
    out = [call() for _, call in turns(pairs, clock=clock, sleep=clock.sleep, hand_back=refused)]
    assert out[-1] == "SUBMITTED"
    assert len(refused.calls) == 1 and clock.slept == [0.5]  # asked once, then waited here


def test_what_the_hand_back_did_not_publish_the_chunk_waits_for_itself() -> None:
    """The hand-back published only order 2 (the broker went away after one message): the
    chunk sleeps for order 3 and runs it; only 2's wait so far is counted at the hand-back.
    Each waiting order goes with its budget's key."""
    clock, back, seen_a, seen_b = Clock(), HandBack(accept=1), [], []  # type: ignore[var-annotated]

    def keyed(wait: float, key: str, seen: list[int]) -> object:
        def run() -> object:
            seen.append(1)
            return (
                Later(wait, run, "submit_reduction", True, key) if len(seen) == 1 else "SUBMITTED"
            )

        return run

    pairs = [
        (2, keyed(0.5, "submit_reduction:A", seen_a)),
        (3, keyed(0.7, "submit_reduction:B", seen_b)),
    ]
    out = [(i, call()) for i, call in turns(pairs, clock=clock, sleep=clock.sleep, hand_back=back)]
    assert back.calls == [([2, 3], [2, 3], 0.5)]
    assert back.keys == [["submit_reduction:A", "submit_reduction:B"]]
    assert out == [(2, out[0][1]), (3, out[1][1]), (3, "SUBMITTED")]
    assert clock.slept == [0.7] and seen_a == [1]  # 2 was not run again here

"""A chunk whose orders all wait for rate-limit grants hands them back as a new message
(``engine/turns.turns``, ``tasks._hand_back``) instead of holding its worker process asleep.
An order handed back before its first POST left is marked again, SUBMITTED to SUBMITTED, at
the row version the hand-back saw, so that exactly one chunk makes that POST."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fixtures_db import EngineSettings, FakeClock, FakeProvider, reduction
from tests.integration.test_chunks import Limited, intake_all, path, state
from wxrecon import tasks
from wxrecon.domain.kinds import REDUCTION
from wxrecon.domain.states import RState
from wxrecon.engine.steps import Reconciler
from wxrecon.engine.turns import Waiting
from wxrecon.ratelimit import LocalRateLimiter, rate_limit_hook
from wxrecon.store.db import Database
from wxrecon.store.models import SpecialReduction


class Asked(Limited):
    """Submits behind the rate-limit hook, queries straight to the fake provider."""

    def query_special_reduction(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner.query_special_reduction(*args, **kwargs)


class Published(list[tuple[list[int], dict[int, int], float]]):
    """Publishes everything in one message, its claims held first (as ``_hand_back`` does)."""

    def __call__(self, waiting: list[Waiting], unsent: dict[int, int], hold: Any) -> list[int]:
        ids, delay = [w.id for w in waiting], min(w.delay for w in waiting)
        assert hold(ids, delay)
        self.append((ids, dict(unsent), delay))
        return ids


class Holds(list[tuple[list[int], float]]):
    def __init__(self, ok: bool = True) -> None:
        super().__init__()
        self.ok = ok

    def __call__(self, ids: list[int], seconds: float) -> bool:
        self.append((ids, seconds))
        return self.ok


def limited(provider: FakeProvider, settings: EngineSettings, clock: FakeClock, rate: int) -> Any:
    hook = rate_limit_hook(LocalRateLimiter(rate, window=5.0), max_wait=2.0)
    return Reconciler(db=None, client=Asked(provider, hook), settings=settings, clock=clock)  # type: ignore[arg-type]


def run(rec: Reconciler, db: Database, ids: list[int], token: str, **kw: Any) -> int:
    rec.db = db
    return tasks._process_chunk(rec.steps(REDUCTION, ids, token, **kw), ids)


def test_waiting_new_orders_are_handed_back_and_sent_once_by_the_next_chunk(
    db: Database, provider: FakeProvider, engine_settings: EngineSettings, clock: FakeClock
) -> None:
    ids, token = intake_all(db, clock, ["HB1", "HB2", "HB3"])
    provider.submit_answers.extend(reduction(no, "PROCESSING") for no in ["x"] * 3)
    published = Published()
    rec = limited(provider, engine_settings, clock, 1)
    assert run(rec, db, ids, token, hand_back=published) == 1  # the others are not done here
    # One grant in 5 s: HB1 went, HB2 and HB3 were marked, never sent, and handed back.
    assert [r.out_request_no for r in provider.submits] == ["HB1"]
    [(back, unsent, delay)] = published
    assert sorted(back) == ids[1:] and set(unsent) == set(ids[1:]) and 4.0 < delay <= 5.0
    assert [state(db, SpecialReduction, i) for i in ids[1:]] == [RState.SUBMITTED] * 2

    rec = limited(provider, engine_settings, clock, 10)
    assert run(rec, db, back, token, unsent=unsent, hand_back=Published()) == 2
    assert [r.out_request_no for r in provider.submits] == ["HB1", "HB2", "HB3"]
    for i in ids[1:]:
        assert [(e[0], e[1]) for e in path(db, i)] == [
            (None, "RECEIVED"),
            ("RECEIVED", "SUBMITTED"),
            ("SUBMITTED", "SUBMITTED"),  # marked again before its first POST
            ("SUBMITTED", "PROCESSING"),
        ]


def test_a_handed_back_message_run_again_queries_instead_of_posting_again(
    db: Database, provider: FakeProvider, engine_settings: EngineSettings, clock: FakeClock
) -> None:
    """Run again after its run died with the POST out (or delivered twice): the second run
    finds the row past the version the hand-back saw, so it asks the provider instead of
    making a "first" POST."""
    ids, token = intake_all(db, clock, ["HB4", "HB5"])
    provider.submit_answers.extend([reduction("HB4", "PROCESSING"), RuntimeError("killed")])
    published = Published()
    run(limited(provider, engine_settings, clock, 1), db, ids, token, hand_back=published)
    [(back, unsent, _)] = published
    rec = limited(provider, engine_settings, clock, 10)
    run(rec, db, back, token, unsent=unsent)  # HB5's POST leaves; its run dies before the answer
    assert [r.out_request_no for r in provider.submits] == ["HB4", "HB5"]
    assert state(db, SpecialReduction, ids[1]) == RState.SUBMITTED
    provider.query_answers.append(reduction("HB5", "PROCESSING"))
    run(rec, db, back, token, unsent=unsent)  # the same message again
    assert [r.out_request_no for r in provider.submits] == ["HB4", "HB5"]  # no second POST
    assert [q[0] for q in provider.queries] == ["HB5"]
    assert state(db, SpecialReduction, ids[1]) == RState.PROCESSING


def test_a_hint_at_another_version_or_token_is_not_a_first_post(
    db: Database, provider: FakeProvider, engine_settings: EngineSettings, clock: FakeClock
) -> None:
    ids, token = intake_all(db, clock, ["HB6", "HB7"])
    provider.submit_answers.append(reduction("HB6", "PROCESSING"))
    published = Published()
    run(limited(provider, engine_settings, clock, 1), db, ids, token, hand_back=published)
    [(back, unsent, _)] = published
    rec = limited(provider, engine_settings, clock, 10)
    provider.query_answers.append(reduction("HB7", "PROCESSING"))
    run(rec, db, back, token, unsent={i: v + 1 for i, v in unsent.items()})
    assert [r.out_request_no for r in provider.submits] == ["HB6"]  # HB7 queried, not sent
    assert [q[0] for q in provider.queries] == ["HB7"]
    assert run(rec, db, back, "someone-else", unsent=unsent) == 1  # a stale claim: nothing
    assert [r.out_request_no for r in provider.submits] == ["HB6"]


class Task:
    def __init__(self, fail_after: int | None = None) -> None:
        self.fail_after, self.sent = fail_after, []  # type: ignore[var-annotated]

    def apply_async(self, **options: Any) -> None:
        if self.fail_after is not None and len(self.sent) >= self.fail_after:
            raise ConnectionError("broker away")
        self.sent.append(options)


def test_the_hand_back_message_is_a_due_chunk_run_after_the_wait() -> None:
    """Orders whose budget is not known go back together, due when the first may go."""
    task = Task()
    waiting = [Waiting(3, "", 1.5, False), Waiting(4, "", 1.23456, True)]
    holds = Holds()
    assert tasks._hand_back(task, "tok")(waiting, {4: 7}, holds) == [3, 4]  # type: ignore[arg-type]
    assert holds == [([3, 4], 1.23456)]  # held before it was published
    [sent] = task.sent
    assert sent["kwargs"] == {"ids": [3, 4], "token": "tok", "unsent": [[4, 7]], "booked": False}
    assert sent["queue"] == "wxrecon.due" and sent["countdown"] == 1.235
    assert tasks._chunk_args([3, 4], "tok", sent["kwargs"]["unsent"]) == ([3, 4], "tok", {4: 7})
    assert tasks._hand_back(Task(fail_after=0), "tok")(waiting, {}, Holds()) == []  # type: ignore[arg-type]
    refused = Task()  # the database would not hold the claims: nothing is published
    assert tasks._hand_back(refused, "tok")(waiting, {}, Holds(ok=False)) == []  # type: ignore[arg-type]
    assert refused.sent == []


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_each_budget_s_orders_are_booked_and_go_back_in_groups_as_their_windows_start() -> None:
    """Two budgets at 4 a second (a window of 1 s: a turn each 0.25 s). A's 6 orders begin a
    line 0.5 s from now: 4 go back due then, 2 due as its next window starts (1.5). A second
    chunk's 3 orders of A take the next turns of that line: the two left in its second
    window, then one in its third. B's order has its own line. Each message names its own
    unsent orders."""
    clock = Clock()
    limiter = LocalRateLimiter(4, window=1.0, clock=clock)
    task = Task()
    a = [Waiting(i, "A", 0.5, i % 2 == 0) for i in range(1, 7)]
    waiting = [*a, Waiting(9, "B", 0.3, False)]
    holds = Holds()
    published = tasks._hand_back(task, "tok", limiter)(waiting, {2: 5, 4: 5, 6: 5}, holds)  # type: ignore[arg-type]
    assert sorted(published) == [1, 2, 3, 4, 5, 6, 9]
    got = [(m["countdown"], m["kwargs"]["ids"], m["kwargs"]["unsent"]) for m in task.sent]
    assert got == [
        (0.3, [9], []),
        (0.5, [1, 2, 3, 4], [[2, 5], [4, 5]]),
        (1.5, [5, 6], [[6, 5]]),
    ]
    assert all(m["kwargs"]["booked"] for m in task.sent)
    # Each message's claims held until it is due.
    assert [(i, round(d, 6)) for i, d in holds] == [([9], 0.3), ([1, 2, 3, 4], 0.5), ([5, 6], 1.5)]
    later = Task()
    more = [Waiting(i, "A", 0.5, False) for i in (7, 8, 10)]
    tasks._hand_back(later, "tok", limiter)(more, {}, Holds())  # type: ignore[arg-type]
    assert [(m["countdown"], m["kwargs"]["ids"]) for m in later.sent] == [
        (1.5, [7, 8]),
        (2.5, [10]),
    ]


def test_a_broker_failure_keeps_the_unpublished_groups_in_the_chunk() -> None:
    limiter = LocalRateLimiter(2, window=1.0, clock=Clock())
    task = Task(fail_after=1)
    waiting = [Waiting(i, "A", 0.2, False) for i in range(1, 6)]
    assert tasks._hand_back(task, "tok", limiter)(waiting, {}, Holds()) == [1, 2]  # type: ignore[arg-type]
    assert [m["kwargs"]["ids"] for m in task.sent] == [[1, 2]]


def test_turns_past_the_horizon_go_back_together_at_it_to_be_booked_again() -> None:
    """4 turns a second from 0.5 s, a horizon of 1.5 s: five of the eight are booked (4 at
    0.5, 1 at 1.5); the other three go back unbooked, due at the horizon."""
    limiter = LocalRateLimiter(4, window=1.0, clock=Clock())
    task = Task()
    waiting = [Waiting(i, "A", 0.5, False) for i in range(1, 9)]
    publish = tasks._hand_back(task, "tok", limiter, horizon=1.5)  # type: ignore[arg-type]
    assert sorted(publish(waiting, {}, Holds())) == list(range(1, 9))
    got = [(m["countdown"], m["kwargs"]["ids"], m["kwargs"]["booked"]) for m in task.sent]
    assert got == [(0.5, [1, 2, 3, 4], True), (1.5, [5], True), (1.5, [6, 7, 8], False)]


def test_a_handed_back_chunk_holds_its_orders_claims_past_their_due_time(
    db: Database, provider: FakeProvider, engine_settings: EngineSettings, clock: FakeClock
) -> None:
    """The sweep must not take a waiting order again while its message waits: its claim is
    held until the message is due and a lease past that, under the same token, the row's
    version unchanged (the unsent hint still names it)."""
    from sqlalchemy import select

    ids, token = intake_all(db, clock, ["HC1", "HC2", "HC3"])
    provider.submit_answers.extend(reduction(no, "PROCESSING") for no in ["x"] * 3)
    published = Published()
    run(limited(provider, engine_settings, clock, 1), db, ids, token, hand_back=published)
    [(back, unsent, delay)] = published
    with db.read() as session:
        rows = session.execute(
            select(SpecialReduction).where(SpecialReduction.id.in_(back))
        ).scalars()
        held = {r.id: (r.claim_token, r.claimed_until, r.next_poll_at, r.version) for r in rows}
    lease = engine_settings.claim_lease
    for i in back:
        claim_token, until, next_poll, version = held[i]
        assert claim_token == token and until == next_poll
        assert (until - clock()).total_seconds() == pytest.approx(delay + lease, abs=0.01)
        assert version == unsent[i]


def test_a_hold_extends_only_the_token_s_own_claims_and_never_shortens_one(
    db: Database, clock: FakeClock
) -> None:
    from datetime import timedelta

    from sqlalchemy import select

    from wxrecon.store import sql

    ids, token = intake_all(db, clock, ["HD1", "HD2"])
    far = clock() + timedelta(hours=1)
    assert sql.hold_claims(db, SpecialReduction, ids, "someone-else", far) == 0
    assert sql.hold_claims(db, SpecialReduction, ids, token, far) == 2
    assert sql.hold_claims(db, SpecialReduction, ids, token, clock()) == 0  # not shorter
    with db.read() as session:
        until = session.execute(
            select(SpecialReduction.claimed_until).where(SpecialReduction.id.in_(ids))
        ).scalars()
        assert set(until) == {far}


def test_bad_unsent_arguments_drop_the_message() -> None:
    for unsent in ([[9, 1]], [[3]], [3], [[3, True]], "x", [[3, "1"]]):
        assert tasks._chunk_args([3, 4], "tok", unsent) is None, unsent

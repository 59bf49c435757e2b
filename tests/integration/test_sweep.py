"""Sweep claims: due rows only, batches, leases that expire, and concurrent claimers."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import insert, select, update

from tests.fixtures_db import EngineSettings, FakeClock, FakeProvider, reduction
from wxrecon.domain.kinds import BILL, REDUCTION
from wxrecon.domain.states import BState, RState
from wxrecon.engine.intake import intake_bill, intake_reduction
from wxrecon.engine.steps import Reconciler
from wxrecon.engine.sweep import Claim, claim_due, sweep
from wxrecon.store.db import Database
from wxrecon.store.models import CompensationBill, SpecialReduction


def seed(
    db: Database, clock: FakeClock, n: int, *, state: str = RState.PROCESSING, due_in: float = -1
) -> list[int]:
    """``n`` reductions in ``state``, due ``due_in`` seconds from now (negative: overdue)."""
    now = clock()
    keys = db.keyring
    numbers = [f"S{uuid.uuid4().hex[:24]}" for _ in range(n)]
    rows = [
        {
            "mchid": "1900000109",
            "bal_account_no": keys.seal("6222000011112222", "1900000109", numbers[i]),
            "bal_account_hash": keys.lookup_hash("6222000011112222"),
            "out_request_no": numbers[i],
            "reduction_type": "FINANCIAL_PENALTY",
            "amount": 100 + i,
            "state": state,
            "attempts": 0,
            "next_poll_at": now + timedelta(seconds=due_in + i * 1e-3),
            "created_at": now,
            "updated_at": now,
            "version": 1,
        }
        for i in range(n)
    ]
    with db.transaction() as session:
        session.execute(insert(SpecialReduction), rows)
        ids = session.execute(
            select(SpecialReduction.id).where(SpecialReduction.state == state)
        ).scalars()
        return sorted(ids)


def claim(db: Database, clock: FakeClock, limit: int = 1000, lease: float = 60) -> list[Claim]:
    return claim_due(db, REDUCTION, limit=limit, lease=lease, now=clock())


def test_only_due_active_rows_are_claimed_oldest_first(db: Database, clock: FakeClock) -> None:
    due = seed(db, clock, 5, due_in=-10)
    seed(db, clock, 4, due_in=+30)  # not yet due
    for state in (RState.SUCCESS, RState.FAILED, RState.REJECTED, RState.NEEDS_REVIEW):
        seed(db, clock, 2, state=state, due_in=-100)  # terminal, even if a time is left over
    first = claim(db, clock, limit=3)
    assert [c.id for c in first] == due[:3]
    assert len({c.token for c in first}) == 1
    second = claim(db, clock, limit=10)
    assert [c.id for c in second] == due[3:]
    assert claim(db, clock) == []


def test_claimed_rows_stay_leased_until_the_lease_expires(db: Database, clock: FakeClock) -> None:
    ids = seed(db, clock, 3)
    first = claim(db, clock, lease=60)
    assert [c.id for c in first] == ids
    clock.advance(59)
    assert claim(db, clock) == []
    clock.advance(2)  # the claimer died: its lease ran out, the rows come back
    again = claim(db, clock)
    assert [c.id for c in again] == ids
    assert again[0].token != first[0].token
    with db.read() as session:
        tokens = set(session.execute(select(SpecialReduction.claim_token)).scalars())
    assert tokens == {again[0].token}


def test_dead_workers_claim_returns_and_the_old_token_is_stale(
    db: Database, provider: FakeProvider, engine_settings: EngineSettings, clock: FakeClock
) -> None:
    rec = Reconciler(db, provider, engine_settings, clock=clock)
    [order_id] = seed(db, clock, 1)
    dead = claim(db, clock, lease=60)[0]
    clock.advance(61)
    live = claim(db, clock, lease=60)[0]
    provider.query_answers.append(reduction("ANY", "SUCCESS", amount=100))
    # The "dead" worker wakes up late: its claim is gone, it does nothing.
    assert rec.process(REDUCTION, order_id, dead.token) is None
    assert provider.queries == []
    assert rec.process(REDUCTION, order_id, live.token) == RState.SUCCESS


def test_never_submitted_order_is_found_and_submitted_by_the_sweep(
    db: Database, provider: FakeProvider, engine_settings: EngineSettings, clock: FakeClock
) -> None:
    from tests.integration.test_reconcile import make_request

    with db.transaction() as session:
        order = intake_reduction(session, make_request("LOST1"), lease=120, now=clock())
    # The intake's task never ran (worker died between commit and send).
    clock.advance(121)
    rec = Reconciler(db, provider, engine_settings, clock=clock)
    dispatched: list[Claim] = []
    assert sweep(db, REDUCTION, rec.settings, dispatched.append, now=clock) == 1
    provider.submit_answers.append(reduction("LOST1", "PROCESSING"))
    assert rec.process(REDUCTION, order.order_id, dispatched[0].token) == RState.PROCESSING
    assert provider.submits == [make_request("LOST1")]


def test_sweep_claims_batch_after_batch(
    db: Database, provider: FakeProvider, clock: FakeClock
) -> None:
    ids = seed(db, clock, 450)
    settings = EngineSettings(sweep_batch=200)
    rec = Reconciler(db, provider, settings, clock=clock)
    got: list[Claim] = []
    assert sweep(db, REDUCTION, rec.settings, got.append, now=clock) == 450
    assert sorted(c.id for c in got) == ids
    assert len({c.token for c in got}) == 3  # one statement (and token) per batch
    assert sweep(db, REDUCTION, rec.settings, got.append, now=clock) == 0


def test_bills_are_claimed_the_same_way(db: Database, clock: FakeClock) -> None:
    with db.transaction() as session:
        a = intake_bill(session, "BILL1", lease=30, now=clock())
        b = intake_bill(session, "BILL2", lease=30, now=clock())
        session.execute(
            update(CompensationBill)
            .where(CompensationBill.id == b.order_id)
            .values(state=BState.SUCCESS, next_poll_at=None)
        )
    assert claim_due(db, BILL, limit=10, lease=30, now=clock()) == []
    clock.advance(31)
    claims = claim_due(db, BILL, limit=10, lease=30, now=clock())
    assert [c.id for c in claims] == [a.order_id]


@pytest.mark.postgres
@pytest.mark.parametrize("claimers", [2, 4])
def test_concurrent_claimers_never_share_a_row(
    pg_db: Database, clock: FakeClock, claimers: int
) -> None:
    """Real concurrency on PostgreSQL: claimers on their own connections, in threads,
    racing over the same due rows. Every row is claimed exactly once."""
    ids = seed(pg_db, clock, 600)
    databases = [Database(pg_db.url) for _ in range(claimers)]
    results: list[list[Claim]] = [[] for _ in range(claimers)]
    start = threading.Barrier(claimers)
    failures: list[BaseException] = []

    def run(i: int) -> None:
        try:
            start.wait()
            while True:
                got = claim_due(databases[i], REDUCTION, limit=25, lease=60, now=clock())
                if not got:
                    return
                results[i].extend(got)
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(claimers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for d in databases:
        d.dispose()
    assert not failures
    claimed = [c.id for r in results for c in r]
    assert sorted(claimed) == ids  # all claimed, none twice
    assert sum(1 for r in results if r) >= 1


def test_concurrent_claimers_on_sqlite_processes_serialise(
    sqlite_url: str, clock: FakeClock
) -> None:
    """SQLite serialises writers (BEGIN IMMEDIATE): threads on separate engines still never
    claim the same row."""
    main = Database(sqlite_url)
    ids = seed(main, clock, 300)
    databases = [Database(sqlite_url) for _ in range(3)]
    results: list[list[int]] = [[] for _ in range(3)]

    def run(i: int) -> None:
        while True:
            got = claim_due(databases[i], REDUCTION, limit=10, lease=60, now=clock())
            if not got:
                return
            results[i].extend(c.id for c in got)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for d in [main, *databases]:
        d.dispose()
    assert sorted(i for r in results for i in r) == ids

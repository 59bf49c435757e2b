"""engine/ledger.py on SQLite and PostgreSQL: snapshots, checks, discrepancies and their
outcome events."""

from __future__ import annotations

import json
import time
from collections import deque
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select

from tests.services import SEALING_ENV
from wxrecon.domain.ledger import OK, SKEW, UNEXPLAINED_CREDIT, UNEXPLAINED_DEBIT
from wxrecon.engine import ledger as engine
from wxrecon.store import ledgers as store
from wxrecon.store.db import Database
from wxrecon.store.models import LedgerSnapshot, Outcome, SpecialReduction
from wxrecon.store.sealed import Keyring
from wxrecon.wechatpay.errors import NetworkError, Throttled
from wxrecon.wechatpay.resources import ChannelBalance

MCHID = "1900000109"
LEDGER = "6222000011112222"


class Balances:
    """Scripted channel-balance answers (a ChannelBalance or an exception)."""

    def __init__(self) -> None:
        self.answers: deque[object] = deque()
        self.calls: list[tuple[str, str]] = []

    def query_balance(self, *, mchid: str, bal_account_no: str) -> ChannelBalance:
        self.calls.append((mchid, bal_account_no))
        answer = self.answers.popleft()
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, ChannelBalance)
        return answer

    def then(self, balance: int | None, in_transit: bool | None = False) -> Balances:
        self.answers.append(ChannelBalance(balance, in_transit, request_id=f"rid-{balance}"))
        return self


# The suite's keys (conftest sets them for every process): the task opens what tests seal.
KEYS = Keyring.from_settings(SEALING_ENV["WXRECON_DATA_KEYS"], SEALING_ENV["WXRECON_LOOKUP_KEY"])


@pytest.fixture
def keys() -> Keyring:
    return KEYS


def add_reduction(
    db: Database,
    no: str,
    amount: int,
    state: str = "SUCCESS",
    success_time: datetime | None = None,
    updated_at: datetime | None = None,
    submitted_at: datetime | None = None,
) -> int:
    """A reduction of LEDGER in ``state``, its number sealed as intake seals it."""
    now = db.now()
    with db.transaction() as s:
        row = SpecialReduction(
            mchid=MCHID,
            bal_account_no=KEYS.seal(LEDGER, MCHID, no),
            bal_account_hash=KEYS.lookup_hash(LEDGER),
            out_request_no=no,
            reduction_type="FINANCIAL_PENALTY",
            amount=amount,
            state=state,
            success_time=success_time,
            submitted_at=submitted_at,
            created_at=now,
            updated_at=updated_at or now,
        )
        s.add(row)
        s.flush()
        return int(row.id)


def later() -> None:
    """Let more than the clocks' skew pass, so the snapshots before and after an order's
    first POST (and its SUCCESS) place it (domain/ledger.position)."""
    time.sleep(1.5 * SKEW.total_seconds())


def settle_between(db: Database, no: str, amount: int) -> int:
    """A reduction first sent and recorded SUCCESS between the snapshot before and the next."""
    later()
    now = db.now()
    order_id = add_reduction(db, no, amount, success_time=now, submitted_at=now)
    later()
    return order_id


def take(db: Database, client: Balances, keys: Keyring) -> engine.Round:
    since = db.now() - timedelta(hours=1)
    return engine.snapshot(db, client, keys, engine.ledgers_to_snapshot(db, keys, since))


def test_nothing_in_transit_and_nothing_done_is_ok(db: Database, keys: Keyring) -> None:
    add_reduction(db, "R1", 100, state="PROCESSING")
    client = Balances().then(10_000).then(10_000)
    first, second = take(db, client, keys), take(db, client, keys)
    assert (first.taken, first.checks) == (1, [])  # the first snapshot has nothing before it
    assert second.taken == 1
    assert [c.verdict for c in second.checks] == [OK]
    assert second.discrepancies == []
    assert client.calls == [(MCHID, LEDGER)] * 2


def test_reduction_settled_between_snapshots_explains_the_debit(
    db: Database, keys: Keyring
) -> None:
    add_reduction(db, "R0", 100, state="PROCESSING")
    client = Balances().then(10_000).then(9_700)
    take(db, client, keys)
    settled = settle_between(db, "R1", 300)
    result = take(db, client, keys)
    [c] = result.checks
    assert (c.verdict, c.observed, c.explained, c.order_ids) == (OK, -300, -300, (settled,))
    assert store.discrepancies(db) == []


def test_snapshot_in_transit_is_kept_but_not_a_check_point(db: Database, keys: Keyring) -> None:
    add_reduction(db, "R0", 100, state="PROCESSING")
    client = Balances().then(10_000).then(9_800, in_transit=True).then(9_700)
    take(db, client, keys)
    middle = take(db, client, keys)
    assert (middle.taken, middle.checks) == (1, [])  # stored, not checked
    settled = settle_between(db, "R1", 300)
    last = take(db, client, keys)
    [c] = last.checks
    # The window spans the snapshot in transit: first (10 000) to last (9 700).
    assert (c.verdict, c.start.balance, c.end.balance, c.order_ids) == (
        OK,
        10_000,
        9_700,
        (settled,),
    )
    rows = store.snapshots(db, MCHID, keys.lookup_hash(LEDGER))
    assert [(r["balance"], r["in_transit"]) for r in rows] == [
        (10_000, False),
        (9_800, True),
        (9_700, False),
    ]


def test_external_debit_is_an_unexplained_debit_with_its_outcome(
    db: Database, keys: Keyring
) -> None:
    add_reduction(db, "R0", 100, state="PROCESSING")
    client = Balances().then(10_000).then(9_700)
    take(db, client, keys)
    result = take(db, client, keys)
    [c] = result.checks
    assert (c.verdict, c.amount) == (UNEXPLAINED_DEBIT, 300)
    [d] = store.discrepancies(db)
    assert (d["kind"], d["amount"], d["observed"], d["explained"], d["order_ids"]) == (
        UNEXPLAINED_DEBIT,
        300,
        -300,
        0,
        [],
    )
    assert d["window_start"] < d["window_end"]
    with db.read() as s:
        [outcome] = s.execute(select(Outcome)).scalars().all()
    event = json.loads(outcome.payload)
    assert (outcome.type, outcome.kind, outcome.delivery) == (
        "ledger.unexplained_debit",
        "ledger",
        "pending",
    )
    assert (event["amount"], event["mchid"], event["observed"]) == (300, MCHID, -300)
    assert outcome.order_key == f"ledger:{MCHID}:{keys.lookup_hash(LEDGER)[:12]}"
    assert LEDGER not in outcome.payload
    # Checking again records nothing new (one verdict per window).
    checks = engine.recheck(db, MCHID, keys.lookup_hash(LEDGER))
    assert [x.verdict for x in checks] == [UNEXPLAINED_DEBIT]
    assert len(store.discrepancies(db)) == 1
    assert store.unexplained_debit_totals(db) == [(MCHID, keys.lookup_hash(LEDGER), 300)]


def test_top_up_is_an_unexplained_credit(db: Database, keys: Keyring) -> None:
    add_reduction(db, "R0", 100, state="PROCESSING")
    client = Balances().then(10_000).then(10_500)
    take(db, client, keys)
    [c] = take(db, client, keys).checks
    assert (c.verdict, c.amount) == (UNEXPLAINED_CREDIT, 500)
    [d] = store.discrepancies(db)
    assert d["kind"] == UNEXPLAINED_CREDIT
    assert store.unexplained_debit_totals(db) == []  # a credit is not an alert


def test_ledger_number_is_sealed_at_rest(db: Database, keys: Keyring) -> None:
    add_reduction(db, "R0", 100, state="PROCESSING")
    take(db, Balances().then(10_000), keys)
    with db.read() as s:
        [row] = s.execute(select(LedgerSnapshot)).scalars().all()
    assert LEDGER not in row.ledger_sealed and LEDGER not in row.ledger_hash
    assert store.open_ledger(keys, MCHID, row.ledger_sealed) == LEDGER
    assert (row.balance, row.in_transit, row.request_id) == (10_000, False, "rid-10000")


def test_failed_query_stores_nothing_and_throttle_defers(db: Database, keys: Keyring) -> None:
    add_reduction(db, "R0", 100, state="PROCESSING")
    client = Balances()
    client.answers.append(NetworkError("down"))
    failed = take(db, client, keys)
    assert (failed.taken, failed.failed) == (0, 1)
    client.answers.append(Throttled(0.5, "query_balance:" + MCHID))
    deferred = take(db, client, keys)
    assert (deferred.taken, deferred.deferred) == (0, 1)
    assert store.snapshots(db, MCHID, keys.lookup_hash(LEDGER)) == []


def test_snapshot_task_runs_a_round_and_refuses_bad_input(
    installed: tuple[Database, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    from wxrecon import runtime, tasks

    db, _ = installed
    add_reduction(db, "R0", 100, state="PROCESSING")
    rt = runtime.get()
    keyed = rt.settings
    rt._clients = {"default": Balances().then(10_000)}
    # No keys configured: one line, nothing taken.
    rt.settings = keyed.model_copy(update={"data_keys": None})
    assert tasks.snapshot_ledgers() == {"taken": 0}
    rt.settings = keyed
    assert tasks.snapshot_ledgers(mchid=MCHID)["taken"] == 1
    assert tasks.snapshot_ledgers(mchid="1' OR 1=1") == {"taken": 0}
    assert tasks.snapshot_ledgers(mchid=["x"]) == {"taken": 0}


@pytest.mark.parametrize(
    ("value", "ok"),
    [("5m", 300.0), ("1s", 1.0), ("0", None), ("-1", None), ("2d", None), ("soon", None)],
)
def test_snapshot_interval_setting_is_checked(value: str, ok: float | None) -> None:
    from wxrecon.config import SettingsError, load_settings

    if ok is None:
        with pytest.raises(SettingsError, match=r"ledger_snapshot_interval|LEDGER_SNAPSHOT"):
            load_settings(ledger_snapshot_interval=value)
    else:
        assert load_settings(ledger_snapshot_interval=value).ledger_snapshot_interval == ok


def test_unexplained_debit_metric_per_ledger(db: Database, keys: Keyring) -> None:
    from wxrecon.metrics import OrdersCollector
    from wxrecon.metrics_server import read_snapshot

    add_reduction(db, "R0", 100, state="PROCESSING")
    client = Balances().then(10_000).then(9_700).then(10_700).then(10_500)
    for _ in range(4):
        take(db, client, keys)
    [family] = [
        m
        for m in OrdersCollector(lambda: read_snapshot(db)).collect()
        if m.name == "wxrecon_ledger_unexplained_debit_fen"
    ]
    label = keys.lookup_hash(LEDGER)[:12]
    # Two debits (300 + 200); the credit between them does not offset the alert.
    assert [(s.labels, s.value) for s in family.samples] == [
        ({"mchid": MCHID, "ledger": label}, 500)
    ]
    assert LEDGER not in str(family.samples)


def set_state(db: Database, order_id: int, **values: object) -> None:
    with db.transaction() as s:
        row = s.get(SpecialReduction, order_id)
        assert row is not None
        for k, v in values.items():
            setattr(row, k, v)


def test_snapshot_before_our_query_saw_the_success_waits(db: Database, keys: Keyring) -> None:
    """The provider settled the reduction (balance down, nothing in transit) but our records
    still say PROCESSING: that snapshot is no check point (no false debit), and the next
    one, after the SUCCESS was recorded, checks the whole span."""
    add_reduction(db, "R0", 100, state="PROCESSING")  # activity: the ledger is watched
    client = Balances().then(10_000).then(9_700).then(9_700)
    take(db, client, keys)
    later()
    sent = add_reduction(db, "R1", 300, state="PROCESSING", submitted_at=db.now())
    between = take(db, client, keys)
    assert (between.taken, between.checks, between.discrepancies) == (1, [], [])
    now = db.now()  # success_time (the provider's clock, here 2 s behind ours) is not used
    set_state(db, sent, state="SUCCESS", success_time=now - timedelta(seconds=2), updated_at=now)
    later()
    [c] = take(db, client, keys).checks
    assert (c.verdict, c.start.balance, c.end.balance, c.order_ids) == (OK, 10_000, 9_700, (sent,))
    assert store.discrepancies(db) == []
    rows = store.snapshots(db, MCHID, keys.lookup_hash(LEDGER))
    assert [r["point"] for r in rows] == [True, None, True]
    assert all(r["asked_at"] <= r["taken_at"] for r in rows)
    # ``ledger check`` walks the same chain, and finds the order (it looks it up by hash).
    again = engine.recheck(db, MCHID, keys.lookup_hash(LEDGER))
    assert [(x.verdict, x.order_ids) for x in again] == [(OK, (sent,))]


def test_order_in_review_keeps_later_snapshots_undecided(db: Database, keys: Keyring) -> None:
    add_reduction(db, "R0", 100, state="PROCESSING")  # activity: the ledger is watched
    client = Balances().then(10_000).then(9_700).then(9_700)
    take(db, client, keys)
    add_reduction(db, "R1", 300, state="NEEDS_REVIEW", submitted_at=db.now())
    assert take(db, client, keys).checks == []
    assert take(db, client, keys).checks == []
    assert store.discrepancies(db) == []


def test_failed_or_unsent_orders_do_not_hold_checks(db: Database, keys: Keyring) -> None:
    add_reduction(db, "R0", 100, state="PROCESSING")  # activity: the ledger is watched
    client = Balances().then(10_000).then(9_700)
    take(db, client, keys)
    add_reduction(db, "R1", 300, state="FAILED", submitted_at=db.now())
    add_reduction(db, "R2", 300, state="RECEIVED")
    [c] = take(db, client, keys).checks
    assert (c.verdict, c.amount) == (UNEXPLAINED_DEBIT, 300)


def test_window_spanning_a_point_no_longer_decidable_nets_out_what_it_told(
    db: Database, keys: Keyring
) -> None:
    """A point decided before an order's row was visible (its mark stamped before the
    answer, committed after the decision) is passed over: the window starts at the point
    before and subtracts what the windows in between told already."""
    add_reduction(db, "R0", 100, state="PROCESSING")  # activity: the ledger is watched
    client = Balances().then(10_000).then(9_700).then(9_400)
    take(db, client, keys)
    later()
    second = take(db, client, keys)
    [told] = second.discrepancies  # a 300 fen debit outside any order
    [b] = store.points(db, MCHID, keys.lookup_hash(LEDGER), limit=1)
    # Marked 20 ms before b's answer, its row seen only after b was decided; recorded since.
    add_reduction(
        db, "R1", 300, success_time=db.now(), submitted_at=b["taken_at"] - timedelta(seconds=0.02)
    )
    later()
    [c] = take(db, client, keys).checks  # the order's 300, then: nothing new to tell
    assert (c.verdict, c.start.balance, c.observed, c.explained, c.flagged) == (
        OK,
        10_000,
        -600,
        -300,
        -300,
    )
    assert [d["id"] for d in store.discrepancies(db)] == [told]

"""The provider's pages taken literally (issue 18): their own example answers, and the
answers they allow, through the real client on the scripted wire and on through the engine
(``Reconciler`` with that client, on SQLite and PostgreSQL) to the states they must end in.

The examples are the pages' JSON (``/work/shared/api-docs/``) with only what a test must
change: the ledger number becomes a real merchant-key ciphertext (the page's is a
placeholder), and where said, the merchant is ours.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from rich.console import Console

from tests.fixtures_db import EngineSettings, FakeClock
from tests.fixtures_keys import BAL_ACCOUNT_NO, MCHID, KeySet, signed_headers
from wxrecon.cli.kinds import BILL as BILL_VIEW
from wxrecon.cli.orders import render_show
from wxrecon.domain.kinds import BILL, REDUCTION
from wxrecon.domain.states import BState, RState
from wxrecon.engine.intake import intake_bill, intake_reduction
from wxrecon.engine.steps import Reconciler, load_row
from wxrecon.engine.sweep import claim_due
from wxrecon.ratelimit import LocalRateLimiter, rate_limit_hook
from wxrecon.store.db import Database
from wxrecon.store.reads import bill_dict, bill_events, get_bill, reduction_events
from wxrecon.wechatpay.client import RetryPolicy, WeChatPayClient
from wxrecon.wechatpay.errors import GarbledResponse, Throttled
from wxrecon.wechatpay.keys import Credentials
from wxrecon.wechatpay.resources import (
    ChannelBalance,
    ReductionState,
    SpecialReductionRequest,
)
from wxrecon.wechatpay.testing import ScriptedWire, reply
from wxrecon.wechatpay.wire import Reply

# 000 查询特殊减额结果, 应答示例 (200 OK), verbatim: SUCCESS with a fail_reason and fail_time.
QUERY_PAGE: dict[str, Any] = {
    "mchid": "1900016681",
    "bal_account_no": "8609cb22e1774a50a930e414cc71eca06121bcd266335cda230d24a7886a8d9f",
    "out_request_no": "htozr8denqegbt6tk6u10iymo7yww5pn",
    "reduction_type": "JUDICIAL_DEDUCTION",
    "amount": 1,
    "state": "SUCCESS",
    "reason": "司法案件号:202508080009",
    "quota_change_no": "m6a6dx8iit7m932dx03ue2lw2ofo2r88",
    "success_time": "2015-05-20T13:29:35+08:00",
    "fail_time": "2015-05-20T13:29:35+08:00",
    "fail_reason": "BALANCE_NOT_ENOUGH",
}
NO = QUERY_PAGE["out_request_no"]
TARGET = QUERY_PAGE["mchid"]

# 004 查询赔付结果, 应答示例 (200 OK), verbatim.
BILL_PAGE: dict[str, Any] = {
    "sp_mchid": "1900001108",
    "receiver_detail": {
        "receiver": {
            "type": "TRANSACTION_USER",
            "transaction_info": {"transaction_id": "1217752501201407033233368018", "type": "WXPAY"},
        }
    },
    "out_bill_no": "plfk2020042013",
    "amount": 10000,
    "transfer_remark": "直播违规扣罚",
    "bill_id": "1330000071100999991182020050700019480001",
    "state": "SUCCESS",
    "accept_time": "2015-05-20T13:29:35+08:00",
    "success_time": "2015-05-20T13:29:35+08:00",
    "close_info": {"close_time": "2015-05-20T13:29:35+08:00", "close_reason": "NOT_ENOUGH"},
    "sponsor_mchid": "1900001109",
}
RECEIVER = {
    "type": "TRANSACTION_USER",
    "transaction_id": "1217752501201407033233368018",
    "transaction_type": "WXPAY",
}


def signed(keys: KeySet, data: Any, request_id: str = "RID-PAGE") -> Reply:
    body = json.dumps(data, ensure_ascii=False).encode()
    return reply(200, body, signed_headers(keys, body, request_id=request_id))


def answer(keys: KeySet, **changes: Any) -> dict[str, Any]:
    """The query page's example, its ledger number a real ciphertext, with ``changes``."""
    return {**QUERY_PAGE, "bal_account_no": keys.encrypt_for_merchant(BAL_ACCOUNT_NO), **changes}


def processing(keys: KeySet) -> dict[str, Any]:
    """What the POST answers: accepted, nothing else (every field is 选填)."""
    return {"out_request_no": NO, "mchid": TARGET, "state": "PROCESSING"}


def client_on(credentials: Credentials, wire: ScriptedWire, **kw: Any) -> WeChatPayClient:
    return WeChatPayClient(
        credentials, wire=wire, retry=RetryPolicy(attempts=1, initial_wait=0, max_wait=0), **kw
    )


# -- the client alone ----------------------------------------------------------------------


def query(credentials: Credentials, data: Any, keys: KeySet) -> Any:
    with client_on(credentials, ScriptedWire(signed(keys, data))) as client:
        return client.query_special_reduction(NO, mchid=TARGET, bal_account_no=BAL_ACCOUNT_NO)


def test_the_query_page_example_keeps_only_the_success_fields(
    keys: KeySet, credentials: Credentials
) -> None:
    r = query(credentials, answer(keys), keys)
    assert r.state is ReductionState.SUCCESS
    assert r.fail_reason is None and r.fail_time is None
    assert r.dropped == ("fail_time", "fail_reason")
    assert r.quota_change_no == QUERY_PAGE["quota_change_no"] and r.success_time is not None
    assert r.bal_account_no == BAL_ACCOUNT_NO and r.amount == 1


def test_a_failed_answer_keeps_only_the_failure_fields(
    keys: KeySet, credentials: Credentials
) -> None:
    r = query(credentials, answer(keys, state="FAILED", fail_reason="RECEIPT_NOT_EXIST"), keys)
    assert r.fail_reason == "RECEIPT_NOT_EXIST" and r.fail_time is not None
    assert r.quota_change_no is None and r.success_time is None
    assert r.dropped == ("quota_change_no", "success_time")


@pytest.mark.parametrize("name", ["reduction_type", "fail_reason", "reason", "mchid"])
def test_an_empty_field_reads_as_one_not_sent(
    keys: KeySet, credentials: Credentials, name: str
) -> None:
    r = query(credentials, answer(keys, **{name: ""}), keys)
    assert getattr(r, name) is None
    absent = answer(keys)
    del absent[name]
    assert query(credentials, absent, keys) == r


def test_an_empty_state_is_a_missing_one(keys: KeySet, credentials: Credentials) -> None:
    for data in (answer(keys, state=""), {k: v for k, v in answer(keys).items() if k != "state"}):
        with pytest.raises(GarbledResponse, match="field state is missing"):
            query(credentials, data, keys)


def test_the_balance_page_example_and_its_optional_fields(
    keys: KeySet, credentials: Credentials
) -> None:
    page = {"in_transit_reduction_exist": False, "balance": 1}  # 003, 应答示例
    wire = ScriptedWire(signed(keys, page), signed(keys, {}), signed(keys, {"balance": ""}))
    with client_on(credentials, wire) as client:
        got = [client.query_balance(mchid=TARGET, bal_account_no=BAL_ACCOUNT_NO) for _ in "abc"]
    assert [(b.balance, b.in_transit_reduction_exist) for b in got] == [
        (1, False),
        (None, None),  # not sent: never 0 and never "no in-transit reduction"
        (None, None),
    ]
    assert all(isinstance(b, ChannelBalance) for b in got)


def test_the_bill_page_example_keeps_its_receiver(credentials: Credentials, keys: KeySet) -> None:
    ours = {**BILL_PAGE, "sp_mchid": MCHID}
    with client_on(credentials, ScriptedWire(signed(keys, ours))) as client:
        b = client.query_compensation_bill("plfk2020042013")
    assert b.receiver_detail is not None and b.receiver_detail.as_dict() == RECEIVER
    assert b.sp_mchid == MCHID


def test_a_bill_answer_about_another_platform_is_garbled(
    credentials: Credentials, keys: KeySet
) -> None:
    assert BILL_PAGE["sp_mchid"] != credentials.mchid  # the page's own platform is not ours
    wire = ScriptedWire(signed(keys, BILL_PAGE))
    with client_on(credentials, wire) as client, pytest.raises(GarbledResponse) as info:
        client.query_compensation_bill("plfk2020042013")
    assert "another sp_mchid" in str(info.value)
    assert info.value.request_id == "RID-PAGE"
    without = {k: v for k, v in BILL_PAGE.items() if k != "sp_mchid"}  # absent: not a conflict
    with client_on(credentials, ScriptedWire(signed(keys, without))) as client:
        assert client.query_compensation_bill("plfk2020042013").sp_mchid is None


# -- through the engine --------------------------------------------------------------------


class Engine:
    """The real client on a scripted wire behind a Reconciler, and one order to drive."""

    def __init__(self, db: Database, credentials: Credentials, clock: FakeClock, **kw: Any):
        self.db, self.clock = db, clock
        self.wire = ScriptedWire(reply(599))  # replaced by each test's script
        self.client = client_on(credentials, self.wire, **kw)
        self.rec = Reconciler(db, self.client, EngineSettings(), clock=clock)

    def submit(self, *steps: Reply) -> tuple[int, str | None]:
        self.wire.play(*steps)
        request = SpecialReductionRequest.create(
            mchid=TARGET,
            bal_account_no=BAL_ACCOUNT_NO,
            out_request_no=NO,
            reduction_type="JUDICIAL_DEDUCTION",
            amount=1,
            reason=QUERY_PAGE["reason"],
        )
        with self.db.transaction() as session:
            order = intake_reduction(session, request, now=self.clock())
        return order.order_id, self.rec.process(REDUCTION, order.order_id, order.token or "")

    def poll(self, kind: Any, order_id: int) -> str | None:
        row = load_row(self.db, kind, order_id)
        assert row is not None and row.next_poll_at is not None, "not scheduled"
        self.clock.now = max(self.clock.now, row.next_poll_at)
        (claim,) = [
            c
            for c in claim_due(self.db, kind, limit=10, lease=120, now=self.clock())
            if c.id == order_id
        ]
        return self.rec.process(kind, order_id, claim.token)

    def row(self, kind: Any, order_id: int) -> Any:
        row = load_row(self.db, kind, order_id)
        assert row is not None
        return row

    def reasons(self, order_id: int) -> list[str]:
        with self.db.read() as session:
            return [e.reason for e in reduction_events(session, order_id)]


@pytest.fixture
def engine(db: Database, credentials: Credentials, clock: FakeClock) -> Iterator[Engine]:
    e = Engine(db, credentials, clock)
    yield e
    e.client.close()


def test_the_page_example_records_success_without_a_fail_reason(
    engine: Engine, keys: KeySet
) -> None:
    order_id, state = engine.submit(signed(keys, processing(keys)), signed(keys, answer(keys)))
    assert state == RState.PROCESSING
    assert engine.poll(REDUCTION, order_id) == RState.SUCCESS
    row = engine.row(REDUCTION, order_id)
    assert row.fail_reason is None and row.fail_time is None
    assert row.quota_change_no == QUERY_PAGE["quota_change_no"] and row.success_time is not None
    last = engine.reasons(order_id)[-1]
    assert "SUCCESS" in last and "dropped fail_time, fail_reason" in last, last


def test_state_unknown_keeps_polling_then_success(engine: Engine, keys: KeySet) -> None:
    unknown = signed(keys, {**processing(keys), "state": "STATE_UNKNOWN"})
    order_id, state = engine.submit(
        signed(keys, processing(keys)), unknown, unknown, signed(keys, answer(keys))
    )
    assert state == RState.PROCESSING
    assert engine.row(REDUCTION, order_id).attempts == 1
    for attempts in (2, 3):  # each unknown answer spends one attempt of the budget
        assert engine.poll(REDUCTION, order_id) == RState.PROCESSING  # asked again, not parked
        row = engine.row(REDUCTION, order_id)
        assert row.attempts == attempts and row.next_poll_at is not None
        assert "STATE_UNKNOWN" in (row.last_error or "")
    assert engine.poll(REDUCTION, order_id) == RState.SUCCESS
    with engine.db.read() as session:
        path = [e.to_state for e in reduction_events(session, order_id)]
    assert path == ["RECEIVED", "SUBMITTED", "PROCESSING", "SUCCESS"]  # never parked


def test_reduction_type_unknown_on_success_records_success(engine: Engine, keys: KeySet) -> None:
    success = answer(keys, reduction_type="REDUCTION_TYPE_UNKNOWN")
    order_id, state = engine.submit(signed(keys, success))  # the POST's own answer
    assert state == RState.SUCCESS
    assert (
        "reduction_type REDUCTION_TYPE_UNKNOWN is not one we know" in engine.reasons(order_id)[-1]
    )


def test_a_known_other_reduction_type_on_success_still_needs_review(
    engine: Engine, keys: KeySet
) -> None:
    order_id, state = engine.submit(signed(keys, answer(keys, reduction_type="FINANCIAL_PENALTY")))
    assert state == RState.NEEDS_REVIEW
    assert "reduction_type" in engine.reasons(order_id)[-1]


@pytest.mark.parametrize("reason", ["RECEIPT_NOT_EXIST_CLOSED", "RECEIPT_NOT_EXIST"])
def test_receipt_not_exist_is_a_final_failure(engine: Engine, keys: KeySet, reason: str) -> None:
    # The page's FAILED: no amount or type (仅state=SUCCESS时返回), a stray quota_change_no.
    failed = {
        **processing(keys),
        "state": "FAILED",
        "fail_reason": reason,
        "fail_time": "2025-09-11T10:00:00+08:00",
        "quota_change_no": "m6a6dx8iit7m932dx03ue2lw2ofo2r88",
    }
    order_id, state = engine.submit(signed(keys, processing(keys)), signed(keys, failed))
    assert state == RState.PROCESSING
    assert engine.poll(REDUCTION, order_id) == RState.FAILED
    row = engine.row(REDUCTION, order_id)
    assert row.fail_reason == reason and row.fail_time is not None
    assert row.quota_change_no is None and row.next_poll_at is None
    assert f"FAILED ({reason}); dropped quota_change_no" in engine.reasons(order_id)[-1]


def test_empty_strings_act_as_missing(engine: Engine, keys: KeySet) -> None:
    accepted = {**processing(keys), "reduction_type": "", "fail_reason": "", "reason": ""}
    success = answer(keys, reduction_type="", fail_reason="", fail_time="", reason="")
    order_id, state = engine.submit(signed(keys, accepted), signed(keys, success))
    assert state == RState.PROCESSING  # not a garbled answer retried until the budget ends
    assert engine.row(REDUCTION, order_id).attempts == 1
    assert engine.poll(REDUCTION, order_id) == RState.SUCCESS
    row = engine.row(REDUCTION, order_id)
    assert row.fail_reason is None and row.fail_time is None
    assert "dropped" not in engine.reasons(order_id)[-1]  # empty fields were never sent


def test_receiver_detail_is_stored_and_shown(
    db: Database, credentials: Credentials, clock: FakeClock, keys: KeySet
) -> None:
    engine = Engine(db, credentials, clock)
    with db.transaction() as session:
        order = intake_bill(session, BILL_PAGE["out_bill_no"], now=clock())
    engine.wire.play(signed(keys, {**BILL_PAGE, "sp_mchid": MCHID}))
    try:
        assert engine.rec.process(BILL, order.order_id, order.token or "") == BState.SUCCESS
    finally:
        engine.client.close()
    assert engine.row(BILL, order.order_id).receiver_detail == RECEIVER
    with db.read() as session:
        stored = get_bill(session, id=order.order_id)
        assert bill_dict(stored)["receiver_detail"] == RECEIVER
        console = Console(width=200, record=True)
        console.print(render_show(BILL_VIEW, stored, bill_events(session, order.order_id)))
    shown = console.export_text()
    assert "transaction_id=1217752501201407033233368018" in shown
    assert "type=TRANSACTION_USER" in shown and "transaction_type=WXPAY" in shown


def test_a_bill_of_another_platform_is_never_recorded(
    db: Database, credentials: Credentials, clock: FakeClock, keys: KeySet
) -> None:
    engine = Engine(db, credentials, clock)
    with db.transaction() as session:
        order = intake_bill(session, BILL_PAGE["out_bill_no"], now=clock())
    engine.wire.play(signed(keys, BILL_PAGE))  # sp_mchid 1900001108: not the caller
    try:
        assert engine.rec.process(BILL, order.order_id, order.token or "") == BState.TRACKING
    finally:
        engine.client.close()
    row = engine.row(BILL, order.order_id)
    assert row.provider_state is None and row.receiver_detail is None
    assert "another sp_mchid" in (row.last_error or "")


# -- one budget per target merchant, when the operator reads the pages so -------------------


@pytest.mark.parametrize(("scope", "queried"), [("endpoint", True), ("merchant", False)])
def test_the_rate_limit_scope_on_the_real_client(
    credentials: Credentials, keys: KeySet, scope: Any, queried: bool
) -> None:
    """One grant a second: per endpoint, the submit and the query of one target merchant each
    get theirs; shared, the query is deferred (Throttled) and never reaches the wire."""
    hook = rate_limit_hook(LocalRateLimiter(1), max_wait=0.0, scope=scope)
    wire = ScriptedWire(signed(keys, processing(keys)))
    request = SpecialReductionRequest.create(
        mchid=TARGET,
        bal_account_no=BAL_ACCOUNT_NO,
        out_request_no=NO,
        reduction_type="JUDICIAL_DEDUCTION",
        amount=1,
    )
    with client_on(credentials, wire, before_request=hook) as client:
        client.submit_special_reduction(request)
        if queried:
            client.query_special_reduction(NO, mchid=TARGET, bal_account_no=BAL_ACCOUNT_NO)
        else:
            with pytest.raises(Throttled, match="special_reduction"):
                client.query_special_reduction(NO, mchid=TARGET, bal_account_no=BAL_ACCOUNT_NO)
        # The balance query has its own budget in either scope.
        wire.play(signed(keys, {"balance": 1}))
        assert client.query_balance(mchid=TARGET, bal_account_no=BAL_ACCOUNT_NO).balance == 1
    assert len(wire.sent) == (3 if queried else 2)

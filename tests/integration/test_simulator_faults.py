"""Each fault the simulator injects, as our client observes it, and the ground truth behind it."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fixtures_sim import SIM_BAL_ACCOUNT_NO, SIM_BALANCE, SIM_MCHID, make_sim_client
from tests.fixtures_sim import sim_reduction as reduction
from tests.fixtures_sim import wait_settled as settled
from wxrecon.simulator import AdminClient, FaultKind, FaultRule, FaultSpecError, Simulator
from wxrecon.simulator.faults import FaultPlan
from wxrecon.wechatpay import (
    GarbledResponse,
    NetworkError,
    OutcomeUnknown,
    ProviderBusy,
    ReductionState,
    UnverifiedResponse,
    WeChatPayClient,
    WeChatPayError,
)
from wxrecon.wechatpay.client import BILL_PATH

FAULT_ERRORS = [
    ("system_error", ProviderBusy),
    ("rate_limited", ProviderBusy),
    ("bad_signature", UnverifiedResponse),
    ("signtest", UnverifiedResponse),
    ("stale_timestamp", UnverifiedResponse),
    ("malformed_json", GarbledResponse),
    ("reset", NetworkError),
    ("hang", NetworkError),
    ("apply_then_500", ProviderBusy),
    ("apply_then_reset", NetworkError),
    ("apply_then_hang", NetworkError),
]


@pytest.fixture
def one_try(simulator: Simulator) -> Iterator[WeChatPayClient]:
    """A client that does not retry, so each fault reaches the caller."""
    client = make_sim_client(simulator, attempts=1, read_timeout=0.5)
    yield client
    client.close()


def balance(client: WeChatPayClient) -> int:
    return client.query_balance(mchid=SIM_MCHID, bal_account_no=SIM_BAL_ACCOUNT_NO).balance


def test_every_fault_kind_is_covered() -> None:
    # latency is not an error; docs_literal answers are tested in test_simulator_docs_literal.py
    not_errors = {"latency", "docs_literal"}
    assert {k for k, _ in FAULT_ERRORS} == {k.value for k in FaultKind} - not_errors


@pytest.mark.parametrize(("kind", "error"), FAULT_ERRORS)
def test_each_fault_on_a_query_is_the_right_error(
    one_try: WeChatPayClient, sim_admin: AdminClient, kind: str, error: type[WeChatPayError]
) -> None:
    sim_admin.set_faults(f"{kind}@query_balance#1")
    with pytest.raises(error) as caught:
        balance(one_try)
    if kind == "rate_limited":
        assert caught.value.status == 429 and caught.value.code == "FREQUENCY_LIMITED"
    if kind.endswith("500") or kind == "system_error":
        assert caught.value.status == 500 and caught.value.code == "SYSTEM_ERROR"
    assert balance(one_try) == SIM_BALANCE  # fired once, as scheduled
    stats = sim_admin.stats()
    assert stats["faults"] == {kind: 1}
    [rule] = sim_admin.faults()
    assert rule["fired"] == 1


@pytest.mark.parametrize(
    "kind",
    [
        "apply_then_500",
        "apply_then_reset",
        "apply_then_hang",
        "bad_signature",
        "signtest",
        "stale_timestamp",
        "malformed_json",
    ],
)
def test_a_post_that_took_effect_is_outcome_unknown_and_applied_exactly_once(
    one_try: WeChatPayClient, sim_admin: AdminClient, kind: str
) -> None:
    sim_admin.set_faults(f"{kind}@submit_reduction#1")
    with pytest.raises(OutcomeUnknown) as caught:
        one_try.submit_special_reduction(reduction("F1", 700))
    assert caught.value.maybe_sent is True
    truth = sim_admin.reduction("F1")
    assert truth is not None and truth["submit_count"] == 1  # it did land
    # What the engine does next: the same re-entry, which must not debit twice.
    again = one_try.submit_special_reduction(reduction("F1", 700))
    assert again.out_request_no == "F1"
    assert settled(one_try, "F1").state is ReductionState.SUCCESS
    truth = sim_admin.reduction("F1")
    assert truth is not None
    assert (truth["applied_count"], truth["submit_count"]) == (1, 2)
    assert sim_admin.balance(SIM_MCHID, SIM_BAL_ACCOUNT_NO) == SIM_BALANCE - 700


@pytest.mark.parametrize("kind", ["system_error", "rate_limited", "reset", "hang"])
def test_a_post_refused_before_taking_effect_leaves_no_order(
    one_try: WeChatPayClient, sim_admin: AdminClient, kind: str
) -> None:
    sim_admin.set_faults(f"{kind}@submit_reduction#1")
    with pytest.raises(OutcomeUnknown):
        one_try.submit_special_reduction(reduction("F2", 700))
    assert sim_admin.reduction("F2") is None
    assert sim_admin.balance(SIM_MCHID, SIM_BAL_ACCOUNT_NO) == SIM_BALANCE


def test_apply_then_fail_on_a_not_enough_answer_still_closed_the_order(
    one_try: WeChatPayClient, sim_admin: AdminClient
) -> None:
    from wxrecon.wechatpay import AlreadyExists

    sim_admin.set_faults("apply_then_500@submit_reduction#1")
    with pytest.raises(OutcomeUnknown):
        one_try.submit_special_reduction(reduction("F3", SIM_BALANCE + 1))
    truth = sim_admin.reduction("F3")
    assert truth is not None and truth["state"] == "FAILED" and truth["closed_at_submit"]
    with pytest.raises(AlreadyExists):
        one_try.submit_special_reduction(reduction("F3", SIM_BALANCE + 1))


def test_the_clients_own_retry_recovers_from_one_fault(
    simulator: Simulator, sim_admin: AdminClient
) -> None:
    sim_admin.set_faults("apply_then_500@submit_reduction#1")
    with make_sim_client(simulator, attempts=2) as client:
        answer = client.submit_special_reduction(reduction("F4", 10))
    assert answer.state is ReductionState.PROCESSING
    truth = sim_admin.reduction("F4")
    assert truth is not None and truth["submit_count"] == 2
    assert sim_admin.stats()["requests"]["submit_reduction"] == {"500": 1, "200": 1}


def test_faults_are_scoped_to_their_endpoint(
    one_try: WeChatPayClient, sim_admin: AdminClient
) -> None:
    sim_admin.seed_bill("FB1", 10)
    sim_admin.set_faults("system_error@query_bill")  # always, but only there
    for _ in range(3):
        with pytest.raises(ProviderBusy):
            one_try.query_compensation_bill("FB1")
        assert balance(one_try) == SIM_BALANCE
    sim_admin.set_faults("system_error@all")
    with pytest.raises(ProviderBusy):
        balance(one_try)
    sim_admin.clear_faults()
    assert balance(one_try) == SIM_BALANCE


def test_latency_delays_but_answers(one_try: WeChatPayClient, sim_admin: AdminClient) -> None:
    sim_admin.set_faults({"kind": "latency", "endpoint": "query_balance", "seconds": 0.05})
    assert balance(one_try) == SIM_BALANCE
    assert sim_admin.stats()["faults"] == {"latency": 1}
    # Latency beyond the client's read timeout is a network error, like the real thing.
    sim_admin.set_faults({"kind": "latency", "endpoint": "query_balance", "seconds": 3, "times": 1})
    with pytest.raises(NetworkError):
        balance(one_try)


def test_a_probability_of_zero_never_fires(
    one_try: WeChatPayClient, sim_admin: AdminClient
) -> None:
    sim_admin.set_faults("system_error=0@query_balance")
    for _ in range(10):
        assert balance(one_try) == SIM_BALANCE
    assert sim_admin.faults()[0]["fired"] == 0


def test_faults_can_be_added_at_run_time(sim_admin: AdminClient) -> None:
    sim_admin.set_faults("reset@query_bill#2")
    sim_admin.add_fault("hang", endpoint="submit_reduction", probability=0.5, seconds=1.5)
    rules = sim_admin.faults()
    assert [(r["kind"], r["endpoint"], r["times"]) for r in rules] == [
        ("reset", "query_bill", 2),
        ("hang", "submit_reduction", None),
    ]
    assert rules[1]["seconds"] == 1.5 and rules[1]["probability"] == 0.5


def test_a_reset_is_a_real_tcp_reset(simulator: Simulator, sim_admin: AdminClient) -> None:
    sim_admin.set_faults("reset@query_bill")
    host, port = simulator.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        conn.sendall(f"GET {BILL_PATH}/X HTTP/1.1\r\nHost: sim\r\n\r\n".encode())
        with pytest.raises(ConnectionResetError):  # RST, not an orderly FIN (b"")
            while conn.recv(1024):
                pass
    assert sim_admin.stats()["requests"]["query_bill"] == {"reset": 1}


def test_hangs_end_when_the_client_hangs_up(
    one_try: WeChatPayClient, sim_admin: AdminClient
) -> None:
    sim_admin.set_faults("hang@query_balance#1")
    with pytest.raises(NetworkError):
        balance(one_try)
    assert balance(one_try) == SIM_BALANCE
    assert sim_admin.stats()["requests"]["query_balance"] == {"hang": 1, "200": 1}


# -- rules and their parsing ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("reset", ("reset", 1.0, "all", None)),
        ("system_error=0.05", ("system_error", 0.05, "all", None)),
        ("apply_then_500=1@submit_reduction#3", ("apply_then_500", 1.0, "submit_reduction", 3)),
        ("hang@query_bill", ("hang", 1.0, "query_bill", None)),
        ("reset=1/4@query_bill#2", ("reset", 1.0, "query_bill", 2)),
    ],
)
def test_fault_specs_parse(spec: str, expected: tuple[Any, ...]) -> None:
    rule = FaultRule.parse(spec)
    assert (rule.kind.value, rule.probability, rule.endpoint, rule.times) == expected
    assert rule.every == (4 if "1/4" in spec else None)


@pytest.mark.parametrize(
    "spec",
    [
        "explode",
        "reset=2",
        "reset=-0.1",
        "reset=x",
        "reset@nowhere",
        "reset#x",
        "reset#-1",
        "",
        "reset=1/0",
        "reset=1/x",
    ],
)
def test_bad_fault_specs_are_refused(spec: str) -> None:
    with pytest.raises(FaultSpecError):
        FaultRule.parse(spec)


def test_probabilities_are_honoured_statistically() -> None:
    plan = FaultPlan([FaultRule(FaultKind.SYSTEM_ERROR, probability=0.3)], seed=7)
    fired = sum(bool(plan.draw("query_balance", (FaultKind.SYSTEM_ERROR,))) for _ in range(2000))
    assert 450 < fired < 750


def test_a_schedule_fires_on_every_nth_matching_request(
    one_try: WeChatPayClient, sim_admin: AdminClient
) -> None:
    sim_admin.set_faults("system_error=1/3@query_balance")
    outcomes = []
    for _ in range(9):
        try:
            balance(one_try)
            outcomes.append("ok")
        except ProviderBusy:
            outcomes.append("500")
    assert outcomes == ["ok", "ok", "500"] * 3
    [rule] = sim_admin.faults()
    assert (rule["every"], rule["seen"], rule["fired"]) == (3, 9, 3)


def test_latency_stacks_but_only_one_other_fault_acts() -> None:
    plan = FaultPlan(
        [
            FaultRule(FaultKind.LATENCY, seconds=0.1),
            FaultRule(FaultKind.LATENCY, seconds=0.2),
            FaultRule(FaultKind.RESET),
            FaultRule(FaultKind.SYSTEM_ERROR),
        ]
    )
    kinds = [
        r.kind
        for r in plan.draw(
            "query_bill", (FaultKind.LATENCY, FaultKind.RESET, FaultKind.SYSTEM_ERROR)
        )
    ]
    assert kinds == [FaultKind.LATENCY, FaultKind.LATENCY, FaultKind.RESET]
    assert [r["fired"] for r in plan.rules()] == [1, 1, 1, 0]

"""Docs-literal answers: shaped like the provider pages' examples, never a different truth.

The shaping is pure and seeded, so the first tests draw many answers and check what every
one of them must (and what some of them do); the protocol tests check the same over signed
answers of a running simulator, and that the books never see any of it.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures_sim import (
    SIM_BAL_ACCOUNT_NO,
    SIM_BALANCE,
    SIM_MCHID,
    make_sim_dir,
    start_sim_process,
    start_simulator,
    wait_for,
)
from tests.integration.test_simulator_protocol import Raw
from wxrecon.simulator import AdminClient, AdminError, BusinessConfig, Simulator
from wxrecon.simulator import docs_literal as dl
from wxrecon.wechatpay import signing
from wxrecon.wechatpay.client import BILL_PATH, REDUCTION_PATH, Endpoint

DRAWS = 400

SUCCESS_ANSWER = {
    "mchid": SIM_MCHID,
    "bal_account_no": "c2VhbGVk",
    "out_request_no": "DL1",
    "reduction_type": "JUDICIAL_DEDUCTION",
    "amount": 10,
    "state": "SUCCESS",
    "reason": "case",
    "quota_change_no": "q" * 32,
    "success_time": "2026-01-02T15:04:05+08:00",
}
PROCESSING_ANSWER = {
    k: v for k, v in SUCCESS_ANSWER.items() if k not in ("quota_change_no", "success_time")
} | {"state": "PROCESSING"}
FAILED_ANSWER = {
    "mchid": SIM_MCHID,
    "bal_account_no": "c2VhbGVk",
    "out_request_no": "DL1",
    "state": "FAILED",
    "fail_time": "2026-01-02T15:04:05+08:00",
    "fail_reason": "TIME_OUT_CLOSED",
}


def draws(endpoint: Endpoint, answer: dict[str, Any]) -> list[dict[str, Any]]:
    rng = random.Random(7)
    original = dict(answer)
    out = [dl.shape(endpoint, answer, rng) for _ in range(DRAWS)]
    assert answer == original  # the true answer is never modified in place
    return out


def seen(shaped: list[dict[str, Any]], name: str) -> set[Any]:
    return {repr(a[name]) if isinstance(a.get(name), dict) else a.get(name) for a in shaped}


# -- the shaping itself ----------------------------------------------------------------------


def test_a_final_answer_keeps_its_state_and_gets_other_state_fields_as_placeholders() -> None:
    shaped = draws(Endpoint.QUERY_REDUCTION, SUCCESS_ANSWER)
    assert seen(shaped, "state") == {"SUCCESS"}  # never STATE_UNKNOWN instead of the truth
    assert seen(shaped, "reduction_type") <= {"JUDICIAL_DEDUCTION", "", None}
    # the query page's own 200 example: a SUCCESS with fail_time and fail_reason
    assert seen(shaped, "fail_reason") >= {None, *dl.PLACEHOLDER_FAIL_REASONS}
    assert dl.PLACEHOLDER_TIME in seen(shaped, "fail_time")
    for answer in shaped:
        for name, value in answer.items():  # true fields are kept, left out, or empty
            if name not in ("fail_time", "fail_reason"):
                assert value in (SUCCESS_ANSWER[name], "", None)


def test_optional_fields_are_sometimes_left_out_and_sometimes_empty() -> None:
    shaped = draws(Endpoint.QUERY_REDUCTION, SUCCESS_ANSWER)
    for name in ("mchid", "out_request_no", "quota_change_no", "success_time", "reason"):
        assert any(name not in a for a in shaped), name
        assert any(a.get(name) == "" for a in shaped), name
    assert any("amount" not in a for a in shaped)
    assert any("amount" in a and a["amount"] is None for a in shaped)
    assert all("state" in a for a in shaped)


def test_a_failed_answer_stays_failed_with_its_reason_or_without_one() -> None:
    shaped = draws(Endpoint.QUERY_REDUCTION, FAILED_ANSWER)
    assert seen(shaped, "state") == {"FAILED"}
    assert seen(shaped, "fail_reason") == {"TIME_OUT_CLOSED", "", None}
    assert dl.PLACEHOLDER_QUOTA_CHANGE_NO in seen(shaped, "quota_change_no")
    assert dl.PLACEHOLDER_TIME in seen(shaped, "success_time")


def test_only_an_answer_in_flight_may_say_state_and_type_unknown() -> None:
    shaped = draws(Endpoint.SUBMIT_REDUCTION, PROCESSING_ANSWER)
    assert seen(shaped, "state") == {"PROCESSING", "STATE_UNKNOWN"}
    assert dl.REDUCTION_TYPE_UNKNOWN in seen(shaped, "reduction_type")
    assert "JUDICIAL_DEDUCTION" in seen(shaped, "reduction_type")
    for final in (SUCCESS_ANSWER, FAILED_ANSWER):
        for answer in draws(Endpoint.SUBMIT_REDUCTION, final):
            assert answer["state"] == final["state"]
            assert answer.get("reduction_type") != dl.REDUCTION_TYPE_UNKNOWN


def test_a_bill_keeps_its_required_fields_and_names_wxpay_or_wxvalue_receivers() -> None:
    bill = {
        "sp_mchid": SIM_MCHID,
        "receiver_detail": {
            "receiver": {
                "type": "TRANSACTION_USER",
                "transaction_info": {"transaction_id": "4200" + "1" * 24, "type": "WXPAY"},
            }
        },
        "out_bill_no": "B1",
        "amount": 100,
        "transfer_remark": "remark",
        "bill_id": "1330000" + "2" * 33,
        "state": "SUCCESS",
        "accept_time": "2026-01-02T15:04:05+08:00",
        "success_time": "2026-01-02T15:04:09+08:00",
    }
    shaped = draws(Endpoint.QUERY_BILL, bill)
    for answer in shaped:
        for name in ("sp_mchid", "out_bill_no", "amount", "bill_id", "state", "accept_time"):
            assert answer[name] == bill[name]  # 必填 on the bill page
        receiver = answer["receiver_detail"]["receiver"]
        assert receiver["type"] == "TRANSACTION_USER"
        assert receiver["transaction_info"]["transaction_id"] == "4200" + "1" * 24
    types = {a["receiver_detail"]["receiver"]["transaction_info"]["type"] for a in shaped}
    assert types == {"WXPAY", "WXVALUE"}
    # the bill page's own example: a SUCCESS that carries close_info
    assert repr(dl.PLACEHOLDER_CLOSE_INFO) in seen(shaped, "close_info")
    assert any(a.get("close_info") == {} for a in shaped)
    assert bill["receiver_detail"]["receiver"]["transaction_info"]["type"] == "WXPAY"


def test_a_balance_answer_may_lack_either_field() -> None:
    shaped = draws(Endpoint.QUERY_BALANCE, {"in_transit_reduction_exist": True, "balance": 5})
    assert seen(shaped, "balance") == {5, None}
    assert seen(shaped, "in_transit_reduction_exist") == {True, None}
    assert any("balance" not in a for a in shaped)


# -- over the wire -----------------------------------------------------------------------------


@pytest.fixture
def literal_sim(tmp_path: Path) -> Iterator[Simulator]:
    """Docs-literal answers; reductions stay PROCESSING for an hour."""
    config = BusinessConfig(settle_delay_min=3600, settle_delay_max=3600)
    sim = start_simulator(make_sim_dir(tmp_path / "sim"), config=config, docs_literal=True, seed=3)
    try:
        yield sim
    finally:
        sim.stop()


def signed_json(raw: Raw, response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    signing.check_response_signature(response.headers, response.content, raw.creds.verify_keys)
    data = response.json()
    assert isinstance(data, dict)
    return data


def query(raw: Raw, out_request_no: str) -> Any:
    params = {"mchid": SIM_MCHID, "bal_account_no": raw.enc()}
    return raw.request("GET", f"{REDUCTION_PATH}/{out_request_no}", params=params)


def test_an_order_in_flight_is_sometimes_state_unknown_and_the_books_never_change(
    literal_sim: Simulator,
) -> None:
    raw = Raw(literal_sim)
    try:
        states = [
            signed_json(raw, raw.request("POST", REDUCTION_PATH, body=raw.submit_body("DLW1")))[
                "state"
            ]
            for _ in range(10)  # re-entries with the same parameters
        ]
        states += [signed_json(raw, query(raw, "DLW1"))["state"] for _ in range(30)]
    finally:
        raw.http.close()
    assert set(states) == {"PROCESSING", "STATE_UNKNOWN"}
    with literal_sim.admin() as admin:
        truth = admin.reduction("DLW1")
        assert truth is not None
        assert (truth["state"], truth["applied_count"], truth["submit_count"]) == (
            "PROCESSING",
            0,
            10,
        )
        assert admin.balance(SIM_MCHID, SIM_BAL_ACCOUNT_NO) == SIM_BALANCE


def test_a_settled_order_always_answers_its_final_state(tmp_path: Path) -> None:
    sim = start_simulator(make_sim_dir(tmp_path / "sim"), docs_literal=True, seed=5)
    raw = Raw(sim)
    try:
        signed_json(raw, raw.request("POST", REDUCTION_PATH, body=raw.submit_body("DLS1")))
        admin = sim.admin()
        truth = wait_for(lambda: admin.reduction("DLS1"), lambda r: r["state"] == "SUCCESS")
        answers = [signed_json(raw, query(raw, "DLS1")) for _ in range(30)]
        assert admin.reduction("DLS1") == truth  # reading never changes the books
        admin.close()
    finally:
        raw.http.close()
        sim.stop()
    assert {a["state"] for a in answers} == {"SUCCESS"}
    # fields of FAILED come with the page's placeholders; the true fields are kept or thinned
    assert any(a.get("fail_time") == dl.PLACEHOLDER_TIME for a in answers)
    assert {a.get("quota_change_no") for a in answers} <= {truth["quota_change_no"], "", None}
    assert {a.get("amount") for a in answers} <= {10, None}


def test_a_per_request_fault_shapes_a_share_of_bill_answers(
    simulator: Simulator, sim_admin: AdminClient
) -> None:
    sim_admin.seed_bill("DLB1", 500, outcome="SUCCESS", confirm_after=0, final_after=0)
    sim_admin.set_faults("docs_literal=1/2@query_bill")
    raw = Raw(simulator)
    try:
        answers = [signed_json(raw, raw.request("GET", f"{BILL_PATH}/DLB1")) for _ in range(20)]
    finally:
        raw.http.close()
    types = [a["receiver_detail"]["receiver"]["transaction_info"]["type"] for a in answers]
    assert types[0::2] == ["WXPAY"] * 10  # untouched: the fault fires on every 2nd request
    assert "WXVALUE" in types[1::2]
    assert sim_admin.stats()["faults"]["docs_literal"] == 10
    assert {a["state"] for a in answers} == {"SUCCESS"}


def test_the_mode_is_a_setting_of_the_admin_api(sim_admin: AdminClient) -> None:
    assert sim_admin.config()["docs_literal"] is False
    assert sim_admin.set_config(docs_literal=True)["docs_literal"] is True
    with pytest.raises(AdminError, match="docs_literal must be true or false"):
        sim_admin.set_config(docs_literal="yes")
    sim_admin.reset()  # a reset of faults leaves the mode alone: it is not a fault rule
    assert sim_admin.config()["docs_literal"] is True


def test_serve_docs_literal_turns_the_mode_on(tmp_path: Path) -> None:
    proc = start_sim_process(make_sim_dir(tmp_path / "sim"), "--docs-literal")
    try:
        with proc.admin() as admin:
            assert admin.config()["docs_literal"] is True
    finally:
        proc.stop()

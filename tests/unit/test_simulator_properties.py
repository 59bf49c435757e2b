"""Bad input anywhere in the simulator gets one clear refusal, never a crash or a half-write."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fixtures_sim import SIM_MCHID, make_sim_dir, start_simulator
from wxrecon.simulator import FaultRule, FaultSpecError, LedgerSeed, SimDirError
from wxrecon.simulator.bills import SPEC_FIELDS
from wxrecon.simulator.protocol import submit_params
from wxrecon.simulator.state import ApiError, Books, BusinessConfig
from wxrecon.wechatpay import keys
from wxrecon.wechatpay.client import REDUCTION_PATH

SUBMIT_FIELDS = ("mchid", "out_request_no", "reduction_type", "amount", "reason", "bal_account_no")
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3)
    ),
    max_leaves=8,
)


@given(st.text(max_size=60))
def test_any_ledger_spec_is_a_seed_or_one_clear_error(spec: str) -> None:
    try:
        seed = LedgerSeed.parse(spec)
    except SimDirError as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        assert seed.balance >= 0 and seed.mchid.isdigit()


@given(st.text(max_size=60))
def test_any_fault_spec_is_a_rule_or_one_clear_error(spec: str) -> None:
    try:
        rule = FaultRule.parse(spec)
    except FaultSpecError as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        assert 0 <= rule.probability <= 1


@given(
    st.dictionaries(
        st.sampled_from(["kind", "probability", "endpoint", "times", "seconds", "x"]), json_values
    )
)
def test_any_fault_json_is_a_rule_or_one_clear_error(data: dict[str, Any]) -> None:
    try:
        FaultRule.from_json(data)
    except FaultSpecError as exc:
        assert str(exc)


@given(
    st.dictionaries(
        st.sampled_from(sorted(SPEC_FIELDS)),
        json_values,
    )
)
def test_any_bill_seed_is_accepted_or_refused_without_a_trace(data: dict[str, Any]) -> None:
    books = Books(BusinessConfig())
    try:
        books.seed_bill(0.0, data, SIM_MCHID)
    except ValueError as exc:
        assert str(exc).startswith("bill") or "JSON" in str(exc)
        assert books.bills(0.0) == []
    else:
        assert len(books.bills(0.0)) == 1


@pytest.fixture(scope="module")
def wechatpay_key(tmp_path_factory: pytest.TempPathFactory) -> Any:
    sim_dir = make_sim_dir(tmp_path_factory.mktemp("prop") / "sim")
    return sim_dir.provider_keys.wechatpay_private


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=150)
@given(
    st.dictionaries(
        st.sampled_from(
            ["mchid", "out_request_no", "reduction_type", "amount", "reason", "bal_account_no"]
        ),
        json_values,
    )
)
def test_any_submit_body_is_valid_or_a_param_error_naming_a_field(
    wechatpay_key: Any, body: dict[str, Any]
) -> None:
    try:
        submit_params(body, wechatpay_key)
    except ApiError as exc:
        assert (exc.status, exc.code) == (400, "PARAM_ERROR")
        field = exc.detail["field"]
        assert field in SUBMIT_FIELDS
        if field not in body:
            assert exc.detail["issue"] == "is required"


def test_garbage_requests_never_break_the_server(tmp_path: Any) -> None:
    sim = start_simulator(make_sim_dir(tmp_path / "sim"))
    creds = sim.dir.credentials()
    bodies = [
        b"",
        b"\xff\xfe",
        b"{",
        b"null",
        b"[]",
        json.dumps({"amount": 10**40}).encode(),
        json.dumps(  # complete, but the account number decrypts to a control character
            {
                "mchid": SIM_MCHID,
                "out_request_no": "G1",
                "reduction_type": "FINANCIAL_PENALTY",
                "amount": 1,
                "bal_account_no": keys.encrypt(creds.encrypt_key, "\x00"),
            }
        ).encode(),
    ]
    try:
        with httpx.Client(base_url=sim.url, timeout=5) as http:
            for body in bodies:
                req = http.build_request(
                    "POST",
                    REDUCTION_PATH,
                    content=body,
                    headers={
                        "Content-Type": "application/json",
                        "Accept": "application/json",
                        "Wechatpay-Serial": creds.encrypt_serial,
                    },
                )
                req.headers["Authorization"] = creds.authorization("POST", REDUCTION_PATH, body)
                response = http.send(req)
                assert response.status_code == 400, (body, response.text)
                assert response.json()["code"] in ("PARAM_ERROR", "INVALID_REQUEST")
            with sim.admin() as admin:
                assert admin.reductions() == []
            raw = http.get("/%ZZ/..;/x")  # odd targets are a 404, not a crash
            assert raw.status_code == 404
            assert http.get("/_sim/health").status_code == 200
    finally:
        sim.stop()

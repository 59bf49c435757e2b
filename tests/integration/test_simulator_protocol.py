"""The simulator checks requests like the provider, signs its answers, and limits rates.

Requests here are built by hand (signed with the merchant key through the client's own
``Credentials``) so that each rule can be broken one at a time; wechatpayv3, a client nobody
here wrote, must get through too.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.fixtures_sim import (
    SIM_BAL_ACCOUNT_NO,
    SIM_BALANCE,
    SIM_MCHID,
    make_sim_client,
    make_sim_dir,
    start_simulator,
)
from wxrecon.simulator import AdminClient, SimDir, Simulator
from wxrecon.simulator.material import PLATFORM_CERT, WECHATPAY_PUBLIC_KEY
from wxrecon.simulator.server import is_loopback
from wxrecon.simulator.traffic import Traffic
from wxrecon.wechatpay import ProviderBusy, ReductionState, SpecialReductionRequest, keys, signing
from wxrecon.wechatpay.client import BALANCE_PATH, BILL_PATH, REDUCTION_PATH
from wxrecon.wechatpay.keys import Credentials

UA = "wxrecon-tests/1"


class Raw:
    """Builds signed requests by hand; every part can be overridden to break one rule."""

    def __init__(self, sim: Simulator, *, cert_mode: bool = False) -> None:
        self.sim = sim
        self.creds: Credentials = sim.dir.credentials(cert_mode=cert_mode)
        self.http = httpx.Client(base_url=sim.url, timeout=5)

    def enc(self, plaintext: str = SIM_BAL_ACCOUNT_NO) -> str:
        return self.creds.encrypt(plaintext)

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: Any = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        drop: tuple[str, ...] = (),
        sign: bool = True,
        sign_path: str | None = None,
        sign_body: bytes | None = None,
        timestamp: int | None = None,
        mchid: str | None = None,
        serial_no: str | None = None,
        wechatpay_serial: str | None = "default",
    ) -> httpx.Response:
        if body is not None:
            content = json.dumps(body).encode()
        base = {"User-Agent": UA, "Accept": "application/json"}
        if content is not None:
            base["Content-Type"] = "application/json"
        if wechatpay_serial == "default":
            base["Wechatpay-Serial"] = self.creds.encrypt_serial
        elif wechatpay_serial is not None:
            base["Wechatpay-Serial"] = wechatpay_serial
        base.update(headers or {})
        req = self.http.build_request(method, path, params=params, content=content, headers=base)
        for name in ("Accept", "User-Agent", "Accept-Encoding", "Connection"):
            if name not in base and name in req.headers:
                del req.headers[name]
        if sign:
            auth = signing.build_authorization(
                mchid=mchid or self.creds.mchid,
                serial_no=serial_no or self.creds.cert_serial,
                private_key=self.creds.private_key,
                method=method,
                path_and_query=sign_path or req.url.raw_path.decode(),
                body=req.content if sign_body is None else sign_body,
                timestamp=timestamp,
            )
            req.headers["Authorization"] = auth.header()
        for name in drop:
            del req.headers[name]
        return self.http.send(req)

    def submit_body(self, out_request_no: str = "P1", **change: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "mchid": SIM_MCHID,
            "bal_account_no": self.enc(),
            "out_request_no": out_request_no,
            "reduction_type": "JUDICIAL_DEDUCTION",
            "amount": 10,
            "reason": "rule test",
        }
        body.update(change)
        return {k: v for k, v in body.items() if v is not ...}

    def balance(self, **kw: Any) -> httpx.Response:
        params = kw.pop("params", None) or {"mchid": SIM_MCHID, "bal_account_no": self.enc()}
        return self.request("GET", BALANCE_PATH, params=params, **kw)


@pytest.fixture
def raw(simulator: Simulator) -> Iterator[Raw]:
    r = Raw(simulator)
    yield r
    r.http.close()


def error_of(response: httpx.Response) -> dict[str, Any]:
    assert response.headers.get("Request-ID"), "every answer carries a Request-ID"
    assert "Wechatpay-Signature" not in response.headers  # errors are not signed
    data = response.json()
    assert isinstance(data, dict)
    return data


# -- what a good request gets -------------------------------------------------------------


def test_a_good_request_gets_a_signed_answer_that_verifies(raw: Raw) -> None:
    response = raw.balance()
    assert response.status_code == 200
    h = response.headers
    for name in ("Request-ID", "Wechatpay-Timestamp", "Wechatpay-Nonce", "Wechatpay-Signature"):
        assert h.get(name)
    assert h["Wechatpay-Serial"] == raw.sim.dir.wechatpay_public_key_id
    assert h["Wechatpay-Signature-Type"] == "WECHATPAY2-SHA256-RSA2048"
    assert abs(int(h["Wechatpay-Timestamp"]) - time.time()) < 60
    serial = signing.check_response_signature(h, response.content, raw.creds.verify_keys)
    assert serial == raw.sim.dir.wechatpay_public_key_id
    assert response.json() == {"in_transit_reduction_exist": False, "balance": SIM_BALANCE}


def test_the_signature_covers_the_exact_body_bytes_received(raw: Raw) -> None:
    body = raw.submit_body("EXACT1")
    pretty = json.dumps(body, indent=3, ensure_ascii=False).encode()  # unusual but valid bytes
    ok = raw.request("POST", REDUCTION_PATH, content=pretty)
    assert ok.status_code == 200, ok.text
    compact = json.dumps(raw.submit_body("EXACT2"), separators=(",", ":")).encode()
    reserialised = json.dumps(json.loads(compact)).encode()  # the classic mistake
    bad = raw.request("POST", REDUCTION_PATH, content=compact, sign_body=reserialised)
    assert bad.status_code == 401 and error_of(bad)["code"] == "SIGN_ERROR"


def test_the_signature_covers_the_raw_percent_encoded_query(raw: Raw) -> None:
    enc = raw.enc()
    assert any(c in enc for c in "+/=")
    decoded_target = f"{BALANCE_PATH}?mchid={SIM_MCHID}&bal_account_no={enc}"
    bad = raw.balance(params={"mchid": SIM_MCHID, "bal_account_no": enc}, sign_path=decoded_target)
    assert bad.status_code == 401
    detail = error_of(bad)["detail"]
    assert detail["issue"] == "sign not match"
    assert detail["sign_information"]["url"].startswith(BALANCE_PATH + "?mchid=")


# -- 401 SIGN_ERROR -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "issue"),
    [
        ({"drop": ("Authorization",)}, "missing"),
        ({"sign": False, "headers": {"Authorization": "Basic Zm9vOmJhcg=="}}, "schema"),
        (
            {"sign": False, "headers": {"Authorization": 'WECHATPAY2-SHA256-RSA2048 mchid="1"'}},
            "lacks",
        ),
        ({"mchid": "1900009999"}, "unknown mchid"),
        ({"serial_no": "ABCDEF0123456789"}, "unknown serial_no"),
        ({"timestamp": int(time.time()) - 400}, "timestamp expired"),
        ({"timestamp": int(time.time()) + 400}, "timestamp expired"),
        ({"sign_path": BALANCE_PATH}, "sign not match"),
    ],
)
def test_authorization_problems_are_401_sign_error_with_detail(
    raw: Raw, kw: dict[str, Any], issue: str
) -> None:
    if "timestamp" in kw:  # parametrize ran at collection: recompute relative to now
        kw = {"timestamp": int(time.time()) + (400 if kw["timestamp"] > time.time() else -400)}
    response = raw.balance(**kw)
    assert response.status_code == 401
    error = error_of(response)
    assert error["code"] == "SIGN_ERROR" and error["message"]
    assert issue in error["detail"]["issue"]


def test_a_signature_made_with_another_key_is_refused(raw: Raw) -> None:
    raw.creds = raw.sim.dir.credentials()
    other = Credentials(
        mchid=raw.creds.mchid,
        cert_serial=raw.creds.cert_serial,
        private_key=raw.sim.dir.provider_keys.platform_private,  # right serial, wrong key
        verify_keys=raw.creds.verify_keys,
        encrypt_serial=raw.creds.encrypt_serial,
    )
    raw.creds = other
    response = raw.balance()
    assert response.status_code == 401 and error_of(response)["code"] == "SIGN_ERROR"


# -- 400 INVALID_REQUEST ------------------------------------------------------------------


@pytest.mark.parametrize("header", ["User-Agent", "Accept"])
def test_missing_user_agent_or_accept_is_invalid_request(raw: Raw, header: str) -> None:
    response = raw.balance(drop=(header,))
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "INVALID_REQUEST" and error["detail"]["field"] == header


def test_post_without_json_content_type_is_invalid_request(raw: Raw) -> None:
    response = raw.request(
        "POST", REDUCTION_PATH, body=raw.submit_body(), headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 400 and error_of(response)["code"] == "INVALID_REQUEST"


@pytest.mark.parametrize("endpoint", ["submit", "query", "balance"])
def test_wechatpay_serial_is_required_on_aggracct_endpoints(raw: Raw, endpoint: str) -> None:
    params = {"mchid": SIM_MCHID, "bal_account_no": raw.enc()}
    if endpoint == "submit":
        response = raw.request(
            "POST", REDUCTION_PATH, body=raw.submit_body(), wechatpay_serial=None
        )
    elif endpoint == "query":
        response = raw.request("GET", f"{REDUCTION_PATH}/P1", params=params, wechatpay_serial=None)
    else:
        response = raw.balance(wechatpay_serial=None)
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "INVALID_REQUEST" and error["detail"]["field"] == "Wechatpay-Serial"
    unknown = raw.balance(wechatpay_serial="PUB_KEY_ID_0000000000000000000000000000")
    assert unknown.status_code == 400 and error_of(unknown)["code"] == "PARAM_ERROR"


def test_the_bill_query_needs_no_wechatpay_serial(raw: Raw, sim_admin: AdminClient) -> None:
    sim_admin.seed_bill("BQ1", 100)
    response = raw.request("GET", f"{BILL_PATH}/BQ1", wechatpay_serial=None)
    assert response.status_code == 200
    assert response.headers["Wechatpay-Serial"] == raw.sim.dir.wechatpay_public_key_id


def test_unknown_paths_and_methods(raw: Raw) -> None:
    missing = raw.request("GET", "/v3/no/such/thing")
    assert missing.status_code == 404 and error_of(missing)["code"] == "NOT_FOUND"
    wrong = raw.request("GET", REDUCTION_PATH)
    assert wrong.status_code == 405 and error_of(wrong)["code"] == "INVALID_REQUEST"


# -- 400 PARAM_ERROR ----------------------------------------------------------------------


def test_bal_account_no_that_does_not_decrypt_is_param_error(raw: Raw) -> None:
    sim_dir = raw.sim.dir
    merchant_key = sim_dir.credentials().private_key.public_key()
    wrong_key = keys.encrypt(merchant_key, SIM_BAL_ACCOUNT_NO)  # encrypted for the wrong party
    for value in ("not-base64!!", "QUJD", wrong_key):
        response = raw.balance(params={"mchid": SIM_MCHID, "bal_account_no": value})
        assert response.status_code == 400
        error = error_of(response)
        assert error["code"] == "PARAM_ERROR" and error["detail"]["field"] == "bal_account_no"
        assert SIM_BAL_ACCOUNT_NO not in response.text
    post = raw.request("POST", REDUCTION_PATH, body=raw.submit_body(bal_account_no=wrong_key))
    assert post.status_code == 400 and error_of(post)["detail"]["field"] == "bal_account_no"


def test_encryption_must_match_the_key_wechatpay_serial_names(raw: Raw) -> None:
    platform = keys.load_certificate(raw.sim.dir.file(PLATFORM_CERT), "platform")
    for_platform = keys.encrypt(keys.certificate_key(platform, "platform"), SIM_BAL_ACCOUNT_NO)
    # Encrypted for the platform certificate but labelled as the public key: refused.
    response = raw.balance(params={"mchid": SIM_MCHID, "bal_account_no": for_platform})
    assert response.status_code == 400 and error_of(response)["code"] == "PARAM_ERROR"
    # Labelled correctly: accepted and answered with the platform certificate's signature.
    serial = raw.sim.dir.platform_cert_serial
    ok = raw.balance(
        params={"mchid": SIM_MCHID, "bal_account_no": for_platform}, wechatpay_serial=serial
    )
    assert ok.status_code == 200
    assert ok.headers["Wechatpay-Serial"] == serial
    key = keys.certificate_key(platform, "platform")
    assert signing.check_response_signature(ok.headers, ok.content, {serial: key}) == serial


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"mchid": ...}, "mchid"),
        ({"mchid": "19000x"}, "mchid"),
        ({"mchid": 1900000001}, "mchid"),
        ({"out_request_no": ...}, "out_request_no"),
        ({"out_request_no": "A" * 33}, "out_request_no"),
        ({"out_request_no": "bad-chars!"}, "out_request_no"),
        ({"reduction_type": ...}, "reduction_type"),
        ({"reduction_type": "REFUND"}, "reduction_type"),
        ({"amount": ...}, "amount"),
        ({"amount": 0}, "amount"),
        ({"amount": -5}, "amount"),
        ({"amount": "10"}, "amount"),
        ({"amount": 1.5}, "amount"),
        ({"amount": True}, "amount"),
        ({"reason": 12}, "reason"),
        ({"reason": "x" * 513}, "reason"),
        ({"bal_account_no": ...}, "bal_account_no"),
        ({"bal_account_no": "A" * 1025}, "bal_account_no"),
    ],
)
def test_submit_field_validation_is_param_error_naming_the_field(
    raw: Raw, sim_admin: AdminClient, change: dict[str, Any], field: str
) -> None:
    response = raw.request(
        "POST", REDUCTION_PATH, body=raw.submit_body(**{"out_request_no": "V1", **change})
    )
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "PARAM_ERROR"
    assert error["detail"]["field"] == field
    assert sim_admin.reductions() == []  # nothing happened


def test_query_field_validation(raw: Raw) -> None:
    no_mchid = raw.balance(params={"bal_account_no": raw.enc()})
    assert no_mchid.status_code == 400 and error_of(no_mchid)["detail"]["field"] == "mchid"
    bad_no = raw.request(
        "GET",
        f"{REDUCTION_PATH}/bad%21no",
        params={"mchid": SIM_MCHID, "bal_account_no": raw.enc()},
    )
    assert bad_no.status_code == 400 and error_of(bad_no)["detail"]["field"] == "out_request_no"
    bill = raw.request("GET", f"{BILL_PATH}/{'B' * 33}")
    assert bill.status_code == 400 and error_of(bill)["detail"]["field"] == "out_bill_no"


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b'"text"'])
def test_a_body_that_is_not_a_json_object_is_param_error(raw: Raw, content: bytes) -> None:
    response = raw.request("POST", REDUCTION_PATH, content=content)
    assert response.status_code == 400 and error_of(response)["code"] == "PARAM_ERROR"


# -- an independent client: wechatpayv3 -----------------------------------------------------


def test_wechatpayv3_queries_a_reduction_and_its_signature_checks_pass(
    simulator: Simulator, sim_dir: SimDir
) -> None:
    pytest.importorskip("wechatpayv3")
    from wechatpayv3.core import Core
    from wechatpayv3.type import RequestType
    from wechatpayv3.utils import rsa_decrypt, rsa_encrypt

    core = Core(
        mchid=sim_dir.mchid,
        cert_serial_no=sim_dir.mch_cert_serial,
        private_key=sim_dir.file("apiclient_key.pem").read_text(),
        apiv3_key="0" * 32,
        public_key=sim_dir.file(WECHATPAY_PUBLIC_KEY).read_text(),
        public_key_id=sim_dir.wechatpay_public_key_id,
        timeout=5,
    )
    core._gate_way = simulator.url  # its one switch for the host
    public_key = core._public_key
    body = {
        "mchid": SIM_MCHID,
        "bal_account_no": rsa_encrypt(SIM_BAL_ACCOUNT_NO, public_key),
        "out_request_no": "V3ORDER1",
        "reduction_type": "FINANCIAL_PENALTY",
        "amount": 42,
        "reason": "独立客户端",
    }
    code, text = core.request(REDUCTION_PATH, method=RequestType.POST, data=body)
    assert code == 200, text
    assert json.loads(text)["state"] == ReductionState.PROCESSING
    enc = quote(rsa_encrypt(SIM_BAL_ACCOUNT_NO, public_key), safe="")
    path = f"{REDUCTION_PATH}/V3ORDER1?mchid={SIM_MCHID}&bal_account_no={enc}"
    code, text = core.request(path)  # raises if the answer's signature does not verify
    assert code == 200, text
    data = json.loads(text)
    assert data["out_request_no"] == "V3ORDER1"
    merchant_key = core._private_key
    assert rsa_decrypt(data["bal_account_no"], merchant_key) == SIM_BAL_ACCOUNT_NO
    assert (
        core._verify_signature(
            {
                "Wechatpay-Signature": "WECHATPAY/SIGNTEST/AAAA",
                "Wechatpay-Timestamp": str(int(time.time())),
                "Wechatpay-Nonce": "N",
                "Wechatpay-Serial": sim_dir.wechatpay_public_key_id,
                "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048",
            },
            text,
        )
        is False
    )  # and its check is a real one


# -- certificate mode -----------------------------------------------------------------------


class SerialRecorder(httpx.BaseTransport):
    """A real transport that notes the ``Wechatpay-Serial`` of every answer."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.serials: list[str | None] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        self.serials.append(response.headers.get("Wechatpay-Serial"))
        return response

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def cert_sim(tmp_path: Path) -> Iterator[Simulator]:
    sim = start_simulator(make_sim_dir(tmp_path / "certsim", cert_mode=True))
    yield sim
    sim.stop()


def test_cert_mode_every_endpoint_is_signed_with_the_platform_certificate(
    cert_sim: Simulator,
) -> None:
    env = cert_sim.client_env()
    assert "WXRECON_PLATFORM_CERT_PATHS" in env and "WXRECON_WECHATPAY_PUBLIC_KEY_ID" not in env
    recorder = SerialRecorder()
    with make_sim_client(cert_sim, cert_mode=True, transport=recorder) as client:
        assert client.credentials.encrypt_serial == cert_sim.dir.platform_cert_serial
        with cert_sim.admin() as admin:
            admin.seed_bill("CB1", 100, confirm_after=0, final_after=0)
        order = SpecialReductionRequest.create(
            mchid=SIM_MCHID,
            bal_account_no=SIM_BAL_ACCOUNT_NO,
            out_request_no="C1",
            reduction_type="FINANCIAL_PENALTY",
            amount=5,
        )
        assert client.submit_special_reduction(order).state is ReductionState.PROCESSING
        client.query_special_reduction("C1", mchid=SIM_MCHID, bal_account_no=SIM_BAL_ACCOUNT_NO)
        assert client.query_balance(mchid=SIM_MCHID, bal_account_no=SIM_BAL_ACCOUNT_NO).balance
        assert client.query_compensation_bill("CB1").state == "SUCCESS"
    assert recorder.serials == [cert_sim.dir.platform_cert_serial] * 4


def test_public_key_client_against_cert_mode_merchant_fails_verification(
    cert_sim: Simulator,
) -> None:
    """A bill query names no key, so the merchant's mode decides: a client holding only the
    public key cannot verify the platform certificate's signature."""
    from wxrecon.wechatpay import UnverifiedResponse

    with cert_sim.admin() as admin:
        admin.seed_bill("CB2", 100)
    with (
        make_sim_client(cert_sim, cert_mode=False, attempts=1) as client,
        pytest.raises(UnverifiedResponse),
    ):
        client.query_compensation_bill("CB2")


# -- rate limit -----------------------------------------------------------------------------


def test_the_window_admits_100_per_second_per_endpoint_and_target() -> None:
    traffic = Traffic(limit=100)
    t0 = 1000.0
    assert all(traffic.arrive("query_balance", "1", t0 + i * 0.009) for i in range(100))
    assert not traffic.arrive("query_balance", "1", t0 + 0.95)  # the 101st inside one second
    assert traffic.arrive("query_balance", "2", t0 + 0.95)  # another target merchant
    assert traffic.arrive("query_reduction", "1", t0 + 0.95)  # another endpoint
    assert traffic.arrive("query_balance", "1", t0 + 1.0 + 0.0005)  # the oldest left the window
    stats = traffic.snapshot()
    # Peaks count every request seen, the refused one too.
    assert stats["peak_per_second"]["by_endpoint"]["query_balance"] == 101
    assert stats["peak_per_second"]["overall"] == 102
    assert stats["peak_per_second"]["overall_mchid"] == "1"


def test_beyond_the_limit_the_answer_is_429_frequency_limited(
    simulator: Simulator, sim_admin: AdminClient, raw: Raw
) -> None:
    sim_admin.set_config(rate_limit=2)  # small, so the test does not depend on speed
    statuses = [raw.balance().status_code for _ in range(12)]
    assert statuses[:2] == [200, 200]
    assert 429 in statuses
    limited = raw.balance()
    if limited.status_code == 429:
        assert error_of(limited)["code"] == "FREQUENCY_LIMITED"
    stats = sim_admin.stats()
    assert stats["requests"]["query_balance"].get("429", 0) >= 1
    assert stats["peak_per_second"]["by_endpoint"]["query_balance"] >= 3
    with make_sim_client(simulator, attempts=1) as client:
        sim_admin.set_config(rate_limit=0)
        client.query_balance(mchid=SIM_MCHID, bal_account_no=SIM_BAL_ACCOUNT_NO)
        sim_admin.set_config(rate_limit=1)
        with pytest.raises(ProviderBusy):
            for _ in range(5):
                client.query_balance(mchid=SIM_MCHID, bal_account_no=SIM_BAL_ACCOUNT_NO)


# -- admin API ------------------------------------------------------------------------------


def test_admin_api_is_for_loopback_peers_only() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("127.8.9.10") and is_loopback("::1")
    assert is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("10.0.0.5") and not is_loopback("192.168.1.2")
    assert not is_loopback("::ffff:10.0.0.5") and not is_loopback("garbage")


def test_admin_api_refuses_bad_input_with_one_line(sim_admin: AdminClient) -> None:
    from wxrecon.simulator import AdminError

    with pytest.raises(AdminError, match="balance"):
        sim_admin.seed_ledger(SIM_MCHID, "X1", -1)
    with pytest.raises(AdminError, match="fault kind"):
        sim_admin.set_faults({"kind": "explode"})
    with pytest.raises(AdminError, match="probability"):
        sim_admin.set_faults({"kind": "reset", "probability": 2})
    with pytest.raises(AdminError, match="endpoint"):
        sim_admin.set_faults({"kind": "reset", "endpoint": "everything"})
    with pytest.raises(AdminError, match="amount"):
        sim_admin.seed_bill("BX", 0)
    with pytest.raises(AdminError, match="settle"):
        sim_admin.set_config(settle_delay_min=5, settle_delay_max=1)
    sim_admin.seed_bill("BX", 1)
    with pytest.raises(AdminError, match="exists"):
        sim_admin.seed_bill("BX", 1)
    assert sim_admin.faults() == []


def test_reset_restores_the_seeded_ledgers(sim_client: Any, sim_admin: AdminClient) -> None:
    sim_admin.seed_ledger(SIM_MCHID, SIM_BAL_ACCOUNT_NO, 5)
    sim_admin.seed_bill("BR", 1)
    sim_admin.set_faults("reset@query_bill")
    sim_admin.reset()
    assert sim_admin.balance(SIM_MCHID, SIM_BAL_ACCOUNT_NO) == SIM_BALANCE
    assert sim_admin.bills() == [] and sim_admin.faults() == []
    assert sim_admin.stats()["requests_total"] == 0


def test_http_level_refusals_are_json_with_a_request_id(simulator: Simulator) -> None:
    with httpx.Client(base_url=simulator.url, timeout=5) as http:
        head = http.head(BALANCE_PATH)
        assert head.status_code == 501 and head.headers.get("Request-ID")
        chunked = http.post(
            REDUCTION_PATH, content=iter([b"{}"]), headers={"Content-Type": "application/json"}
        )
        assert chunked.status_code == 400
        assert chunked.json()["code"] == "INVALID_REQUEST" and chunked.headers.get("Request-ID")
        assert http.get("/_sim/health").status_code == 200  # the server carries on


def test_at_the_default_limit_the_101st_request_within_one_second_is_refused(
    simulator: Simulator, raw: Raw, sim_admin: AdminClient
) -> None:
    assert sim_admin.config()["rate_limit"] == 100
    frozen = time.time()
    simulator.provider.clock = lambda: frozen  # every request lands in the same instant
    statuses = [raw.balance().status_code for _ in range(100)]
    assert statuses == [200] * 100
    refused = raw.balance()
    assert refused.status_code == 429 and error_of(refused)["code"] == "FREQUENCY_LIMITED"
    # Other endpoints of the same merchant have their own window.
    query = raw.request(
        "GET", f"{REDUCTION_PATH}/NOPE", params={"mchid": SIM_MCHID, "bal_account_no": raw.enc()}
    )
    assert query.status_code == 404
    simulator.provider.clock = lambda: frozen + 1.01  # a second later the window is clear
    assert raw.balance().status_code == 200
    peaks = sim_admin.stats()["peak_per_second"]
    assert peaks["by_endpoint"]["query_balance"] == 101
    assert peaks["overall"] == 102 and peaks["overall_mchid"] == SIM_MCHID

"""Retries, failover, error classification and hooks of the client, on the scripted wire
(``wxrecon.wechatpay.testing.ScriptedWire``); the money paths run on real sockets too, in
``test_client_wires.py``."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fixtures_keys import (
    BAL_ACCOUNT_NO,
    MCHID,
    PUB_KEY_ID,
    KeySet,
    reduction_answer,
    signed_headers,
)
from wxrecon.config import Settings
from wxrecon.provider import build_client
from wxrecon.wechatpay import keys as keys_module
from wxrecon.wechatpay import signing
from wxrecon.wechatpay.client import Endpoint, RetryPolicy, Timeouts, WeChatPayClient
from wxrecon.wechatpay.errors import (
    AlreadyExists,
    GarbledResponse,
    InvalidRequest,
    NetworkError,
    NotEnough,
    NotFound,
    NotYet,
    OutcomeUnknown,
    ProviderBusy,
    Rejected,
    Throttled,
    TransientError,
    UnexpectedAnswer,
    WeChatPayError,
)
from wxrecon.wechatpay.keys import CredentialError, Credentials
from wxrecon.wechatpay.resources import ReductionState, ReductionType, SpecialReductionRequest
from wxrecon.wechatpay.testing import ScriptedWire, Sent, json_reply, reply
from wxrecon.wechatpay.wire import PoolWire, Proxy, Reply, WireError, failure

PRIMARY = "https://primary.test"
BACKUP = "https://backup.test"
BALANCE = {"balance": 12345, "in_transit_reduction_exist": True}
TARGET = "1900000002"  # a target merchant other than our own mchid


def _request(out_request_no: str = "R1", mchid: str = MCHID) -> SpecialReductionRequest:
    return SpecialReductionRequest.create(
        mchid=mchid,
        bal_account_no=BAL_ACCOUNT_NO,
        out_request_no=out_request_no,
        reduction_type="FINANCIAL_PENALTY",
        amount=100,
        reason="罚款",
    )


def signed_response(
    keys: KeySet, data: Any, status: int = 200, *, raw: bytes | None = None, **kw: Any
) -> Reply:
    """A provider answer signed with the test platform key."""
    body = raw if raw is not None else json.dumps(data, ensure_ascii=False).encode()
    return reply(status, body, signed_headers(keys, body, **kw))


def error_response(
    status: int, code: str | None, message: str = "", request_id: str = "REQ-ERR-1"
) -> Reply:
    payload: dict[str, Any] = {"message": message}
    if code is not None:
        payload["code"] = code
    return json_reply(status, payload, {"Request-ID": request_id})


Script = ScriptedWire


def mock_client(
    credentials: Credentials, script: ScriptedWire, *, retry: RetryPolicy | None = None, **kw: Any
) -> WeChatPayClient:
    """A client on the scripted wire that never sleeps between retries."""
    return WeChatPayClient(
        credentials,
        wire=script,
        retry=retry or RetryPolicy(attempts=3, initial_wait=0, max_wait=0),
        **kw,
    )


def _balance(client: WeChatPayClient) -> Any:
    return client.query_balance(mchid=MCHID, bal_account_no=BAL_ACCOUNT_NO)


# -- results --------------------------------------------------------------------------------


def test_verified_answers_become_typed_results(keys: KeySet, credentials: Credentials) -> None:
    script = Script(signed_response(keys, BALANCE, request_id="RID-1"))
    with mock_client(credentials, script) as client:
        result = _balance(client)
    assert result.balance == 12345 and result.in_transit_reduction_exist is True
    assert result.request_id == "RID-1"


def test_query_reduction_decrypts_and_checks(keys: KeySet, credentials: Credentials) -> None:
    answer = reduction_answer(
        keys, "R1", "SUCCESS", extra={"amount": 100, "success_time": "2025-01-01T08:00:00+08:00"}
    )
    script = Script(signed_response(keys, answer))
    with mock_client(credentials, script) as client:
        r = client.query_special_reduction("R1", mchid=MCHID, bal_account_no=BAL_ACCOUNT_NO)
    assert r.state is ReductionState.SUCCESS and r.amount == 100
    assert r.bal_account_no == BAL_ACCOUNT_NO  # decrypted with the merchant key
    assert r.success_time is not None and r.success_time.tzinfo is not None
    (request,) = script.sent
    assert request.path == "/v3/aggracct-bc/wb-channel/special-reduction/R1"
    assert request.params["mchid"] == MCHID


def test_ledger_number_is_decrypted_only_when_read(keys: KeySet, credentials: Credentials) -> None:
    """A ciphertext that does not decrypt fails on reading the field, with the Request-ID;
    the rest of the answer is usable without the private-key operation."""
    answer = reduction_answer(keys, "R1", "SUCCESS")
    answer["bal_account_no"] = keys.encrypt_for_merchant("x")[:-8] + "AAAAAAA="
    script = Script(
        signed_response(keys, answer, request_id="RID-Q"),
        signed_response(keys, answer, request_id="RID-P"),
    )
    with mock_client(credentials, script) as client:
        r = client.query_special_reduction("R1", mchid=MCHID, bal_account_no=BAL_ACCOUNT_NO)
        posted = client.submit_special_reduction(_request())
    assert r.state is ReductionState.SUCCESS and r.request_id == "RID-Q"
    assert posted.state is ReductionState.SUCCESS and posted.request_id == "RID-P"
    for result, rid in ((r, "RID-Q"), (posted, "RID-P")):
        with pytest.raises(GarbledResponse, match="bal_account_no does not decrypt") as info:
            _ = result.bal_account_no
        assert info.value.request_id == rid


def test_bill_query_has_no_encrypted_fields(keys: KeySet, credentials: Credentials) -> None:
    bill = {"out_bill_no": "B1", "state": "ACCEPTED", "amount": 5}
    script = Script(signed_response(keys, bill))
    with mock_client(credentials, script) as client:
        assert client.query_compensation_bill("B1").amount == 5
    (request,) = script.sent
    assert request.target == (
        "/v3/platsolution/ecommerce/mch-transfer/compensate-bills/out-bill-no/B1"
    )
    assert request.header("Wechatpay-Serial") is None
    assert request.header("Accept") == "application/json"
    assert str(request.header("User-Agent")).startswith("wxrecon/")


def test_submit_result(keys: KeySet, credentials: Credentials) -> None:
    script = Script(signed_response(keys, reduction_answer(keys, "R1"), request_id="RID-2"))
    with mock_client(credentials, script) as client:
        r = client.submit_special_reduction(_request())
    assert r.state is ReductionState.PROCESSING and r.request_id == "RID-2"


# -- classification -------------------------------------------------------------------------

RETRIED = [
    (500, "SYSTEM_ERROR", ProviderBusy),
    (503, None, ProviderBusy),
    (429, "FREQUENCY_LIMITED", ProviderBusy),
    (429, "RATELIMIT_EXCEEDED", ProviderBusy),
    (400, "RATE_LIMITED", ProviderBusy),
    (202, None, ProviderBusy),
]
FINAL = [
    (400, "PARAM_ERROR", Rejected),
    (400, "INVALID_REQUEST", Rejected),
    (401, "SIGN_ERROR", Rejected),
    (401, None, Rejected),
    (403, "NO_AUTH", Rejected),
    (403, "NOT_ENOUGH", NotEnough),
    (400, "ALREADY_EXISTS", AlreadyExists),
    (404, "NOT_FOUND", NotFound),
    (404, "ORDER_NOT_EXIST", NotFound),
    (404, None, NotFound),
    (403, "SOMETHING_NEW", UnexpectedAnswer),
    (418, None, UnexpectedAnswer),
    (302, None, UnexpectedAnswer),
]


@pytest.mark.parametrize(("status", "code", "kind"), RETRIED)
def test_retryable_answers_on_get(
    credentials: Credentials, status: int, code: str | None, kind: type[Exception]
) -> None:
    script = Script(error_response(status, code, "系统繁忙\n请稍后", request_id="RID-9"))
    with mock_client(credentials, script) as client, pytest.raises(kind) as info:
        _balance(client)
    assert len(script.sent) == 3
    err = info.value
    assert isinstance(err, TransientError) and err.status == status and err.code == code
    line = str(err)
    assert "\n" not in line and f"HTTP {status}" in line and "(Request-ID RID-9)" in line
    assert "系统繁忙 请稍后" in line


@pytest.mark.parametrize(("status", "code", "kind"), FINAL)
def test_final_answers_are_not_retried(
    credentials: Credentials, status: int, code: str | None, kind: type[Exception]
) -> None:
    script = Script(error_response(status, code, "参数错误", request_id="RID-4"))
    with mock_client(credentials, script) as client, pytest.raises(kind) as info:
        _balance(client)
    assert len(script.sent) == 1
    err = info.value
    assert isinstance(err, WeChatPayError) and not isinstance(err, TransientError)
    assert err.status == status and err.request_id == "RID-4"
    assert str(err) == " ".join(
        p for p in (f"HTTP {status}", code, "参数错误", "(Request-ID RID-4)") if p
    )


@pytest.mark.parametrize(("status", "code", "kind"), FINAL[:7])
def test_final_answers_to_a_post_are_not_wrapped(
    credentials: Credentials, status: int, code: str | None, kind: type[Exception]
) -> None:
    script = Script(error_response(status, code, "x"))
    with mock_client(credentials, script) as client, pytest.raises(kind):
        client.submit_special_reduction(_request())
    assert len(script.sent) == 1


@pytest.mark.parametrize(
    "body", [b"", b"<html>502</html>", b"[1,2]", b'{"code": 5}', b"[" * 50_000, b"\xff\xfe"]
)
def test_error_bodies_of_any_shape(credentials: Credentials, body: bytes) -> None:
    script = Script(reply(400, body))
    with mock_client(credentials, script) as client, pytest.raises(UnexpectedAnswer) as info:
        _balance(client)
    assert info.value.code is None and "\n" not in str(info.value)


def test_retried_then_answered(keys: KeySet, credentials: Credentials) -> None:
    script = Script(
        error_response(500, "SYSTEM_ERROR"),
        reply(202),
        signed_response(keys, BALANCE),
    )
    with mock_client(credentials, script) as client:
        assert _balance(client).balance == 12345
    assert len(script.sent) == 3
    nonces = {
        signing.parse_authorization(str(r.header("Authorization"))).nonce_str for r in script.sent
    }
    assert len(nonces) == 3  # every attempt is signed afresh


def test_waits_between_attempts_are_bounded_jitter(credentials: Credentials) -> None:
    waits: list[float] = []
    script = Script(error_response(500, "SYSTEM_ERROR"))
    client = WeChatPayClient(
        credentials,
        wire=script,
        retry=RetryPolicy(attempts=4, initial_wait=0.2, max_wait=1.0),
        sleep=waits.append,
    )
    with client, pytest.raises(ProviderBusy):
        _balance(client)
    assert len(script.sent) == 4 and len(waits) == 3
    assert all(0 <= w <= 1.0 for w in waits)


# -- network errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "maybe_sent"),
    [
        (failure("ConnectError"), False),
        (failure("ConnectTimeout"), False),
        (failure("PoolTimeout"), False),
        (failure("ReadTimeout"), True),
        (failure("RemoteProtocolError"), True),
        (failure("ReadError"), True),
        (failure("WriteError"), True),
    ],
)
def test_network_errors_on_get(credentials: Credentials, exc: Exception, maybe_sent: bool) -> None:
    script = Script(exc)
    with (
        mock_client(credentials, script, backup_url=None) as client,
        pytest.raises(NetworkError) as info,
    ):
        _balance(client)
    assert len(script.sent) == 3
    assert info.value.maybe_sent is maybe_sent
    assert exc.name in str(info.value)


def test_post_exhausted_is_an_unknown_outcome(credentials: Credentials) -> None:
    script = Script(error_response(500, "SYSTEM_ERROR", request_id="RID-5"))
    with mock_client(credentials, script) as client, pytest.raises(OutcomeUnknown) as info:
        client.submit_special_reduction(_request())
    assert len(script.sent) == 3
    assert isinstance(info.value.cause, ProviderBusy)
    assert info.value.maybe_sent and info.value.status == 500 and info.value.request_id == "RID-5"
    assert str(info.value).startswith("HTTP 500 SYSTEM_ERROR outcome unknown:")


@pytest.mark.parametrize("exc", [failure("ReadTimeout"), failure("RemoteProtocolError")])
def test_post_lost_answer_is_an_unknown_outcome(credentials: Credentials, exc: Exception) -> None:
    script = Script(exc)
    with (
        mock_client(credentials, script, backup_url=None) as client,
        pytest.raises(OutcomeUnknown) as info,
    ):
        client.submit_special_reduction(_request())
    assert isinstance(info.value.cause, NetworkError) and info.value.maybe_sent


def test_post_never_connected_says_nothing_was_sent(credentials: Credentials) -> None:
    script = Script(failure("ConnectError"))
    with (
        mock_client(credentials, script, backup_url=None) as client,
        pytest.raises(OutcomeUnknown) as info,
    ):
        client.submit_special_reduction(_request())
    assert info.value.maybe_sent is False


def test_maybe_sent_sticks_once_any_attempt_may_have_landed(credentials: Credentials) -> None:
    script = Script(
        error_response(500, "SYSTEM_ERROR"), failure("ConnectError"), failure("ConnectError")
    )
    with (
        mock_client(credentials, script, backup_url=None) as client,
        pytest.raises(OutcomeUnknown) as info,
    ):
        client.submit_special_reduction(_request())
    assert isinstance(info.value.cause, NetworkError)
    assert info.value.maybe_sent is True


def test_post_reentry_resends_the_same_parameters_with_a_fresh_signature(
    keys: KeySet, credentials: Credentials
) -> None:
    script = Script(
        failure("ReadTimeout"),
        error_response(500, "SYSTEM_ERROR"),
        signed_response(keys, reduction_answer(keys, "R1")),
    )
    with mock_client(credentials, script) as client:
        client.submit_special_reduction(_request())
    assert len(script.sent) == 3
    bodies = [r.body for r in script.sent]
    assert bodies[0] == bodies[1] == bodies[2]  # byte-identical re-entry
    plain = json.loads(bodies[0])
    assert plain["out_request_no"] == "R1" and plain["amount"] == 100 and plain["mchid"] == MCHID
    from wxrecon.wechatpay.keys import decrypt

    assert decrypt(keys.wechatpay_key, plain["bal_account_no"]) == BAL_ACCOUNT_NO
    auths = [signing.parse_authorization(str(r.header("Authorization"))) for r in script.sent]
    assert len({a.nonce_str for a in auths}) == 3 and len({a.signature for a in auths}) == 3
    for request, auth in zip(script.sent, auths, strict=True):
        message = signing.request_message(
            "POST", request.target, auth.timestamp, auth.nonce_str, request.body
        )
        assert signing.verify(keys.merchant_key.public_key(), message, auth.signature)


def test_submit_garbled_but_signed_answer_is_an_unknown_outcome(
    keys: KeySet, credentials: Credentials
) -> None:
    script = Script(signed_response(keys, {"out_request_no": "R1"}, request_id="RID-7"))
    with mock_client(credentials, script) as client, pytest.raises(OutcomeUnknown) as info:
        client.submit_special_reduction(_request())
    assert isinstance(info.value.cause, GarbledResponse)
    assert info.value.request_id == "RID-7" and info.value.status == 200


# -- failover -------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _failover_client(credentials: Credentials, script: Script, clock: Clock) -> WeChatPayClient:
    return mock_client(
        credentials, script, base_url=PRIMARY, backup_url=BACKUP, failover_cooldown=60, clock=clock
    )


def _by_host(keys: KeySet, primary: WireError | Reply) -> Callable[[Sent], Reply | WireError]:
    def handler(request: Sent) -> Reply:
        if request.host == "primary.test":
            return primary
        return signed_response(keys, BALANCE)

    return handler


@pytest.mark.parametrize("exc", [failure("ConnectError"), failure("ConnectTimeout")])
def test_connect_failure_on_primary_fails_over_then_returns_after_cooldown(
    keys: KeySet, credentials: Credentials, exc: Exception
) -> None:
    clock = Clock()
    script = Script(_by_host(keys, exc))
    with _failover_client(credentials, script, clock) as client:
        assert _balance(client).balance == 12345
        assert script.hosts == ["primary.test", "backup.test"]
        assert client.using_backup
        clock.now += 59
        _balance(client)
        assert script.hosts[-1] == "backup.test"  # still cooling down: primary not tried
        clock.now += 2
        assert not client.using_backup
        script.steps = [signed_response(keys, BALANCE)]  # the primary is back
        _balance(client)
        assert script.hosts[-1] == "primary.test"


@pytest.mark.parametrize(
    "failure",
    [
        failure("ReadTimeout"),
        failure("RemoteProtocolError"),
        error_response(500, "SYSTEM_ERROR"),
    ],
)
def test_failures_after_connecting_do_not_fail_over(
    keys: KeySet, credentials: Credentials, failure: WireError | Reply
) -> None:
    clock = Clock()
    script = Script(_by_host(keys, failure))
    with _failover_client(credentials, script, clock) as client, pytest.raises(TransientError):
        _balance(client)
    assert script.hosts == ["primary.test"] * 3
    assert not client.using_backup


def test_post_fails_over_only_when_nothing_reached_the_primary(
    keys: KeySet, credentials: Credentials
) -> None:
    clock = Clock()

    def handler(request: Sent) -> Reply:
        if request.host == "primary.test":
            raise failure("ConnectError")
        return signed_response(keys, reduction_answer(keys, "R1"))

    script = Script(handler)
    with _failover_client(credentials, script, clock) as client:
        client.submit_special_reduction(_request())
    assert script.hosts == ["primary.test", "backup.test"]
    assert script.sent[0].body == script.sent[1].body


def test_backup_unreachable_sends_us_back_to_the_primary(
    keys: KeySet, credentials: Credentials
) -> None:
    clock = Clock()
    script = Script(
        failure("ConnectError"), failure("ConnectError"), signed_response(keys, BALANCE)
    )
    with _failover_client(credentials, script, clock) as client:
        assert _balance(client).balance == 12345
    assert script.hosts == ["primary.test", "backup.test", "primary.test"]


def test_no_backup_configured(keys: KeySet, credentials: Credentials) -> None:
    script = Script(failure("ConnectError"), signed_response(keys, BALANCE))
    with mock_client(credentials, script, base_url=PRIMARY, backup_url=None) as client:
        _balance(client)
    assert script.hosts == ["primary.test", "primary.test"]


# -- hooks ----------------------------------------------------------------------------------


def test_before_request_is_called_per_attempt_with_endpoint_and_target(
    keys: KeySet, credentials: Credentials
) -> None:
    calls: list[tuple[Endpoint, str]] = []
    script = Script(
        error_response(500, "SYSTEM_ERROR"),
        signed_response(keys, reduction_answer(keys, "R1", extra={"mchid": TARGET})),
    )
    with mock_client(credentials, script, before_request=lambda e, m: calls.append((e, m))) as c:
        c.submit_special_reduction(_request(mchid=TARGET))
        script.steps = [signed_response(keys, BALANCE)]
        c.query_balance(mchid="1900000003", bal_account_no=BAL_ACCOUNT_NO)
        script.steps = [
            signed_response(keys, {"out_bill_no": "B1", "state": "SUCCESS", "amount": 1})
        ]
        c.query_compensation_bill("B1")
    assert calls == [
        (Endpoint.SUBMIT_REDUCTION, TARGET),
        (Endpoint.SUBMIT_REDUCTION, TARGET),
        (Endpoint.QUERY_BALANCE, "1900000003"),
        (Endpoint.QUERY_BILL, MCHID),
    ]


def test_a_call_the_hook_knows_is_refused_encrypts_nothing_and_the_grant_comes_last(
    keys: KeySet, credentials: Credentials, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hook's ``ready`` comes before the ledger number is encrypted (a call the rate
    limit puts back costs no OAEP encryption: a saturated merchant's chunk would pay one per
    order and per turn); the grant comes after it, just before signing and sending; a
    call's attempts send one ciphertext."""
    seen: list[str] = []
    real = keys_module.encrypt
    monkeypatch.setattr(keys_module, "encrypt", lambda k, p: seen.append("encrypt") or real(k, p))

    class Hook:
        refused = True

        def ready(self, endpoint: Endpoint, mchid: str) -> None:
            seen.append("ready")
            if self.refused:
                raise NotYet(0.5, f"{endpoint}:{mchid}", str(endpoint))

        def __call__(self, endpoint: Endpoint, mchid: str) -> None:
            seen.append("grant")

    hook = Hook()
    script = Script(
        error_response(500, "SYSTEM_ERROR"),
        signed_response(keys, reduction_answer(keys, "R1", extra={"mchid": TARGET})),
    )
    with mock_client(credentials, script, before_request=hook) as client:
        with pytest.raises(NotYet):
            client.submit_special_reduction(_request(mchid=TARGET))
        with pytest.raises(NotYet):
            _balance(client)
        with pytest.raises(NotYet):
            client.query_special_reduction("R1", mchid=MCHID, bal_account_no=BAL_ACCOUNT_NO)
        assert seen == ["ready"] * 3 and script.sent == []
        seen.clear()
        hook.refused = False
        client.submit_special_reduction(_request(mchid=TARGET))
    assert seen == ["ready", "encrypt", "grant", "grant"]  # the retry: a grant, same bytes
    first, again = script.sent
    assert first.body == again.body and b"bal_account_no" in first.body


def test_throttled_by_the_hook_propagates_without_sending(credentials: Credentials) -> None:
    def hook(endpoint: Endpoint, mchid: str) -> None:
        raise Throttled(0.25, f"{endpoint}:{mchid}")

    script = Script(error_response(500, "SYSTEM_ERROR"))
    with mock_client(credentials, script, before_request=hook) as client:
        with pytest.raises(Throttled) as info:
            _balance(client)
        assert info.value.retry_after == 0.25 and not info.value.maybe_sent
        with pytest.raises(Throttled):
            client.submit_special_reduction(_request())
    assert script.sent == []


def test_throttled_retry_of_a_post_that_may_have_landed_is_an_unknown_outcome(
    credentials: Credentials,
) -> None:
    attempts = []

    def hook(endpoint: Endpoint, mchid: str) -> None:
        attempts.append(endpoint)
        if len(attempts) > 1:
            raise Throttled(1.0, "k")

    script = Script(error_response(500, "SYSTEM_ERROR"))
    with mock_client(credentials, script, before_request=hook) as client:
        with pytest.raises(OutcomeUnknown) as info:
            client.submit_special_reduction(_request())
        assert info.value.maybe_sent and len(script.sent) == 1
        attempts.clear()
        with pytest.raises(Throttled):  # a GET just reports the deferral
            _balance(client)


def test_hook_failure_on_a_post_retry_keeps_the_unknown_outcome(credentials: Credentials) -> None:
    attempts: list[Endpoint] = []

    def hook(endpoint: Endpoint, mchid: str) -> None:
        attempts.append(endpoint)
        if len(attempts) > 1:
            raise ConnectionError("rate limiter backend unreachable")

    script = Script(failure("ReadTimeout"))
    with mock_client(credentials, script, before_request=hook) as client:
        with pytest.raises(OutcomeUnknown) as info:
            client.submit_special_reduction(_request())
        assert info.value.maybe_sent and isinstance(info.value.cause, NetworkError)
        attempts.clear()
        with pytest.raises(ConnectionError):  # a GET has nothing to hide
            _balance(client)


def test_a_real_answer_after_a_lost_one_passes_through(credentials: Credentials) -> None:
    script = Script(error_response(500, "SYSTEM_ERROR"), error_response(403, "NOT_ENOUGH"))
    with mock_client(credentials, script) as client, pytest.raises(NotEnough):
        client.submit_special_reduction(_request())
    assert len(script.sent) == 2


def test_observer_sees_every_attempt_and_cannot_break_a_call(
    keys: KeySet, credentials: Credentials
) -> None:
    seen: list[tuple[Endpoint, str, float]] = []

    def observer(endpoint: Endpoint, outcome: str, seconds: float) -> None:
        seen.append((endpoint, outcome, seconds))
        raise RuntimeError("metrics backend down")

    script = Script(
        failure("ReadTimeout"), error_response(500, "SYSTEM_ERROR"), signed_response(keys, BALANCE)
    )
    with mock_client(credentials, script, observer=observer) as client:
        assert _balance(client).balance == 12345
    assert [(e, o) for e, o, _ in seen] == [
        (Endpoint.QUERY_BALANCE, "ReadTimeout"),
        (Endpoint.QUERY_BALANCE, "500"),
        (Endpoint.QUERY_BALANCE, "200"),
    ]
    assert all(s >= 0 for _, _, s in seen)


def test_every_failed_attempt_is_reported_even_when_retried(
    keys: KeySet, credentials: Credentials
) -> None:
    seen: list[tuple[Endpoint, str]] = []

    def on_error(endpoint: Endpoint, kind: str) -> None:
        seen.append((endpoint, kind))
        raise RuntimeError("metrics backend down")

    script = Script(
        failure("ReadTimeout"),
        error_response(500, "SYSTEM_ERROR"),
        error_response(429, "FREQUENCY_LIMITED"),
        error_response(403, "NOT_ENOUGH"),
    )
    retry = RetryPolicy(attempts=4, initial_wait=0, max_wait=0)
    with (
        mock_client(credentials, script, on_error=on_error, retry=retry) as client,
        pytest.raises(NotEnough),
    ):
        client.submit_special_reduction(_request())
    assert seen == [
        (Endpoint.SUBMIT_REDUCTION, "NetworkError"),
        (Endpoint.SUBMIT_REDUCTION, "SYSTEM_ERROR"),
        (Endpoint.SUBMIT_REDUCTION, "FREQUENCY_LIMITED"),
        (Endpoint.SUBMIT_REDUCTION, "NOT_ENOUGH"),
    ]


# -- nothing sent on bad input --------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.query_special_reduction("A" * 33, mchid=MCHID, bal_account_no=BAL_ACCOUNT_NO),
        lambda c: c.query_special_reduction("R1", mchid="x", bal_account_no=BAL_ACCOUNT_NO),
        lambda c: c.query_balance(mchid=MCHID, bal_account_no=""),
        lambda c: c.query_compensation_bill("../x"),
        lambda c: c.submit_special_reduction(
            SpecialReductionRequest(
                MCHID, BAL_ACCOUNT_NO, "R1", ReductionType.FINANCIAL_PENALTY, -5
            )
        ),
        lambda c: c.submit_special_reduction(
            SpecialReductionRequest(MCHID, BAL_ACCOUNT_NO, "R1", ReductionType("BOGUS"), 5)
        ),
    ],
)
def test_invalid_input_sends_nothing(
    credentials: Credentials, call: Callable[[WeChatPayClient], object]
) -> None:
    script = Script(reply(500))
    with mock_client(credentials, script) as client, pytest.raises(InvalidRequest) as info:
        call(client)
    assert script.sent == []
    assert BAL_ACCOUNT_NO not in str(info.value)


# -- garbled bodies of any shape ------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=12,
)
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {},
        optional={
            "out_request_no": st.sampled_from(["R1", "R2", 7]),
            "out_bill_no": st.sampled_from(["B1", None]),
            "state": json_values | st.sampled_from(["SUCCESS", "FAILED", "ACCEPTED", "NEW"]),
            "amount": json_values | st.integers(),
            "balance": json_values | st.integers(),
            "bal_account_no": json_values,
            "success_time": json_values | st.just("2025-01-01T00:00:00+08:00"),
            "close_info": json_values,
        },
    ).map(lambda v: json.dumps(v).encode()),
    st.sampled_from([b"[" * 100_000, b'{"a":' * 5000, b"1" * 5000, b"NaN", b"\xef\xbb\xbf{}"]),
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=bodies, status=st.sampled_from([200, 201, 204]))
def test_any_signed_body_is_a_result_or_a_typed_error(
    keys: KeySet, credentials: Credentials, body: bytes, status: int
) -> None:
    def handler(request: Sent) -> Reply:
        return reply(status, body, signed_headers(keys, body))

    calls: list[Callable[[WeChatPayClient], object]] = [
        _balance,
        lambda c: c.query_compensation_bill("B1"),
        lambda c: c.query_special_reduction("R1", mchid=MCHID, bal_account_no=BAL_ACCOUNT_NO),
    ]
    with mock_client(credentials, Script(handler), retry=RetryPolicy(attempts=1)) as client:
        for call in calls:
            try:
                call(client)
            except GarbledResponse as exc:
                assert "\n" not in str(exc) and exc.status == status
        try:
            client.submit_special_reduction(_request())
        except OutcomeUnknown as exc:
            assert isinstance(exc.cause, GarbledResponse)


# -- secrets --------------------------------------------------------------------------------


def test_no_secret_reaches_an_exception_or_a_log(
    keys: KeySet, credentials: Credentials, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    pem = keys.merchant_key_path.read_text().splitlines()[1]
    errors: list[BaseException] = []
    clock = Clock()
    script = Script(
        failure("ConnectError"),
        error_response(500, "SYSTEM_ERROR"),
        failure("ReadTimeout"),
        error_response(400, "PARAM_ERROR", "bal_account_no invalid"),
    )
    with _failover_client(credentials, script, clock) as client:
        for call in (
            lambda: client.submit_special_reduction(_request()),
            lambda: _balance(client),
            lambda: client.query_special_reduction(
                "R1", mchid=MCHID, bal_account_no=BAL_ACCOUNT_NO
            ),
        ):
            try:
                call()
            except WeChatPayError as exc:
                errors.append(exc)
    assert errors
    texts = [caplog.text, *map(str, errors), *map(repr, errors)]
    for exc in errors:
        texts.append(str(getattr(exc, "cause", "")))
        texts.append(repr(exc.detail))
    for text in texts:
        assert BAL_ACCOUNT_NO not in text
        assert pem not in text
    assert BAL_ACCOUNT_NO not in repr(_request()) and pem not in repr(credentials)


# -- construction ---------------------------------------------------------------------------


def test_pool_settings_and_fork_safety(credentials: Credentials) -> None:
    client = WeChatPayClient(credentials, timeouts=Timeouts(connect=1.5, read=4.0))
    assert client.timeouts.keepalive_expiry < 8  # the provider drops idle connections at 8 s
    first = client._current_wire()
    assert isinstance(first, PoolWire)  # no transport, no proxy: pooled http.client
    assert first.keepalive_expiry == client.timeouts.keepalive_expiry
    assert (first.connect_timeout, first.read_timeout) == (1.5, 4.0)
    client._pid = -1  # as if we were a forked child: the parent's sockets must not be shared
    second = client._current_wire()
    assert second is not first
    assert client._current_wire() is second
    client.close()
    first.close()


def test_a_proxy_is_a_tunnel_on_the_same_wire(credentials: Credentials) -> None:
    with WeChatPayClient(credentials, proxy="http://user:pw@127.0.0.1:3128") as client:
        wire = client._current_wire()
        assert isinstance(wire, PoolWire) and wire.proxy == Proxy(
            "127.0.0.1", 3128, "Basic dXNlcjpwdw=="
        )
        assert "pw" not in repr(wire.proxy)
    for bad in ("https://proxy:3128", "socks5://proxy:1080", "http://:3128", "http://p:x"):
        with pytest.raises(ValueError, match=r"^proxy "):
            WeChatPayClient(credentials, proxy=bad)


@pytest.mark.parametrize("url", ["", "ftp://x", "not a url", "https://"])
def test_bad_base_url(credentials: Credentials, url: str) -> None:
    with pytest.raises(ValueError, match="base_url"):
        WeChatPayClient(credentials, base_url=url)


def _settings(keys: KeySet, **overrides: Any) -> Settings:
    values: dict[str, Any] = {k.removeprefix("WXRECON_").lower(): v for k, v in keys.env().items()}
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_build_client_from_settings(keys: KeySet) -> None:
    hook_calls: list[tuple[Endpoint, str]] = []
    observed: list[str] = []
    script = Script(failure("ConnectError"), signed_response(keys, BALANCE))
    s = _settings(
        keys,
        wechatpay_base_url="http://127.0.0.1:9/",
        wechatpay_backup_url="http://localhost:9",
        http_connect_timeout=1.25,
        http_read_timeout=7.5,
        http_retries=2,
        failover_cooldown=33.0,
    )
    client = build_client(
        s,
        before_request=lambda e, m: hook_calls.append((e, m)),
        observer=lambda e, o, t: observed.append(o),
        wire=script,
    )
    with client:
        assert client.base_url == "http://127.0.0.1:9" and client.backup_url == "http://localhost:9"
        assert client.retry.attempts == 2 and client.failover_cooldown == 33.0
        assert client.timeouts.connect == 1.25 and client.timeouts.read == 7.5
        assert client.credentials.encrypt_serial == PUB_KEY_ID
        assert client._retrying.sleep is not None
        client._retrying.sleep = lambda _: None  # type: ignore[method-assign]
        assert _balance(client).balance == 12345
    assert script.hosts == ["127.0.0.1", "localhost"]
    assert len(hook_calls) == 2 and observed == ["ConnectError", "200"]


def test_build_client_bad_settings(keys: KeySet) -> None:
    with pytest.raises(CredentialError, match=r"^WXRECON_WECHATPAY_BASE_URL: "):
        build_client(_settings(keys, wechatpay_base_url="nowhere"))
    with pytest.raises(CredentialError, match=r"^WXRECON_WECHATPAY_BACKUP_URL: "):
        build_client(_settings(keys, wechatpay_backup_url="ftp://x"))
    with pytest.raises(CredentialError, match="WXRECON_MCH_PRIVATE_KEY_PATH"):
        build_client(_settings(keys, mch_private_key_path=None))
    client = build_client(_settings(keys, wechatpay_backup_url=""))
    assert client.backup_url is None
    client.close()

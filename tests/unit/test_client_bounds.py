"""What the client refuses to accept: Request-IDs that fit no column, answers about another
order, plain-http provider URLs off loopback, and bad size or proxy options."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fixtures_keys import BAL_ACCOUNT_NO, MCHID, KeySet, reduction_answer
from tests.unit.test_client import (
    BALANCE,
    _request,
    _settings,
    error_response,
    mock_client,
    signed_response,
)
from wxrecon.provider import build_client
from wxrecon.wechatpay.client import Timeouts, WeChatPayClient
from wxrecon.wechatpay.errors import GarbledResponse, NotEnough, OutcomeUnknown
from wxrecon.wechatpay.keys import CredentialError, Credentials
from wxrecon.wechatpay.testing import ScriptedWire, reply
from wxrecon.wechatpay.wire import MAX_BODY, PoolWire, failure


def _balance(client: WeChatPayClient) -> Any:
    return client.query_balance(mchid=MCHID, bal_account_no=BAL_ACCOUNT_NO)


def test_a_request_id_of_128_characters_is_kept(keys: KeySet, credentials: Credentials) -> None:
    rid = "R" * 128
    with mock_client(
        credentials, ScriptedWire(signed_response(keys, BALANCE, request_id=rid))
    ) as c:
        assert _balance(c).request_id == rid


@pytest.mark.parametrize("rid", ["R" * 129, "R 1", "R\x7f1", "请求"])
def test_a_request_id_that_fits_no_column_is_garbled(
    keys: KeySet, credentials: Credentials, rid: str
) -> None:
    script = ScriptedWire(signed_response(keys, BALANCE, request_id=rid))
    with mock_client(credentials, script) as client, pytest.raises(GarbledResponse) as info:
        _balance(client)
    assert info.value.request_id is None and info.value.status == 200
    assert "Request-ID header" in str(info.value) and len(script.sent) == 3  # retried


def test_a_bad_request_id_on_a_business_answer_is_garbled_too(credentials: Credentials) -> None:
    script = ScriptedWire(error_response(403, "NOT_ENOUGH", request_id="X" * 200))
    with mock_client(credentials, script) as client, pytest.raises(OutcomeUnknown) as info:
        client.submit_special_reduction(_request())
    assert isinstance(info.value.cause, GarbledResponse) and info.value.request_id is None
    script.play(error_response(403, "NOT_ENOUGH", request_id="R-OK"))
    with mock_client(credentials, script) as client, pytest.raises(NotEnough):
        client.submit_special_reduction(_request())


@pytest.mark.parametrize(
    ("extra", "complaint"),
    [
        ({"mchid": "1900000099"}, "another mchid"),
        ({"amount": 101}, "another amount"),
        ({"out_request_no": "R2"}, "another out_request_no"),
        ({"quota_change_no": "Q" * 65}, "quota_change_no is longer than 64"),
    ],
)
def test_a_submit_answer_about_another_order_is_an_unknown_outcome(
    keys: KeySet, credentials: Credentials, extra: dict[str, Any], complaint: str
) -> None:
    answer = reduction_answer(keys, "R1", extra=extra)
    with (
        mock_client(credentials, ScriptedWire(signed_response(keys, answer))) as client,
        pytest.raises(OutcomeUnknown, match=complaint) as info,
    ):
        client.submit_special_reduction(_request())
    assert isinstance(info.value.cause, GarbledResponse) and info.value.maybe_sent


def test_a_query_answer_about_another_merchant_is_garbled(
    keys: KeySet, credentials: Credentials
) -> None:
    answer = reduction_answer(keys, "R1", extra={"mchid": "1900000099"})
    with (
        mock_client(credentials, ScriptedWire(signed_response(keys, answer))) as client,
        pytest.raises(GarbledResponse, match="another mchid"),
    ):
        client.query_special_reduction("R1", mchid=MCHID, bal_account_no=BAL_ACCOUNT_NO)


def test_an_over_large_answer_is_garbled_with_its_status(credentials: Credentials) -> None:
    headers = {"Request-ID": "R-BIG"}
    script = ScriptedWire(
        failure("BodyTooLarge", status=200, headers=reply(200, b"", headers).headers)
    )
    with mock_client(credentials, script, max_body=4096) as client:
        with pytest.raises(GarbledResponse, match="larger than 4096 bytes") as info:
            _balance(client)
        assert info.value.status == 200 and info.value.request_id == "R-BIG"
        assert info.value.maybe_sent and len(script.sent) == 3
        with pytest.raises(OutcomeUnknown) as unknown:
            client.submit_special_reduction(_request())
        assert isinstance(unknown.value.cause, GarbledResponse)


@pytest.mark.parametrize(
    "url",
    [
        "http://api.mch.weixin.qq.com",
        "http://10.0.0.1:8080",
        "http://simulator:8080",
        "http://[::2]",
    ],
)
def test_plain_http_is_refused_off_loopback(credentials: Credentials, url: str) -> None:
    with pytest.raises(
        ValueError, match=r"^base_url must be https:// \(http:// only on loopback\)$"
    ):
        WeChatPayClient(credentials, base_url=url)
    with pytest.raises(ValueError, match=r"^backup_url must be https://"):
        WeChatPayClient(credentials, base_url="https://a.test", backup_url=url)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080", "http://127.9.9.9", "http://localhost:1", "http://[::1]:80"]
)
def test_plain_http_is_fine_on_loopback(credentials: Credentials, url: str) -> None:
    WeChatPayClient(credentials, base_url=url, backup_url=None).close()


def test_size_and_time_bounds_reach_the_wire(credentials: Credentials) -> None:
    with WeChatPayClient(credentials) as client:
        wire = client._current_wire()
        assert isinstance(wire, PoolWire)
        assert wire.max_body == MAX_BODY == 1 << 20
        assert wire.deadline == client.timeouts.connect + client.timeouts.read
    timeouts = Timeouts(connect=1, read=2, total=2.5)
    with WeChatPayClient(credentials, timeouts=timeouts, max_body=10) as client:
        wire = client._current_wire()
        assert isinstance(wire, PoolWire) and (wire.deadline, wire.max_body) == (2.5, 10)
    with pytest.raises(ValueError, match="max_body"):
        WeChatPayClient(credentials, max_body=0)


def test_build_client_names_the_bad_setting(keys: KeySet) -> None:
    with pytest.raises(CredentialError, match=r"^WXRECON_HTTPS_PROXY: proxy must be an http://"):
        build_client(_settings(keys, https_proxy="socks5://p:1080"))
    with pytest.raises(
        CredentialError, match=r"^WXRECON_WECHATPAY_BASE_URL: base_url must be https"
    ):
        build_client(_settings(keys, wechatpay_base_url="http://api.example.test"))

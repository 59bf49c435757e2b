"""Cross-checks against wechatpayv3, an implementation nobody here wrote (test-only dependency).

Its helpers live in ``wechatpayv3.utils`` (``build_authorization``, ``rsa_sign``, ``rsa_verify``,
``rsa_encrypt``, ``rsa_decrypt``) and ``wechatpayv3.core.Core._verify_signature``.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fixtures_keys import (
    BAL_ACCOUNT_NO,
    MCHID,
    PUB_KEY_ID,
    KeySet,
    mock_client,
    pkcs8_pem,
    public_pem,
    reduction_answer,
    signed_headers,
    signed_response,
)
from wxrecon.wechatpay import keys as k
from wxrecon.wechatpay import signing
from wxrecon.wechatpay.keys import Credentials
from wxrecon.wechatpay.resources import SpecialReductionRequest

wp_utils = pytest.importorskip("wechatpayv3.utils")
wp_core = pytest.importorskip("wechatpayv3.core")


def _their_request_check(
    keys: KeySet, method: str, path: str, ts: str, nonce: str, body: str, signature: str
) -> bool:
    """wechatpayv3 only verifies *response* strings (``ts\\nnonce\\nbody\\n``); a request string
    is the same shape with ``METHOD\\nPATH\\n`` in front, so feed those in with the timestamp."""
    return bool(
        wp_utils.rsa_verify(
            f"{method}\n{path}\n{ts}", nonce, body, signature, keys.merchant_key.public_key()
        )
    )


# -- request signatures ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "data"),
    [
        ("GET", "/v3/aggracct-bc/wb-channel/account/balance?mchid=1&bal_account_no=a%2Bb%3D", None),
        (
            "POST",
            "/v3/aggracct-bc/wb-channel/special-reduction",
            {"reason": "司法扣划", "amount": 1},
        ),
        ("POST", "/v3/aggracct-bc/wb-channel/special-reduction", '{"reason":"司法扣划"}'),
    ],
)
def test_their_authorization_verifies_with_ours(
    keys: KeySet, method: str, path: str, data: object
) -> None:
    header = wp_utils.build_authorization(
        path, method, MCHID, keys.cert_serial, keys.merchant_key, data=data
    )
    auth = signing.parse_authorization(header)
    assert auth.mchid == MCHID and auth.serial_no == keys.cert_serial
    body = data if isinstance(data, str) else json.dumps(data) if data else ""
    message = signing.request_message(method, path, auth.timestamp, auth.nonce_str, body.encode())
    assert signing.verify(keys.merchant_key.public_key(), message, auth.signature)
    assert not signing.verify(keys.merchant_key.public_key(), message + b" ", auth.signature)


def test_our_authorization_verifies_with_theirs(keys: KeySet) -> None:
    body = json.dumps({"reason": "罚款 №1"}, ensure_ascii=False)
    auth = signing.build_authorization(
        mchid=MCHID,
        serial_no=keys.cert_serial,
        private_key=keys.merchant_key,
        method="POST",
        path_and_query="/v3/x",
        body=body.encode(),
    )
    assert _their_request_check(
        keys, "POST", "/v3/x", auth.timestamp, auth.nonce_str, body, auth.signature
    )
    assert not _their_request_check(
        keys, "POST", "/v3/y", auth.timestamp, auth.nonce_str, body, auth.signature
    )


def test_our_client_on_the_wire_verifies_with_theirs(
    keys: KeySet, credentials: Credentials
) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "POST":
            return signed_response(keys, reduction_answer(keys, "R1"))
        return signed_response(keys, {"balance": 1})

    with mock_client(credentials, handler) as client:
        client.query_balance(mchid=MCHID, bal_account_no=BAL_ACCOUNT_NO)
        client.submit_special_reduction(
            SpecialReductionRequest.create(
                mchid=MCHID,
                bal_account_no=BAL_ACCOUNT_NO,
                out_request_no="R1",
                reduction_type="JUDICIAL_DEDUCTION",
                amount=9,
                reason="司法案件号：1",
            )
        )
    for request in seen:
        auth = signing.parse_authorization(request.headers["Authorization"])
        assert _their_request_check(
            keys,
            request.method,
            request.url.raw_path.decode(),
            auth.timestamp,
            auth.nonce_str,
            request.content.decode("utf-8"),
            auth.signature,
        )


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    method=st.sampled_from(["GET", "POST"]),
    path=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=60),
    ts=st.integers(min_value=0, max_value=2**40).map(str),
    nonce=st.text(st.characters(whitelist_categories=("Lu", "Nd")), min_size=1, max_size=32),
    body=st.text(max_size=200).filter(lambda s: not any(0xD800 <= ord(c) <= 0xDFFF for c in s)),
)
def test_signatures_are_byte_identical(
    keys: KeySet, method: str, path: str, ts: str, nonce: str, body: str
) -> None:
    """PKCS#1 v1.5 is deterministic: the same string must give the very same signature."""
    ours = signing.sign(keys.merchant_key, signing.request_message(method, path, ts, nonce, body))
    theirs = wp_utils.rsa_sign(keys.merchant_key, f"{method}\n{path}\n{ts}\n{nonce}\n{body}\n")
    assert ours == theirs


# -- response signatures --------------------------------------------------------------------


def test_our_response_signature_verifies_with_their_rsa_verify_and_core(keys: KeySet) -> None:
    body = json.dumps({"state": "SUCCESS", "reason": "司法"}, ensure_ascii=False).encode()
    headers = signed_headers(keys, body)
    assert wp_utils.rsa_verify(
        headers["Wechatpay-Timestamp"],
        headers["Wechatpay-Nonce"],
        body.decode(),
        headers["Wechatpay-Signature"],
        keys.wechatpay_key.public_key(),
    )
    core = wp_core.Core(
        mchid=MCHID,
        cert_serial_no=keys.cert_serial,
        private_key=pkcs8_pem(keys.merchant_key).decode(),
        apiv3_key="0" * 32,
        public_key=public_pem(keys.wechatpay_key.public_key()).decode(),
        public_key_id=PUB_KEY_ID,
    )
    assert core._verify_signature(headers, body.decode())
    assert not core._verify_signature(headers, body.decode() + " ")


def test_their_response_signature_verifies_with_ours(
    keys: KeySet, credentials: Credentials
) -> None:
    body = b'{"balance":77,"in_transit_reduction_exist":false}'
    ts, nonce = str(int(time.time())), "ABCDEF0123456789"
    signature = wp_utils.rsa_sign(keys.wechatpay_key, f"{ts}\n{nonce}\n{body.decode()}\n")
    headers = {
        "Wechatpay-Timestamp": ts,
        "Wechatpay-Nonce": nonce,
        "Wechatpay-Signature": signature,
        "Wechatpay-Serial": PUB_KEY_ID,
    }
    assert signing.check_response_signature(httpx.Headers(headers), body, credentials.verify_keys)

    with mock_client(
        credentials, lambda _: httpx.Response(200, content=body, headers=headers)
    ) as c:
        assert c.query_balance(mchid=MCHID, bal_account_no=BAL_ACCOUNT_NO).balance == 77


# -- OAEP -----------------------------------------------------------------------------------


def test_their_ciphertext_decrypts_with_ours(keys: KeySet, credentials: Credentials) -> None:
    ct = wp_utils.rsa_encrypt(BAL_ACCOUNT_NO, keys.merchant_key.public_key())
    assert credentials.decrypt(ct) == BAL_ACCOUNT_NO
    ct2 = wp_utils.rsa_encrypt("中文台账", keys.wechatpay_key.public_key())
    assert k.decrypt(keys.wechatpay_key, ct2) == "中文台账"


def test_our_ciphertext_decrypts_with_theirs(keys: KeySet, credentials: Credentials) -> None:
    ct = credentials.encrypt(BAL_ACCOUNT_NO)  # for the provider, under the WeChat Pay key
    assert wp_utils.rsa_decrypt(ct, keys.wechatpay_key) == BAL_ACCOUNT_NO
    both = keys.credentials(public_key=False, platform_cert=True)
    assert wp_utils.rsa_decrypt(both.encrypt("x1"), keys.platform_key) == "x1"


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.from_regex(r"[\x21-\x7e]{1,128}", fullmatch=True))
def test_oaep_both_ways_property(keys: KeySet, plaintext: str) -> None:
    pub, priv = keys.wechatpay_key.public_key(), keys.wechatpay_key
    assert wp_utils.rsa_decrypt(k.encrypt(pub, plaintext), priv) == plaintext
    assert k.decrypt(priv, wp_utils.rsa_encrypt(plaintext, pub)) == plaintext

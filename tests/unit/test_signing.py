"""Signing string, Authorization header and response verification (DESIGN.md §1)."""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.parse

import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from tests.fixtures_keys import (
    BAL_ACCOUNT_NO,
    MCHID,
    PUB_KEY_ID,
    KeySet,
    mock_client,
    reduction_answer,
    signed_headers,
    signed_response,
)
from wxrecon.wechatpay import keys as keys_module
from wxrecon.wechatpay import signing
from wxrecon.wechatpay.errors import OutcomeUnknown, UnverifiedResponse
from wxrecon.wechatpay.keys import Credentials
from wxrecon.wechatpay.resources import SpecialReductionRequest

TS = 1554208460
NONCE = "593BEC0C930BF1AFEB40B4A08C8FB242"


# -- the signing string ---------------------------------------------------------------------


def test_request_message_known_answer_get() -> None:
    path = (
        "/v3/aggracct-bc/wb-channel/account/balance?mchid=1900016681&bal_account_no=a%2Bb%2Fc%3D%3D"
    )
    assert signing.request_message("get", path, TS, NONCE, b"") == (
        b"GET\n"
        b"/v3/aggracct-bc/wb-channel/account/balance?mchid=1900016681"
        b"&bal_account_no=a%2Bb%2Fc%3D%3D\n"
        b"1554208460\n"
        b"593BEC0C930BF1AFEB40B4A08C8FB242\n"
        b"\n"
    )


def test_request_message_known_answer_post_utf8() -> None:
    body = '{"reason":"司法案件号：202508080009"}'
    expected = (
        b"POST\n/v3/aggracct-bc/wb-channel/special-reduction\n1554208460\n"
        b"593BEC0C930BF1AFEB40B4A08C8FB242\n"
        + b'{"reason":"\xe5\x8f\xb8\xe6\xb3\x95\xe6\xa1\x88\xe4\xbb\xb6\xe5\x8f\xb7'
        + b'\xef\xbc\x9a202508080009"}\n'
    )
    message = signing.request_message(
        "POST", "/v3/aggracct-bc/wb-channel/special-reduction", str(TS), NONCE, body
    )
    assert message == expected
    assert (
        signing.request_message(
            "POST", "/v3/aggracct-bc/wb-channel/special-reduction", TS, NONCE, body.encode()
        )
        == expected
    )


def test_response_message_known_answer() -> None:
    assert signing.response_message(TS, NONCE, b'{"a":1}') == (
        b'1554208460\n593BEC0C930BF1AFEB40B4A08C8FB242\n{"a":1}\n'
    )
    assert signing.response_message("1", "N", b"") == b"1\nN\n\n"


def test_sign_is_pkcs1v15_sha256_and_deterministic(keys: KeySet) -> None:
    message = signing.request_message("GET", "/v3/x", TS, NONCE, b"")
    sig = signing.sign(keys.merchant_key, message)
    assert sig == signing.sign(keys.merchant_key, message)  # PKCS#1 v1.5 has no randomness
    keys.merchant_key.public_key().verify(
        base64.b64decode(sig), message, padding.PKCS1v15(), hashes.SHA256()
    )
    assert signing.verify(keys.merchant_key.public_key(), message, sig)
    assert not signing.verify(keys.merchant_key.public_key(), message + b"x", sig)
    assert not signing.verify(keys.other_key.public_key(), message, sig)
    assert not signing.verify(keys.merchant_key.public_key(), message, "not base64!")


def test_nonce_is_fresh_upper_hex() -> None:
    nonces = {signing.new_nonce() for _ in range(50)}
    assert len(nonces) == 50
    assert all(len(n) == 32 and n.isalnum() and n.upper() == n for n in nonces)
    assert len(signing.new_nonce(7)) == 7
    assert len({signing.new_nonce(600) for _ in range(20)}) == 20  # past the 4 KiB buffer


def test_a_forked_child_never_repeats_its_parents_nonces() -> None:
    """Nonces come from a buffer of random bytes: a child forked with the buffer full must
    not take the bytes its parent takes next (Celery's prefork pool forks every worker)."""
    signing.new_nonce()  # the buffer is full now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, signing.new_nonce().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    assert len(child) == 32 and child != signing.new_nonce()


# -- what the client signs is what goes on the wire -----------------------------------------


def _parse_auth(request: httpx.Request) -> signing.Authorization:
    return signing.parse_authorization(request.headers["Authorization"])


def _assert_signed_as_sent(request: httpx.Request, keys: KeySet) -> signing.Authorization:
    auth = _parse_auth(request)
    assert auth.mchid == MCHID
    assert auth.serial_no == keys.cert_serial
    assert abs(int(auth.timestamp) - time.time()) < 60
    message = signing.request_message(
        request.method,
        request.url.raw_path.decode("ascii"),
        auth.timestamp,
        auth.nonce_str,
        request.content,
    )
    assert signing.verify(keys.merchant_key.public_key(), message, auth.signature)
    return auth


def test_get_with_encrypted_query_value_signs_the_percent_encoded_path(
    keys: KeySet, credentials: Credentials, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_encrypt = keys_module.encrypt

    def encrypt_with_plus_and_slash(public_key: object, plaintext: str) -> str:
        # OAEP is randomised; draw until the base64 holds every awkward character.
        for _ in range(200):
            ct = real_encrypt(public_key, plaintext)  # type: ignore[arg-type]
            if "+" in ct and "/" in ct and ct.endswith("="):
                return ct
        raise AssertionError("no ciphertext with + and / in 200 draws")

    monkeypatch.setattr(keys_module, "encrypt", encrypt_with_plus_and_slash)
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return signed_response(keys, {"balance": 100, "in_transit_reduction_exist": False})

    with mock_client(credentials, handler) as client:
        client.query_balance(mchid=MCHID, bal_account_no=BAL_ACCOUNT_NO)
    (request,) = seen
    raw = request.url.raw_path.decode("ascii")
    path, _, query = raw.partition("?")
    assert path == "/v3/aggracct-bc/wb-channel/account/balance"
    encoded = dict(p.split("=", 1) for p in query.split("&"))
    assert set(encoded) == {"mchid", "bal_account_no"}
    # On the wire the base64 is percent-encoded: no raw + / = survive in the value.
    assert not set(encoded["bal_account_no"]) & set("+/=")
    assert {"%2B", "%2F", "%3D"} <= {
        encoded["bal_account_no"][i : i + 3] for i in range(len(encoded["bal_account_no"]))
    }
    ciphertext = urllib.parse.unquote(encoded["bal_account_no"])
    assert keys_module.decrypt(keys.wechatpay_key, ciphertext) == BAL_ACCOUNT_NO
    # And the signature covers exactly that encoded path and an empty body.
    auth = _assert_signed_as_sent(request, keys)
    unencoded = f"{path}?mchid={MCHID}&bal_account_no={ciphertext}"
    assert not signing.verify(
        keys.merchant_key.public_key(),
        signing.request_message("GET", unencoded, auth.timestamp, auth.nonce_str, b""),
        auth.signature,
    )
    assert request.content == b""
    assert request.headers["Wechatpay-Serial"] == PUB_KEY_ID
    assert request.headers["Accept"] == "application/json"
    assert request.headers["User-Agent"].startswith("wxrecon/")
    assert "Content-Type" not in request.headers


def test_post_with_non_ascii_reason_signs_the_exact_utf8_body(
    keys: KeySet, credentials: Credentials
) -> None:
    reason = "司法案件号：202508080009 — “罚款”"
    req = SpecialReductionRequest.create(
        mchid=MCHID,
        bal_account_no=BAL_ACCOUNT_NO,
        out_request_no="htozr8denqegbt6tk6u10iymo7yww5pn",
        reduction_type="JUDICIAL_DEDUCTION",
        amount=1,
        reason=reason,
    )
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return signed_response(keys, reduction_answer(keys, req.out_request_no))

    with mock_client(credentials, handler) as client:
        client.submit_special_reduction(req)
    (request,) = seen
    assert request.method == "POST"
    assert request.url.raw_path == b"/v3/aggracct-bc/wb-channel/special-reduction"
    assert reason.encode("utf-8") in request.content  # raw UTF-8, not \\u escapes
    body = json.loads(request.content)
    assert body["reason"] == reason
    assert body["amount"] == 1 and isinstance(body["amount"], int)
    assert body["reduction_type"] == "JUDICIAL_DEDUCTION"
    assert keys_module.decrypt(keys.wechatpay_key, body["bal_account_no"]) == BAL_ACCOUNT_NO
    auth = _assert_signed_as_sent(request, keys)
    # The escaped re-serialisation of the same JSON is *not* what was signed.
    escaped = json.dumps(body, separators=(",", ":")).encode()
    assert escaped != request.content
    assert not signing.verify(
        keys.merchant_key.public_key(),
        signing.request_message(
            "POST",
            "/v3/aggracct-bc/wb-channel/special-reduction",
            auth.timestamp,
            auth.nonce_str,
            escaped,
        ),
        auth.signature,
    )
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Wechatpay-Serial"] == PUB_KEY_ID
    assert int(request.headers["Content-Length"]) == len(request.content)


# -- Authorization header -------------------------------------------------------------------


def test_authorization_header_round_trip(keys: KeySet) -> None:
    auth = signing.build_authorization(
        mchid=MCHID,
        serial_no="ABC123",
        private_key=keys.merchant_key,
        method="GET",
        path_and_query="/v3/x?y=1",
        body=b"",
        timestamp=TS,
        nonce=NONCE,
    )
    header = auth.header()
    assert header.startswith('WECHATPAY2-SHA256-RSA2048 mchid="1900016681",nonce_str="')
    assert f'timestamp="{TS}"' in header and 'serial_no="ABC123"' in header
    assert signing.parse_authorization(header) == auth
    assert signing.verify(
        keys.merchant_key.public_key(),
        signing.request_message("GET", "/v3/x?y=1", TS, NONCE, b""),
        auth.signature,
    )
    # Order and spaces after commas do not matter to the parser.
    shuffled = (
        f'WECHATPAY2-SHA256-RSA2048 serial_no="ABC123", timestamp="{TS}", '
        f'signature="{auth.signature}", nonce_str="{NONCE}", mchid="{MCHID}"'
    )
    assert signing.parse_authorization(shuffled) == auth


@pytest.mark.parametrize(
    ("header", "complaint"),
    [
        ('Bearer mchid="1"', "unsupported authorization schema"),
        (
            'WECHATPAY2-SHA256-RSA2048 mchid="1",nonce_str="n",signature="s",timestamp="1"',
            "lacks serial_no",
        ),
        ('WECHATPAY2-SHA256-RSA2048 mchid="1",mchid="2"', "duplicate"),
        ("WECHATPAY2-SHA256-RSA2048 mchid=1", "malformed"),
        (
            'WECHATPAY2-SHA256-RSA2048 mchid="",nonce_str="n",signature="s",timestamp="1",'
            'serial_no="x"',
            "lacks mchid",
        ),
        ("", "unsupported authorization schema"),
    ],
)
def test_authorization_parse_errors(header: str, complaint: str) -> None:
    with pytest.raises(signing.AuthorizationParseError, match=complaint):
        signing.parse_authorization(header)


# -- response verification ------------------------------------------------------------------

BODY = b'{"balance":100,"in_transit_reduction_exist":false}'


def _check(
    credentials: Credentials, headers: dict[str, str], body: bytes = BODY, **kw: float
) -> str:
    # Header values as UTF-8 bytes, as a server could send them (httpx decodes them back).
    wire = httpx.Headers({k: v.encode() for k, v in headers.items()})
    return signing.check_response_signature(wire, body, credentials.verify_keys, **kw)


def test_verify_good_response(keys: KeySet, credentials: Credentials) -> None:
    assert _check(credentials, signed_headers(keys, BODY)) == PUB_KEY_ID


def test_verify_rejects_tampered_body(keys: KeySet, credentials: Credentials) -> None:
    headers = signed_headers(keys, BODY)
    with pytest.raises(signing.VerificationError, match="does not verify"):
        _check(credentials, headers, BODY.replace(b"100", b"900"))


def test_verify_rejects_wrong_key(keys: KeySet, credentials: Credentials) -> None:
    headers = signed_headers(keys, BODY, signer=keys.other_key)
    with pytest.raises(signing.VerificationError, match="does not verify"):
        _check(credentials, headers)


def test_verify_rejects_key_of_the_other_serial(keys: KeySet) -> None:
    both = keys.credentials(public_key=True, platform_cert=True)
    # Signed by the platform key but claiming to be the public key id.
    headers = signed_headers(keys, BODY, serial=PUB_KEY_ID, signer=keys.platform_key)
    with pytest.raises(signing.VerificationError, match="does not verify"):
        _check(both, headers)


@pytest.mark.parametrize("offset", [-301, 301, -10_000])
def test_verify_rejects_stale_or_future_timestamp(
    keys: KeySet, credentials: Credentials, offset: int
) -> None:
    now = time.time()
    headers = signed_headers(keys, BODY, timestamp=int(now) + offset)
    with pytest.raises(signing.VerificationError, match="more than 300s"):
        _check(credentials, headers, now=now)


@pytest.mark.parametrize("offset", [-299, 0, 299])
def test_verify_accepts_timestamp_within_skew(
    keys: KeySet, credentials: Credentials, offset: int
) -> None:
    now = float(int(time.time()))
    assert _check(credentials, signed_headers(keys, BODY, timestamp=int(now) + offset), now=now)


@pytest.mark.parametrize("bad", ["abc", "", " 1", "1.5", "-5", "9" * 400, "１２３"])
def test_verify_rejects_malformed_timestamp(
    keys: KeySet, credentials: Credentials, bad: str
) -> None:
    headers = signed_headers(keys, BODY)
    headers["Wechatpay-Timestamp"] = bad
    with pytest.raises(signing.VerificationError):
        _check(credentials, headers)


def test_verify_rejects_signtest_probe(keys: KeySet, credentials: Credentials) -> None:
    headers = signed_headers(keys, BODY)
    headers["Wechatpay-Signature"] = signing.SIGNTEST_PREFIX + headers["Wechatpay-Signature"]
    with pytest.raises(signing.VerificationError, match="SIGNTEST"):
        _check(credentials, headers)
    assert not signing.verify(
        keys.wechatpay_key.public_key(), b"x", signing.SIGNTEST_PREFIX + "AAAA"
    )


@pytest.mark.parametrize("missing", signing.RESPONSE_HEADERS)
def test_verify_rejects_missing_header(
    keys: KeySet, credentials: Credentials, missing: str
) -> None:
    headers = signed_headers(keys, BODY)
    del headers[missing]
    with pytest.raises(signing.VerificationError, match=f"lacks the {missing} header"):
        _check(credentials, headers)


def test_verify_rejects_unknown_serial(keys: KeySet, credentials: Credentials) -> None:
    headers = signed_headers(keys, BODY, serial=keys.platform_serial)  # not configured here
    with pytest.raises(signing.VerificationError, match="unknown serial"):
        _check(credentials, headers)


def test_verify_with_public_key_id_and_platform_cert_configured_at_once(keys: KeySet) -> None:
    both = keys.credentials(public_key=True, platform_cert=True)
    assert set(both.verify_keys) == {PUB_KEY_ID, keys.platform_serial}
    assert both.encrypt_serial == PUB_KEY_ID  # the provider's recommended key encrypts
    assert _check(both, signed_headers(keys, BODY, serial=PUB_KEY_ID)) == PUB_KEY_ID
    assert (
        _check(both, signed_headers(keys, BODY, serial=keys.platform_serial))
        == keys.platform_serial
    )
    # A serial written in lower case or with a leading zero still finds the certificate.
    lower = signed_headers(keys, BODY, serial=keys.platform_serial)
    lower["Wechatpay-Serial"] = "0" + keys.platform_serial.lower()
    assert _check(both, lower) == lower["Wechatpay-Serial"]


def test_platform_certificate_only(keys: KeySet) -> None:
    certs = keys.credentials(public_key=False, platform_cert=True)
    assert certs.encrypt_serial == keys.platform_serial
    assert _check(certs, signed_headers(keys, BODY, serial=keys.platform_serial))
    with pytest.raises(signing.VerificationError, match="unknown serial"):
        _check(certs, signed_headers(keys, BODY, serial=PUB_KEY_ID))


# -- the client never returns an unverified 2xx as data --------------------------------------


def _tamper(kind: str, keys: KeySet, body: bytes) -> dict[str, str]:
    headers = signed_headers(keys, body)
    if kind == "tampered":
        headers = signed_headers(keys, body + b" ")
    elif kind == "wrong_key":
        headers = signed_headers(keys, body, signer=keys.other_key)
    elif kind == "stale":
        headers = signed_headers(keys, body, timestamp=int(time.time()) - 400)
    elif kind == "signtest":
        headers["Wechatpay-Signature"] = "WECHATPAY/SIGNTEST/" + headers["Wechatpay-Signature"]
    elif kind == "missing":
        del headers["Wechatpay-Signature"]
    return headers


KINDS = ["tampered", "wrong_key", "stale", "signtest", "missing"]


@pytest.mark.parametrize("kind", KINDS)
def test_client_get_unverified_answer_is_an_error(
    keys: KeySet, credentials: Credentials, kind: str
) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200, content=BODY, headers=_tamper(kind, keys, BODY))

    with mock_client(credentials, handler) as client, pytest.raises(UnverifiedResponse) as info:
        client.query_balance(mchid=MCHID, bal_account_no=BAL_ACCOUNT_NO)
    assert len(calls) == 3  # retried, like a lost answer
    assert info.value.status == 200
    assert info.value.request_id == "08F78BB5AF0610D302A4F4B8F7D6F2B1D5B8" or kind == "missing"


@pytest.mark.parametrize("kind", KINDS)
def test_client_post_unverified_answer_is_an_unknown_outcome(
    keys: KeySet, credentials: Credentials, kind: str
) -> None:
    req = SpecialReductionRequest.create(
        mchid=MCHID,
        bal_account_no=BAL_ACCOUNT_NO,
        out_request_no="R1",
        reduction_type="FINANCIAL_PENALTY",
        amount=100,
    )
    body = json.dumps(reduction_answer(keys, "R1", "SUCCESS")).encode()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers=_tamper(kind, keys, body))

    with mock_client(credentials, handler) as client, pytest.raises(OutcomeUnknown) as info:
        client.submit_special_reduction(req)
    assert isinstance(info.value.cause, UnverifiedResponse)
    assert info.value.maybe_sent

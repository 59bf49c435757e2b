"""The client's response-header reader (``wechatpay.deadline.read_headers``) gives what
``http.client.parse_headers`` gives for the provider's answers, bounds included."""

from __future__ import annotations

import http.client
import io

import pytest

from wxrecon.wechatpay.deadline import read_headers

ANSWER = (
    b"Server: nginx\r\nDate: Thu, 03 Dec 2026 09:00:00 GMT\r\n"
    b"Content-Type: application/json; charset=utf-8\r\nContent-Length: 17\r\n"
    b"Request-ID: 08A1B2C3D4\r\nWechatpay-Nonce: 0123456789abcdef\r\n"
    b"Wechatpay-Signature: aGVsbG8gd29ybGQ=\r\nWechatpay-Timestamp: 1764752400\r\n"
    b"Wechatpay-Serial: PUB_KEY_ID_0114232134912410000000000000\r\n"
    b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nConnection: keep-alive\r\n\r\n"
    b'{"state":"DONE"}\n'
)


def test_the_same_headers_as_the_standard_parser() -> None:
    (mine, pairs), standard = (
        read_headers(io.BytesIO(ANSWER)),
        http.client.parse_headers(io.BytesIO(ANSWER)),
    )
    assert mine.items() == standard.items() == pairs
    assert mine.get_all("set-cookie") == ["a=1", "b=2"]
    assert mine.get("WECHATPAY-SERIAL") == standard.get("wechatpay-serial")


def test_the_body_stays_unread_and_a_folded_line_continues_its_value() -> None:
    stream = io.BytesIO(b"X-Long: one\r\n two\r\nY: 1\r\n\r\nBODY")
    found, _ = read_headers(stream)
    assert found["X-Long"] == "one two" and found["Y"] == "1"
    assert stream.read() == b"BODY"


def test_the_standard_bounds_hold() -> None:
    with pytest.raises(http.client.LineTooLong):
        read_headers(io.BytesIO(b"X: " + b"v" * 70000 + b"\r\n\r\n"))
    with pytest.raises(http.client.HTTPException):
        read_headers(io.BytesIO(b"".join(b"X-%d: v\r\n" % i for i in range(101)) + b"\r\n"))

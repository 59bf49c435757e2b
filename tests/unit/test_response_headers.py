"""The client's response-header reader (``wechatpay.deadline.read_headers``, and the
one-pass read of a head all in the buffer) gives what ``http.client.parse_headers`` gives
for the provider's answers, bounds included; the request head is what ``http.client`` sends,
and refuses what would smuggle a line."""

from __future__ import annotations

import http.client
import io
import socket
import time

import pytest

from wxrecon.wechatpay.deadline import BoundedResponse, read_headers
from wxrecon.wechatpay.wire import request_head

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


def _answer(head: bytes) -> BoundedResponse:
    """A response over a socket pair that already holds ``head``, as the wire makes one."""
    ours, theirs = socket.socketpair()
    theirs.sendall(head)
    theirs.close()
    response = BoundedResponse(ours, method="GET", deadline=time.monotonic() + 5, read_timeout=5)
    response.begin()
    return response


def test_a_head_read_in_one_pass_is_what_the_line_by_line_path_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The provider's answer arrives whole: read from the buffer at once (the line-by-line
    path is not taken), it gives the status, headers, length and body the standard gives."""

    def line_by_line(self: object) -> None:
        raise AssertionError("the one-pass read was not taken")

    monkeypatch.setattr(BoundedResponse, "_read_status", line_by_line)
    response = _answer(b"HTTP/1.1 200 OK\r\n" + ANSWER)
    standard = http.client.parse_headers(io.BytesIO(ANSWER))
    assert (response.status, response.reason, response.version) == (200, "OK", 11)
    assert response.header_pairs == standard.items()
    assert response.length == 17 and response.read() == b'{"state":"DONE"}\n'


@pytest.mark.parametrize(
    ("head", "status", "pairs"),
    [
        # bare LFs, a 100 Continue before the answer: the line-by-line path judges them
        (b"HTTP/1.1 200 OK\nX: 1\nContent-Length: 0\n\n", 200, [("X", "1")]),
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nY: 2\r\n\r\n",
            204,
            [("Y", "2")],
        ),
        (b"HTTP/1.0 404\r\nContent-Length: 0\r\n\r\n", 404, []),  # no reason phrase
    ],
)
def test_an_unusual_head_takes_the_line_by_line_path(
    head: bytes, status: int, pairs: list[tuple[str, str]]
) -> None:
    response = _answer(head)
    assert response.status == status
    assert [p for p in response.header_pairs if p[0] != "Content-Length"] == pairs


def test_a_bad_status_line_is_still_refused() -> None:
    with pytest.raises(http.client.BadStatusLine):
        _answer(b"HTTP/1.1 2OO OK\r\nContent-Length: 0\r\n\r\n")
    with pytest.raises(http.client.HTTPException):  # 101 headers, whole in the buffer
        _answer(b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(101)) + b"\r\n")


def test_the_request_head_is_what_http_client_sends() -> None:
    headers = [(b"User-Agent", b"wxrecon/1"), (b"Authorization", b'WECHATPAY2-SHA256 a="1"')]
    head = request_head("POST", "/v3/x?a=%2B", b"api.example:443", headers, 12)
    assert head == (
        b"POST /v3/x?a=%2B HTTP/1.1\r\nHost: api.example:443\r\nUser-Agent: wxrecon/1\r\n"
        b'Authorization: WECHATPAY2-SHA256 a="1"\r\nContent-Length: 12\r\n\r\n'
    )
    assert b"Content-Length" not in request_head("GET", "/v3/x", b"h", headers, 0)


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        ("/v3/x\r\nX-Smuggled: 1", []),
        ("/v3/x y", []),
        ("/v3/é", []),
        ("/v3/x", [(b"X", b"a\r\nX-Smuggled: 1")]),
        ("/v3/x", [(b"X", b"a\x00")]),
    ],
)
def test_a_head_that_would_smuggle_a_line_is_refused(
    target: str, headers: list[tuple[bytes, bytes]]
) -> None:
    with pytest.raises(ValueError):
        request_head("GET", target, b"h", headers, 0)

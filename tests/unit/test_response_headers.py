"""The client's answer readers give what ``http.client`` gives for the provider's answers,
bounds included: ``deadline.read_headers``, and ``http11``'s read straight off the socket,
which leaves every other shape to http.client with the bytes it read; the request head is
what ``http.client`` sends, and refuses what would smuggle a line."""

from __future__ import annotations

import http.client
import io
import socket
import time

import pytest

from wxrecon.wechatpay import http11
from wxrecon.wechatpay.deadline import BoundedResponse, read_headers

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


def _pair(data: bytes) -> socket.socket:
    """Our end of a connection whose answer ``data`` has already arrived (then closed)."""
    ours, theirs = socket.socketpair()
    theirs.sendall(data)
    theirs.close()
    return ours


def _via_http_client(sock: socket.socket, read: bytes) -> BoundedResponse:
    response = BoundedResponse(
        sock, method="GET", deadline=time.monotonic() + 5, read_timeout=5, prefix=read
    )
    response.begin()
    return response


def test_the_common_answer_is_read_off_the_socket_as_http_client_reads_it() -> None:
    answer = b"HTTP/1.1 200 OK\r\n" + ANSWER
    head, rest = http11.read_head(_pair(answer), time.monotonic() + 5, 5)
    assert head is not None and (head.status, head.length, head.close) == (200, 17, False)
    assert head.pairs == http.client.parse_headers(io.BytesIO(ANSWER)).items()
    assert rest == b'{"state":"DONE"}\n'
    standard = _via_http_client(_pair(answer), b"")
    assert standard.header_pairs == head.pairs and standard.read() == rest


def test_a_body_in_pieces_is_joined_and_a_short_or_long_one_is_told() -> None:
    head = http11.Head(200, [], 10, close=False)
    ours, theirs = socket.socketpair()
    theirs.sendall(b"67890")
    assert http11.read_body(ours, head, b"12345", time.monotonic() + 5, 5) == (b"1234567890", True)
    theirs.sendall(b"67890EXTRA")  # more than announced: the connection is not reused
    assert http11.read_body(ours, head, b"12345", time.monotonic() + 5, 5) == (b"1234567890", False)
    theirs.close()
    with pytest.raises(http.client.IncompleteRead):
        http11.read_body(ours, head, b"123", time.monotonic() + 5, 5)
    closing = http11.Head(200, [], 3, close=True)
    assert http11.read_body(ours, closing, b"abc", time.monotonic() + 5, 5) == (b"abc", False)


@pytest.mark.parametrize(
    ("answer", "status", "pairs"),
    [
        # bare LFs, a 100 Continue first, HTTP/1.0, chunked, no length: http.client judges
        (b"HTTP/1.1 200 OK\nX: 1\nContent-Length: 0\n\n", 200, [("X", "1")]),
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nY: 2\r\n\r\n",
            204,
            [("Y", "2")],
        ),
        (b"HTTP/1.0 404\r\nContent-Length: 0\r\n\r\n", 404, []),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", 200, []),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok", 200, []),
    ],
)
def test_an_unusual_answer_goes_to_http_client_with_every_byte_read(
    answer: bytes, status: int, pairs: list[tuple[str, str]]
) -> None:
    sock = _pair(answer)
    head, read = http11.read_head(sock, time.monotonic() + 5, 5)
    assert head is None and answer.startswith(read)
    response = _via_http_client(sock, read)
    assert response.status == status
    assert [p for p in response.header_pairs if p[0] in ("X", "Y")] == pairs


def test_a_bad_status_line_is_still_refused() -> None:
    for answer in (
        b"HTTP/1.1 2OO OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(101)) + b"\r\n",
    ):
        sock = _pair(answer)
        head, read = http11.read_head(sock, time.monotonic() + 5, 5)
        assert head is None
        with pytest.raises(http.client.HTTPException):
            _via_http_client(sock, read)


def test_the_request_head_is_what_http_client_sends() -> None:
    headers = [(b"User-Agent", b"wxrecon/1"), (b"Authorization", b'WECHATPAY2-SHA256 a="1"')]
    head = http11.request_head("POST", "/v3/x?a=%2B", b"api.example:443", headers, 12)
    assert head == (
        b"POST /v3/x?a=%2B HTTP/1.1\r\nHost: api.example:443\r\nUser-Agent: wxrecon/1\r\n"
        b'Authorization: WECHATPAY2-SHA256 a="1"\r\nContent-Length: 12\r\n\r\n'
    )
    assert b"Content-Length" not in http11.request_head("GET", "/v3/x", b"h", headers, 0)


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
        http11.request_head("GET", target, b"h", headers, 0)

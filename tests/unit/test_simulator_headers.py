"""The simulator's cheap request-header reader (``simulator.handler.read_headers``): read as
``http.client.parse_headers`` reads them, for the requests a client sends."""

from __future__ import annotations

import http.client
import io

from wxrecon.simulator.handler import MAX_HEADERS, read_headers

BLOCK = (
    b'Host: 127.0.0.1\r\nuser-agent: wxrecon/1\r\nAuthorization: WECHATPAY2 a=b,c="d:e"\r\n'
    b"Accept: application/json\r\nX-Twice: first\r\nx-twice: second\r\n"
    b"X-Folded: one\r\n two\r\n\r\nBODY"
)


def test_headers_read_as_the_standard_library_reads_them() -> None:
    found = read_headers(io.BytesIO(BLOCK))
    assert not isinstance(found, str)
    standard = http.client.parse_headers(io.BytesIO(BLOCK))
    for name in ("Host", "User-Agent", "AUTHORIZATION", "accept", "X-Twice", "Missing"):
        assert found.get(name) == standard.get(name), name
    assert found.get("X-Folded") == "one two"
    assert "user-agent" in found and "USER-AGENT" in found and "nope" not in found
    assert found["Accept"] == "application/json"


def test_the_body_is_left_unread() -> None:
    stream = io.BytesIO(BLOCK)
    read_headers(stream)
    assert stream.read() == b"BODY"


def test_too_many_headers_and_too_long_a_line_are_refused() -> None:
    many = b"".join(b"X-%d: v\r\n" % i for i in range(MAX_HEADERS + 1)) + b"\r\n"
    assert read_headers(io.BytesIO(many)) == "Too many headers"
    assert read_headers(io.BytesIO(b"X: " + b"v" * 70000 + b"\r\n\r\n")) == "Line too long"
    assert not isinstance(read_headers(io.BytesIO(b"X: v\r\n" * MAX_HEADERS + b"\r\n")), str)

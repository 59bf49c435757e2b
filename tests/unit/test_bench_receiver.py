"""The delivery benchmark's webhook receiver (``benchmarks/receiver.py``): requests parsed off
the bytes as they come, in pieces or pipelined; a bad signature 401, a bad head 400."""

from __future__ import annotations

import io
import json
import time
from typing import Any

from benchmarks.receiver import MAX_HEAD, Connection, Receiver
from wxrecon.outbound.webhook import sign

SECRET = "whsec-bench"


class Transport:
    def __init__(self) -> None:
        self.written = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True


def request(event_id: str, secret: str = SECRET) -> bytes:
    body = json.dumps({"event_id": event_id}).encode()
    stamp = int(time.time())
    head = (
        "POST /hooks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nWxrecon-Timestamp: {stamp}\r\n"
        f"Wxrecon-Signature: {sign(secret, stamp, body)}\r\n\r\n"
    )
    return head.encode() + body


def connection() -> tuple[Connection, Transport, io.StringIO]:
    out = io.StringIO()
    conn, transport = Connection(Receiver(SECRET, out)), Transport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    return conn, transport, out


def lines(out: io.StringIO) -> list[Any]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_requests_in_pieces_and_pipelined_are_each_answered_once() -> None:
    conn, transport, out = connection()
    one, two = request("e1"), request("e2") + request("e1")
    for i in range(0, len(one), 7):  # a head and a body split anywhere
        conn.data_received(one[i : i + 7])
    conn.data_received(two)  # two requests in one read
    assert transport.written == b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" * 3
    seen = [(e["event"]["event_id"], e["duplicate"]) for e in lines(out)]
    assert seen == [("e1", False), ("e2", False), ("e1", True)]
    assert not transport.closed


def test_a_bad_signature_is_refused_and_a_bad_head_closes_the_connection() -> None:
    conn, transport, out = connection()
    conn.data_received(request("e1", secret="another"))
    assert transport.written.startswith(b"HTTP/1.1 401 ") and lines(out) == []
    conn.data_received(b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n")
    assert transport.written.endswith(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    assert transport.closed
    conn, transport, _ = connection()
    conn.data_received(b"POST / HTTP/1.1\r\nX: " + b"a" * MAX_HEAD)  # a head with no end
    assert transport.closed and transport.written.startswith(b"HTTP/1.1 400 ")

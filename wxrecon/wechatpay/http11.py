"""HTTP/1.1 as the provider speaks it, on a connected socket: the request head in one join,
and the answer read straight off the socket when it has the common shape (``HTTP/1.1``, a
final status, one ``Content-Length``, no transfer coding). Around each answer,
``http.client``'s ``HTTPResponse`` with its buffered reader and socket file cost a tenth of
the client's CPU per request. Anything else (chunked, a 1xx, HTTP/1.0, 204 or 304, bare
LFs, a head longer than ``MAX_HEAD``) goes to :class:`~wxrecon.wechatpay.deadline.
BoundedResponse` with the bytes already read, so the unusual has one judge: http.client.

Every read is bounded by the read timeout and by what is left of the attempt's deadline.
"""

from __future__ import annotations

import http.client
import re
import socket
from dataclasses import dataclass

from wxrecon.wechatpay.deadline import MAX_HEADERS, bound, header_pairs

MAX_HEAD = 64 * 1024  # a longer head is http.client's to refuse (its line and count limits)
READ = 64 * 1024
_UNSAFE = re.compile(rb"[\x00-\x1f\x7f]").search  # what would split or end a line


def request_head(
    method: str, target: str, host: bytes, headers: list[tuple[bytes, bytes]], length: int
) -> bytes:
    """The request line and headers, as ``http.client``'s ``putrequest`` and ``putheader``
    would send them, in one join: those check each name and value apart, this the whole head
    at once. Raises ValueError, with nothing sent, on a target or header that would smuggle
    a line (a control character, a space in the target, a target that is not ASCII)."""
    if not target.isascii() or " " in target:
        raise ValueError("the request target must be ASCII without spaces")
    lines = [f"{method} {target} HTTP/1.1".encode("ascii"), b"Host: " + host]
    lines += [name + b": " + value for name, value in headers]
    if length:
        lines.append(b"Content-Length: %d" % length)
    if _UNSAFE(b" ".join(lines)):
        raise ValueError("a control character in the request line or a header")
    return b"\r\n".join(lines) + b"\r\n\r\n"


@dataclass(frozen=True)
class Head:
    status: int
    pairs: list[tuple[str, str]]  # as received
    length: int  # of the body: its Content-Length
    close: bool  # the server closes the connection after this answer


def simple_head(block: bytes) -> Head | None:
    """The head (without its blank line) of an answer of the common shape; None for any
    other, which http.client judges."""
    if block.count(b"\n") != block.count(b"\r\n"):
        return None
    lines = block.split(b"\r\n")
    parts = lines[0].split(None, 2)
    if len(parts) < 2 or parts[0] != b"HTTP/1.1" or len(parts[1]) != 3:
        return None
    if not parts[1].isdigit() or len(lines) - 1 > MAX_HEADERS:
        return None
    status = int(parts[1])
    if status < 200 or status in (204, 304):
        return None
    pairs = header_pairs(lines[1:])
    lengths, close = [], False
    for name, value in pairs:
        low = name.lower()
        if low == "content-length":
            lengths.append(value)
        elif low == "transfer-encoding":
            return None
        elif low == "connection":
            close = close or "close" in value.lower()
    if len(lengths) != 1 or not (lengths[0].isascii() and lengths[0].isdigit()):
        return None
    return Head(status, pairs, int(lengths[0]), close)


def recv(sock: socket.socket, deadline: float, read_timeout: float) -> bytes:
    """One read, bounded by the read timeout and the deadline (TimeoutError)."""
    bound(sock, deadline, read_timeout)
    return sock.recv(READ)


def read_head(
    sock: socket.socket, deadline: float, read_timeout: float
) -> tuple[Head | None, bytes]:
    """The answer's head if it has the common shape, with the bytes read past it; else None
    with every byte read (nothing is lost for the general path)."""
    data = recv(sock, deadline, read_timeout)
    while (end := data.find(b"\r\n\r\n")) < 0:
        if not data or len(data) > MAX_HEAD:
            return None, data
        more = recv(sock, deadline, read_timeout)
        if not more:
            return None, data
        data += more
    head = simple_head(data[:end])
    return (head, data[end + 4 :]) if head is not None else (None, data)


def read_body(
    sock: socket.socket, head: Head, first: bytes, deadline: float, read_timeout: float
) -> tuple[bytes, bool]:
    """The body of ``head``'s answer (``first`` is what came with the head), and whether its
    connection can carry another request: not when the server closes it, nor when more came
    than was announced. A body cut short raises IncompleteRead."""
    chunks, got = [first], len(first)
    while got < head.length:
        more = recv(sock, deadline, read_timeout)
        if not more:
            raise http.client.IncompleteRead(b"".join(chunks), head.length - got)
        chunks.append(more)
        got += len(more)
    body = b"".join(chunks) if len(chunks) > 1 else first
    return body[: head.length], not head.close and got == head.length

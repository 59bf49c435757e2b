"""One deadline for a whole exchange: every socket operation waits at most the read timeout
and at most what is left of the deadline, so however slowly a server dribbles its answer, the
attempt ends on time (a per-read timeout alone would let it hold a call for ever)."""

from __future__ import annotations

import http.client
import inspect
import io
import socket
import time
from typing import Any


def remaining(deadline: float, cap: float) -> float:
    """The timeout for the next socket operation: ``cap``, or less if the deadline is near."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return min(cap, left)


def bound(sock: socket.socket, deadline: float, cap: float) -> None:
    """Set ``sock``'s timeout for its next operation (TimeoutError once the deadline passed);
    a system call saved while the cap holds."""
    timeout = remaining(deadline, cap)
    if timeout != sock.gettimeout():
        sock.settimeout(timeout)


class _DeadlineReader(io.RawIOBase):
    """A socket's reads, each bounded by the read timeout and by what is left of the deadline
    (a per-read timeout alone lets a server dribbling a byte at a time hold a call for ever)."""

    def __init__(
        self, sock: socket.socket, deadline: float, read_timeout: float, prefix: bytes = b""
    ) -> None:
        self._sock = sock
        self._prefix = prefix  # read off the socket already (``http11.read_head``)
        # The socket's own raw reader: it keeps the socket open while a response still
        # reads from it after its connection was closed ("Connection: close").
        self._io = sock.makefile("rb", buffering=0)
        self._deadline = deadline
        self._read_timeout = read_timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._prefix:
            size = min(len(buffer), len(self._prefix))
            buffer[:size], self._prefix = self._prefix[:size], self._prefix[size:]
            return size
        bound(self._sock, self._deadline, self._read_timeout)
        n = self._io.readinto(buffer)
        if n is None:  # "would block": only a non-blocking socket says so
            raise TimeoutError
        return n

    def close(self) -> None:
        self._io.close()
        super().close()


class _DeadlineSocket:
    """What ``HTTPResponse`` takes as its socket: it only calls ``makefile``."""

    def __init__(
        self, sock: socket.socket, deadline: float, read_timeout: float, prefix: bytes
    ) -> None:
        self._raw = _DeadlineReader(sock, deadline, read_timeout, prefix)

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(self._raw)


# Newer Pythons bound the header count per connection and pass it in; ours is the default.
_READ: Any = http.client._read_headers  # type: ignore[attr-defined]
MAX_HEADERS: int = getattr(http.client, "_MAXHEADERS", 100)
_MAX_ARG: tuple[int, ...] = (MAX_HEADERS,) if len(inspect.signature(_READ).parameters) > 1 else ()


def _header_lines(fp: Any) -> list[bytes]:
    lines: list[bytes] = _READ(fp, *_MAX_ARG)
    return lines


class Headers:
    """What ``http.client`` and callers ask of a response's headers (``get``, ``get_all``,
    ``items``, ``[name]``, ``in``), case-insensitively and in received order, without an
    ``email.message.Message`` (ten ``__setitem__`` calls per answer cost more than the rest
    of the header reading)."""

    __slots__ = ("_first", "_pairs")

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._pairs = pairs
        self._first: dict[str, str] = {}
        for name, value in pairs:
            self._first.setdefault(name.lower(), value)

    def get(self, name: str, failobj: Any = None) -> Any:
        return self._first.get(name.lower(), failobj)

    def get_all(self, name: str, failobj: Any = None) -> Any:
        low = name.lower()
        found = [v for k, v in self._pairs if k.lower() == low]
        return found or failobj

    def __getitem__(self, name: str) -> str | None:
        return self._first.get(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._first

    def items(self) -> list[tuple[str, str]]:
        return list(self._pairs)

    def keys(self) -> list[str]:
        return [k for k, _ in self._pairs]

    def values(self) -> list[str]:
        return [v for _, v in self._pairs]

    def __iter__(self) -> Any:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self._pairs)


def read_headers(fp: Any) -> tuple[Headers, list[tuple[str, str]]]:
    """The header block as ``http.client.parse_headers`` reads it, without running it
    through the email package (its feed parser, then its Message, cost more than the
    signature check). ``http.client._read_headers`` keeps its bounds (line length, header
    count). Also returns the (name, value) pairs in order, which is what the wire reads."""
    pairs = header_pairs(_header_lines(fp))
    return Headers(pairs), pairs


def header_pairs(lines: list[bytes]) -> list[tuple[str, str]]:
    """Header lines (CRLF stripped or not) as (name, value) pairs in order: a line folded
    onto the previous one continues its value, a line that is no header is dropped."""
    pending: list[list[str]] = []
    for raw in lines:
        line = raw.decode("iso-8859-1").rstrip("\r\n")
        if line[:1] in (" ", "\t"):
            if pending:
                pending[-1][1] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        if sep and name and name == name.strip():
            pending.append([name, value.strip()])
    return [(name, value) for name, value in pending]


class BoundedResponse(http.client.HTTPResponse):
    def __init__(
        self,
        sock: socket.socket,
        debuglevel: int = 0,
        method: str | None = None,
        url: str | None = None,
        *,
        deadline: float,
        read_timeout: float,
        prefix: bytes = b"",
    ) -> None:
        wrapped: Any = _DeadlineSocket(sock, deadline, read_timeout, prefix)
        super().__init__(wrapped, debuglevel, method, url)
        self.header_pairs: list[tuple[str, str]] = []  # as received, once begun

    def begin(self) -> None:
        """``HTTPResponse.begin`` of Python 3.11-3.13, with :func:`read_headers`."""
        if self.headers is not None:
            return
        while True:
            version, status, reason = self._read_status()
            if status != http.client.CONTINUE:
                break
            _header_lines(self.fp)
        headers, self.header_pairs = read_headers(self.fp)
        self.code = self.status = status
        self.reason = reason.strip()
        if version in ("HTTP/1.0", "HTTP/0.9"):
            self.version = 10
        elif version.startswith("HTTP/1."):
            self.version = 11
        else:
            raise http.client.UnknownProtocol(version)
        self.headers = headers  # http.client only calls get(); getheader() get_all()
        self.msg = self.headers
        encoding = self.headers.get("transfer-encoding")
        self.chunked = bool(encoding and encoding.lower() == "chunked")
        if self.chunked:
            self.chunk_left = None
        self.will_close = self._check_close()
        self.length = None
        length = self.headers.get("content-length")
        if length and not self.chunked:
            try:
                self.length = int(length)
            except ValueError:
                self.length = None
            else:
                if self.length < 0:
                    self.length = None
        if status in (204, 304) or 100 <= status < 200 or self._method == "HEAD":
            self.length = 0
        if not self.will_close and not self.chunked and self.length is None:
            self.will_close = True

"""One deadline for a whole exchange: every socket operation waits at most the read timeout
and at most what is left of the deadline, so however slowly a server dribbles its answer, the
attempt ends on time (a per-read timeout alone would let it hold a call for ever)."""

from __future__ import annotations

import http.client
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


class _DeadlineReader(io.RawIOBase):
    """A socket's reads, each bounded by the read timeout and by what is left of the deadline
    (a per-read timeout alone lets a server dribbling a byte at a time hold a call for ever)."""

    def __init__(self, sock: socket.socket, deadline: float, read_timeout: float) -> None:
        self._sock = sock
        # The socket's own raw reader: it keeps the socket open while a response still
        # reads from it after its connection was closed ("Connection: close").
        self._io = sock.makefile("rb", buffering=0)
        self._deadline = deadline
        self._read_timeout = read_timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        timeout = remaining(self._deadline, self._read_timeout)
        if timeout != self._sock.gettimeout():  # a system call saved while the cap holds
            self._sock.settimeout(timeout)
        n = self._io.readinto(buffer)
        if n is None:  # "would block": only a non-blocking socket says so
            raise TimeoutError
        return n

    def close(self) -> None:
        self._io.close()
        super().close()


class _DeadlineSocket:
    """What ``HTTPResponse`` takes as its socket: it only calls ``makefile``."""

    def __init__(self, sock: socket.socket, deadline: float, read_timeout: float) -> None:
        self._raw = _DeadlineReader(sock, deadline, read_timeout)

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(self._raw)


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
    ) -> None:
        wrapped: Any = _DeadlineSocket(sock, deadline, read_timeout)
        super().__init__(wrapped, debuglevel, method, url)

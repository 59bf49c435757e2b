"""How a signed request reaches the provider: bytes in, bytes out, on one production wire.

:class:`PoolWire` keeps the standard library's ``http.client`` connections alive in a small
pool (connect, TLS, a proxy's tunnel); the bytes of an exchange are :mod:`~wxrecon.wechatpay.
http11`'s: the request head in one write, the common answer read straight off the socket,
any other through ``http.client``'s ``HTTPResponse``. The client has already percent-encoded
and signed the request target, so nothing here parses a URL (httpx scans every character of
the long ciphertext in a query string) or builds request and response models. A proxy is an
HTTP CONNECT tunnel on the same connections (``http.client``'s ``set_tunnel``), so every
request takes the same code path.

Every answer is bounded: at most ``max_body`` bytes are read (a larger body is refused, and its
connection dropped, before it is read), and one ``deadline`` covers an attempt from the pool
wait through connect, send and the whole read, however slowly the server dribbles.

Whether a failed request may have reached the provider is decided here, once, in
:data:`FAILURES`; test doubles raise the same values through :func:`failure`.
"""

from __future__ import annotations

import base64
import functools
import http.client
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import httpx

from wxrecon.wechatpay import http11
from wxrecon.wechatpay.deadline import BoundedResponse, bound, remaining

MAX_BODY = 1 << 20  # 1 MiB: the largest answer documented is a few kB


@dataclass(frozen=True)
class Origin:
    """A base URL taken apart once: where requests go and what their targets start with."""

    scheme: str
    host: str
    port: int | None
    prefix: str  # a path the base URL carries, without the trailing slash
    host_header: bytes

    @classmethod
    def parse(cls, base_url: str) -> Origin:
        url = httpx.URL(base_url)
        netloc = url.netloc.decode("ascii")
        return cls(
            url.scheme, url.host, url.port, url.raw_path.decode().rstrip("/"), netloc.encode()
        )

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host_header.decode()}"


class ReplyHeaders(dict[str, str]):
    """Response headers by lower-case name; ``get`` and ``[]`` take any case. A repeated
    header's values are joined with ", "."""

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    @classmethod
    def of(cls, items: Iterable[tuple[str, str]]) -> ReplyHeaders:
        headers = cls()
        for key, value in items:
            name = key.lower()
            seen = dict.get(headers, name)
            dict.__setitem__(headers, name, value if seen is None else f"{seen}, {value}")
        return headers


@dataclass
class Reply:
    status: int
    headers: ReplyHeaders
    body: bytes


# What each transport failure means, by name (httpx's names, so metrics read as before):
# (no connection to the host: a reason to fail over, the request may have reached the provider,
# the provider answered but the answer is unusable).
FAILURES: dict[str, tuple[bool, bool, bool]] = {
    "ConnectError": (True, False, False),  # refused, unreachable, DNS, TLS, proxy refused
    "ConnectTimeout": (True, False, False),
    "PoolTimeout": (False, False, False),  # no free connection slot: nothing left this host
    "WriteError": (False, True, False),  # part of the request may have gone out
    "WriteTimeout": (False, True, False),
    "ReadError": (False, True, False),  # reset after the request was sent
    "ReadTimeout": (False, True, False),
    "RemoteProtocolError": (False, True, False),  # closed early, a bad status line, …
    "DeadlineExceeded": (False, True, False),  # the attempt's total time ran out
    "BodyTooLarge": (False, True, True),  # an answer came, larger than max_body
}


class WireError(Exception):
    """A transport failure; build it with :func:`failure`, never by hand."""

    def __init__(
        self,
        name: str,
        *,
        connect_level: bool,
        sent: bool,
        garbled: bool = False,
        status: int | None = None,
        headers: ReplyHeaders | None = None,
    ) -> None:
        super().__init__(name)
        self.name = name
        self.connect_level = connect_level  # no connection to the host: a reason to fail over
        self.sent = sent  # the request may have reached the provider
        self.garbled = garbled  # an answer came but cannot be used (too large)
        self.status = status
        self.headers = headers


def failure(
    name: str, *, status: int | None = None, headers: ReplyHeaders | None = None
) -> WireError:
    """The failure called ``name``; an unknown name is taken to be "maybe sent" (never guess
    that a request did not go out)."""
    connect_level, sent, garbled = FAILURES.get(name, (False, True, False))
    return WireError(
        name,
        connect_level=connect_level,
        sent=sent,
        garbled=garbled,
        status=status,
        headers=headers,
    )


class Wire(Protocol):
    def send(
        self,
        method: str,
        origin: Origin,
        target: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> Reply: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Proxy:
    """An HTTP proxy reached with CONNECT; credentials in the URL become Proxy-Authorization."""

    host: str
    port: int
    authorization: str | None = None

    @classmethod
    def parse(cls, url: str) -> Proxy:
        parts = urlsplit(url)
        try:
            port = parts.port or 80
        except ValueError:
            raise ValueError("proxy has a bad port") from None
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError("proxy must be an http://host:port URL (HTTP CONNECT)")
        auth = None
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            auth = "Basic " + base64.b64encode(pair.encode()).decode()
        return cls(parts.hostname, port, auth)

    def __repr__(self) -> str:  # never the credentials
        return f"Proxy({self.host}:{self.port})"


class PoolWire:
    """Keep-alive ``http.client`` connections, at most ``max_connections`` in use at once.

    An idle connection is retired after ``keepalive_expiry`` seconds, or as soon as its socket
    turns readable (the server closed it, or sent what nobody asked for).
    """

    def __init__(
        self,
        *,
        connect: float,
        read: float,
        max_connections: int,
        keepalive_expiry: float,
        deadline: float | None = None,
        max_body: int = MAX_BODY,
        proxy: Proxy | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.connect_timeout = connect
        self.read_timeout = read
        self.deadline = deadline if deadline is not None else connect + read
        self.max_body = max_body
        self.keepalive_expiry = keepalive_expiry
        self.proxy = proxy
        self._ssl_context = ssl_context
        self._slots = threading.BoundedSemaphore(max_connections)
        self._lock = threading.Lock()
        self._idle: dict[Origin, list[tuple[http.client.HTTPConnection, float]]] = {}

    def send(
        self,
        method: str,
        origin: Origin,
        target: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> Reply:
        deadline = time.monotonic() + self.deadline
        if not self._slots.acquire(timeout=min(self.read_timeout, self.deadline)):
            raise failure("PoolTimeout")
        try:
            conn = self._idle_connection(origin) or self._connect(origin, deadline)
            keep = False
            try:
                status, reply_headers, content, keep = self._exchange(
                    conn, method, origin, target, headers, body, deadline
                )
            finally:
                if keep:
                    with self._lock:
                        self._idle.setdefault(origin, []).append((conn, time.monotonic()))
                else:
                    conn.close()
            return Reply(status, reply_headers, content)
        finally:
            self._slots.release()

    def _exchange(
        self,
        conn: http.client.HTTPConnection,
        method: str,
        origin: Origin,
        target: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        deadline: float,
    ) -> tuple[int, ReplyHeaders, bytes, bool]:
        sock = conn.sock
        try:
            bound(sock, deadline, self.read_timeout)
        except TimeoutError:  # the wait for a slot used the attempt up: nothing sent
            raise failure("PoolTimeout") from None
        request = http11.request_head(method, target, origin.host_header, headers, len(body))
        try:
            sock.sendall(request + body)  # one write; its timeout bounds the whole send
        except TimeoutError:
            raise _timed_out(deadline, "WriteTimeout") from None
        except OSError:
            raise failure("WriteError") from None
        try:
            # A HEAD's answer has no body whatever its length says: http.client's to read.
            head, read = (
                http11.read_head(sock, deadline, self.read_timeout)
                if method != "HEAD"
                else (None, b"")
            )
            if head is not None:  # the common shape, read straight off the socket
                reply_headers = ReplyHeaders.of(head.pairs)
                if head.length > self.max_body:
                    raise failure("BodyTooLarge", status=head.status, headers=reply_headers)
                content, keep = http11.read_body(sock, head, read, deadline, self.read_timeout)
                return head.status, reply_headers, content, keep
            return self._general(sock, method, read, deadline)
        except TimeoutError:
            raise _timed_out(deadline, "ReadTimeout") from None
        except http.client.HTTPException:  # closed early, a bad status line, a short body, …
            raise failure("RemoteProtocolError") from None
        except OSError:
            raise failure("ReadError") from None

    def _general(
        self, sock: socket.socket, method: str, read: bytes, deadline: float
    ) -> tuple[int, ReplyHeaders, bytes, bool]:
        """Any other answer, through http.client's ``HTTPResponse`` (``read`` is what came
        off the socket already)."""
        response = BoundedResponse(
            sock, method=method, deadline=deadline, read_timeout=self.read_timeout, prefix=read
        )
        try:
            response.begin()
            reply_headers = ReplyHeaders.of(response.header_pairs)
            if response.length is not None and response.length > self.max_body:
                raise failure("BodyTooLarge", status=response.status, headers=reply_headers)
            if response.length is not None:
                content = response.read()  # a short body raises IncompleteRead
            else:  # chunked or until close: read one byte past the cap to know
                content = response.read(self.max_body + 1)
                if len(content) > self.max_body:
                    raise failure("BodyTooLarge", status=response.status, headers=reply_headers)
            # Reuse only a connection whose answer was read to its end.
            keep = not response.will_close and response.isclosed()
            return response.status, reply_headers, content, keep
        finally:
            response.close()  # its reader only: the connection is ours to keep or close

    def _idle_connection(self, origin: Origin) -> http.client.HTTPConnection | None:
        now = time.monotonic()
        while True:
            with self._lock:
                idle = self._idle.get(origin)
                if not idle:
                    return None
                conn, since = idle.pop()  # the most recently used: the likeliest still open
            if now - since < self.keepalive_expiry and not _readable(conn.sock):
                return conn
            conn.close()

    def _connect(self, origin: Origin, deadline: float) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection
        host, port = (
            (self.proxy.host, self.proxy.port) if self.proxy else (origin.host, origin.port)
        )
        try:
            timeout = remaining(deadline, self.connect_timeout)
        except TimeoutError:
            raise failure("PoolTimeout") from None
        if origin.scheme == "https":
            context = self._ssl_context or _default_ssl_context()
            conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
        if self.proxy is not None:
            auth = self.proxy.authorization
            conn.set_tunnel(
                origin.host, origin.port, {"Proxy-Authorization": auth} if auth else None
            )
        try:
            # TCP, the CONNECT tunnel and, for https, the TLS handshake: nothing of ours sent.
            conn.connect()
        except TimeoutError:
            conn.close()
            raise failure("ConnectTimeout") from None
        except OSError:  # refused, unreachable, DNS, a bad certificate, a proxy's refusal
            conn.close()
            raise failure("ConnectError") from None
        return conn

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn, _ in conns:
                conn.close()


def _timed_out(deadline: float, name: str) -> WireError:
    return failure("DeadlineExceeded" if time.monotonic() >= deadline else name)


def _readable(sock: socket.socket | None) -> bool:
    """True when an idle connection has something to read: only a close (or junk) can be."""
    if sock is None:
        return True
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


@functools.cache
def _default_ssl_context() -> ssl.SSLContext:
    """httpx's default context (certifi's roots, SSL_CERT_FILE honoured), made once."""
    return httpx.create_ssl_context()

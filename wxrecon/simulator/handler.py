"""The HTTP plumbing: a threaded HTTP/1.1 keep-alive server and its request handler.

One thread per connection (``ThreadingHTTPServer``); RSA work runs outside every lock and
releases the GIL, so two cores are used. Idle keep-alive connections are closed after
``idle_timeout`` seconds (the provider does so after 8 s). A ``reset`` closes the socket with
``SO_LINGER`` 0 so the client sees a real RST; a ``hang`` holds the connection silently until
the client gives up or the hang ends.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import select
import socket
import struct
import threading
import time
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from wxrecon.simulator import material
from wxrecon.simulator.faults import FaultSpecError
from wxrecon.simulator.provider import new_request_id

if TYPE_CHECKING:
    from wxrecon.simulator.server import Simulator

log = logging.getLogger("wxrecon.simulator")

MAX_BODY = 64 * 1024
MAX_LINE = 65536  # http.client's limits on a header line and on the number of headers
MAX_HEADERS = 100
_SIMPLE_VERSIONS = ("HTTP/1.1", "HTTP/1.0")


_date: list[Any] = [0, ""]  # (whole second, its Date header)


def http_date() -> str:
    """The Date header, formatted once a second."""
    now = int(time.time())
    if _date[0] != now:
        _date[:] = [now, formatdate(now, usegmt=True)]
    return str(_date[1])


class Headers(dict[str, str]):
    """Request headers by lower-cased name (the first of repeated ones), read as
    ``http.client``'s message is: ``get`` ignores case. Parsing the message through the email
    package cost the simulator more than its signature checks."""

    def get(self, name: str, default: Any = None) -> Any:
        return dict.get(self, name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return dict.__getitem__(self, name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and dict.__contains__(self, name.lower())


def read_headers(rfile: Any) -> Headers | str:
    """The header block up to its empty line, or why it is refused (a line too long, too
    many headers). A line folded onto the previous one continues its value."""
    headers = Headers()
    last = None
    for _ in range(MAX_HEADERS + 1):
        line = rfile.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            return "Line too long"
        if line in (b"\r\n", b"\n", b""):
            return headers
        text = line.decode("iso-8859-1").rstrip("\r\n")
        if text[:1] in (" ", "\t"):
            if last is not None:
                dict.__setitem__(headers, last, f"{dict.__getitem__(headers, last)} {text.strip()}")
            continue
        name, sep, value = text.partition(":")
        if not sep:
            continue
        last = name.strip().lower()
        if not dict.__contains__(headers, last):
            dict.__setitem__(headers, last, value.strip())
        else:
            last = None  # a repeated header: the first one is kept, its folds dropped
    return "Too many headers"


def is_loopback(peer: str) -> bool:
    """Whether a peer address is loopback (127.0.0.0/8, ::1, or IPv4-mapped loopback)."""
    try:
        address = ipaddress.ip_address(peer.split("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "wxrecon-simulator"
    sys_version = ""
    server: Server

    def setup(self) -> None:
        self.timeout = self.server.sim.idle_timeout  # type: ignore[misc]  # idle keep-alive closes
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.track(self.connection, True)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        self.server.track(self.connection, False)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """HTTP-level refusals (bad request line, unknown method, bad length) as APIv3 errors."""
        self.close_connection = True
        body = {"code": "INVALID_REQUEST", "message": message or HTTPStatus(code).phrase}
        self._write(
            code,
            json.dumps(body).encode(),
            [("Content-Type", "application/json; charset=utf-8"), ("Request-ID", new_request_id())],
        )

    def parse_request(self) -> bool:
        """A plain ``METHOD target HTTP/1.x`` request line with the cheap header reader;
        anything else through the standard library's full parser."""
        raw: bytes = self.raw_requestline  # type: ignore[attr-defined]  # set by handle_one_request
        line = str(raw, "iso-8859-1").rstrip("\r\n")
        words = line.split(" ")
        if len(words) != 3 or words[2] not in _SIMPLE_VERSIONS or not words[1].startswith("/"):
            return super().parse_request()
        command, path, version = words
        self.requestline = line
        self.request_version = version
        self.command = command
        self.path = "/" + path.lstrip("/") if path.startswith("//") else path
        self.close_connection = version != "HTTP/1.1"
        found = read_headers(self.rfile)
        if isinstance(found, str):
            self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, found)
            return False
        self.headers = found  # type: ignore[assignment]
        connection = found.get("Connection", "").lower()
        if connection == "close":
            self.close_connection = True
        elif connection == "keep-alive":
            self.close_connection = False
        expect = found.get("Expect", "").lower()
        if expect == "100-continue" and version == "HTTP/1.1":
            return self.handle_expect_100()
        return True

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    do_PUT = do_POST
    do_PATCH = do_POST
    do_DELETE = do_GET

    # -- plumbing -------------------------------------------------------------------------

    def _read_body(self) -> bytes | None:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return None
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return None
        if length < 0 or length > MAX_BODY:
            return None
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        sim = self.server.sim
        body = self._read_body()
        if body is None:
            self.send_error(400, "bad or missing Content-Length (bodies up to 64 KiB, not chunked)")
            return
        if self.path.startswith("/_sim/") or self.path == "/_sim":
            self._admin(body)
            return
        reply = sim.provider.handle(self.command, self.path, self.headers, body)
        if reply.delay > 0:
            sim.stopping.wait(reply.delay)
        # Counted before the answer leaves: a client that saw it can read it in the stats.
        sim.traffic.answered(reply.endpoint, reply.outcome)
        try:
            if reply.action == "reset":
                self._reset()
            elif reply.action == "hang":
                self._hang(reply.hang_seconds)
            else:
                self._write(reply.status, reply.body, reply.headers)
        except OSError:  # the client went away first; the request still counts
            self.close_connection = True
        if reply.action or reply.status >= 500 or reply.status == 429:
            log.info("%s %s -> %s", self.command, self.path.split("?")[0], reply.outcome)

    def _write(self, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        lines = [
            f"HTTP/1.1 {status} {phrase}",
            f"Server: {self.server_version}",
            f"Date: {http_date()}",
            *(f"{k}: {v}" for k, v in headers),
            f"Content-Length: {len(body)}",
        ]
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")
        self.wfile.write(head + body)  # one write: no Nagle stall between head and body

    def _reset(self) -> None:
        """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            # detach() leaves the reader/writer objects harmless; closing the descriptor itself
            # sends the RST now (a plain close() waits for them).
            os.close(self.connection.detach())
        except OSError:
            pass

    def _hang(self, seconds: float) -> None:
        """Say nothing until the client hangs up, the hang ends, or the server stops."""
        self.close_connection = True
        deadline = time.monotonic() + seconds
        stopping = self.server.sim.stopping
        while not stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                readable, _, _ = select.select([self.connection], [], [], min(left, 0.2))
                if readable and not self.connection.recv(65536):
                    break  # the client closed its side
            except OSError:
                break

    # -- admin API --------------------------------------------------------------------------

    def _admin(self, body: bytes) -> None:
        if not is_loopback(self.client_address[0]):
            self._admin_answer(403, {"error": "the admin API answers loopback clients only"})
            return
        path, _, query = self.path.partition("?")
        params = dict(parse_qsl(query))
        try:
            data = json.loads(body) if body else {}
        except ValueError:
            self._admin_answer(400, {"error": "body is not JSON"})
            return
        try:
            status, answer = self.server.sim.admin_request(self.command, path, params, data)
        except (ValueError, FaultSpecError, material.SimDirError) as exc:
            status, answer = (
                400,
                {"error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__},
            )
        self._admin_answer(status, answer)

    def _admin_answer(self, status: int, data: Any) -> None:
        self._write(
            status,
            json.dumps(data, ensure_ascii=False).encode(),
            [("Content-Type", "application/json; charset=utf-8")],
        )


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], sim: Simulator) -> None:
        self.sim = sim
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)

    def track(self, conn: socket.socket, alive: bool) -> None:
        with self._conns_lock:
            if alive:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    def drop_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s ended with an error", client_address, exc_info=True)

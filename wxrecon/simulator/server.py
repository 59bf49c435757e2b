"""The HTTP side: a threaded HTTP/1.1 keep-alive server, the admin API, and ``Simulator``.

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
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from wxrecon.simulator import material
from wxrecon.simulator.admin import AdminClient
from wxrecon.simulator.faults import FaultPlan, FaultRule, FaultSpecError
from wxrecon.simulator.material import SimDir
from wxrecon.simulator.provider import Provider, Reply, Timing, new_request_id
from wxrecon.simulator.state import ApiError, Books, BusinessConfig
from wxrecon.simulator.traffic import Traffic

log = logging.getLogger("wxrecon.simulator")

MAX_BODY = 64 * 1024
SAVE_INTERVAL = 5.0


def is_loopback(peer: str) -> bool:
    """Whether a peer address is loopback (127.0.0.0/8, ::1, or IPv4-mapped loopback)."""
    try:
        address = ipaddress.ip_address(peer.split("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "wxrecon-simulator"
    sys_version = ""
    server: _Server

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
            f"Date: {formatdate(usegmt=True)}",
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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], sim: Simulator) -> None:
        self.sim = sim
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

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


class Simulator:
    """A running (or ready-to-run) simulated provider for one simulator directory.

    ``start()`` serves on a background thread (port 0 picks a free port; see ``url``);
    ``serve_forever()`` serves on the calling thread. ``stop()`` ends both.
    """

    def __init__(
        self,
        directory: str | Path | SimDir,
        *,
        config: BusinessConfig | None = None,
        faults: list[FaultRule] | None = None,
        rate_limit: int = 100,
        idle_timeout: float = 8.0,
        latency: float = 0.2,
        hang: float = 60.0,
        state_file: str | Path | None = None,
        seed: int | None = None,
        host: str | None = None,
        port: int | None = None,
    ) -> None:
        self.dir = directory if isinstance(directory, SimDir) else SimDir.load(directory)
        self.keys = self.dir.provider_keys
        self.books = Books(config, seed=seed)
        self.faults = FaultPlan(faults, seed=None if seed is None else seed + 1)
        self.traffic = Traffic(rate_limit)
        self.timing = Timing(latency=latency, hang=hang)
        self.provider = Provider(self.keys, self.books, self.faults, self.traffic, self.timing)
        self.idle_timeout = idle_timeout
        self.state_file = Path(state_file).resolve() if state_file else None
        self.host = host if host is not None else self.dir.host
        self.requested_port = port if port is not None else self.dir.port
        self.stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._saver: threading.Thread | None = None
        self._initial_faults = list(faults or [])
        if self.state_file and self.state_file.exists():
            try:
                self.books.load(json.loads(self.state_file.read_text()))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise material.SimDirError(
                    f"{self.state_file}: cannot load simulator state ({type(exc).__name__})"
                ) from None
        else:
            self._seed_ledgers()

    def _seed_ledgers(self) -> None:
        for seed in self.dir.ledger_seed():
            self.books.set_ledger(seed.mchid, seed.bal_account_no, seed.balance)

    # -- lifecycle ------------------------------------------------------------------------

    def bind(self) -> _Server:
        if self._server is None:
            self._server = _Server((self.host, self.requested_port), self)
            if self.state_file:
                self._saver = threading.Thread(
                    target=self._save_loop, name="sim-saver", daemon=True
                )
                self._saver.start()
        return self._server

    def start(self) -> Simulator:
        server = self.bind()
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="simulator",
            daemon=True,
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve until ``stopping`` is set (e.g. by a signal handler), then stop."""
        self.start()
        try:
            while not self.stopping.wait(0.5):
                pass
        finally:
            self.stop()

    def stop(self) -> None:
        self.stopping.set()
        if self._server is not None:
            if self._thread is not None:
                self._server.shutdown()
                self._thread.join(timeout=5)
            self._close()

    def _close(self) -> None:
        self.stopping.set()
        server = self._server
        if server is None:
            return
        server.server_close()
        server.drop_connections()
        self.save_state()
        self._server = None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the simulator is not bound yet")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = self.host
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def client_env(self) -> dict[str, str]:
        """The ``WXRECON_*`` settings of a client for this running simulator."""
        return self.dir.client_env(self.url)

    def admin(self) -> AdminClient:
        return AdminClient(self.url)

    # -- state file -----------------------------------------------------------------------

    def save_state(self) -> None:
        if self.state_file:
            try:
                self.books.save(self.state_file)
            except OSError as exc:
                log.error("cannot save simulator state to %s: %s", self.state_file, exc.strerror)

    def _save_loop(self) -> None:
        saved = -1
        while not self.stopping.wait(SAVE_INTERVAL):
            self.books.settle(time.time())  # due settlements count as changes too
            if self.books.version != saved:
                saved = self.books.version
                self.save_state()

    # -- admin API ------------------------------------------------------------------------

    def admin_request(
        self, method: str, path: str, params: dict[str, str], data: Any
    ) -> tuple[int, Any]:
        """Answer one admin call; raises ValueError (→ 400) on bad input."""
        now = time.time()
        route = (method, path.rstrip("/"))
        if route == ("GET", "/_sim/health"):
            return 200, {"ok": True, "mchid": self.keys.merchant_mchid, "url": self.url}
        if route == ("GET", "/_sim/ledgers"):
            return 200, {
                "ledgers": self.books.ledgers(
                    now, params.get("mchid"), params.get("bal_account_no")
                )
            }
        if route == ("POST", "/_sim/ledgers"):
            rows = data.get("ledgers", [data]) if isinstance(data, dict) else data
            if not isinstance(rows, list):
                raise ValueError('expected a ledger object or {"ledgers": [...]}')
            seeds = [
                material.LedgerSeed.create(
                    r.get("mchid"), r.get("bal_account_no"), r.get("balance")
                )
                if isinstance(r, dict)
                else _bad("a ledger is a JSON object")
                for r in rows
            ]
            return 200, {
                "ledgers": [
                    self.books.set_ledger(s.mchid, s.bal_account_no, s.balance) for s in seeds
                ]
            }
        if route == ("GET", "/_sim/reductions"):
            return 200, {"reductions": self.books.reductions(now, params.get("out_request_no"))}
        if route == ("GET", "/_sim/bills"):
            return 200, {"bills": self.books.bills(now)}
        if route == ("POST", "/_sim/bills"):
            rows = data.get("bills", [data]) if isinstance(data, dict) else data
            if not isinstance(rows, list):
                raise ValueError('expected a bill object or {"bills": [...]}')
            return 200, {
                "bills": [self.books.seed_bill(now, r, self.keys.merchant_mchid) for r in rows]
            }
        if route == ("GET", "/_sim/faults"):
            return 200, {"rules": self.faults.rules()}
        if route == ("POST", "/_sim/faults"):
            if not isinstance(data, dict):
                raise ValueError('expected {"rules": [...], "mode": "replace"|"add"}')
            raw = data.get("rules", [])
            if not isinstance(raw, list):
                raise ValueError("rules must be a list")
            rules = [FaultRule.from_json(r) for r in raw]
            mode = data.get("mode", "replace")
            if mode == "replace":
                self.faults.replace(rules)
            elif mode == "add":
                self.faults.add(rules)
            else:
                raise ValueError("mode is replace or add")
            return 200, {"rules": self.faults.rules()}
        if route == ("GET", "/_sim/config"):
            return 200, self._config()
        if route == ("POST", "/_sim/config"):
            if not isinstance(data, dict):
                raise ValueError("expected a JSON object of settings")
            changes = dict(data)
            rate_limit = changes.pop("rate_limit", None)
            timing = {
                k: changes.pop(k) for k in ("latency", "hang", "idle_timeout") if k in changes
            }
            for name, value in timing.items():
                if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                    raise ValueError(f"{name} must be a non-negative number")
            if rate_limit is not None and (
                isinstance(rate_limit, bool) or not isinstance(rate_limit, int) or rate_limit < 0
            ):
                raise ValueError("rate_limit must be a non-negative integer (0: unlimited)")
            if changes:
                self.books.set_config(changes)
            if rate_limit is not None:
                self.traffic.limit = rate_limit
            if "latency" in timing:
                self.timing.latency = float(timing["latency"])
            if "hang" in timing:
                self.timing.hang = float(timing["hang"])
            if "idle_timeout" in timing:
                self.idle_timeout = float(timing["idle_timeout"])
            return 200, self._config()
        if route == ("GET", "/_sim/stats"):
            return 200, self.traffic.snapshot()
        if route == ("POST", "/_sim/clock"):
            seconds = data.get("advance") if isinstance(data, dict) else None
            if isinstance(seconds, bool) or not isinstance(seconds, int | float):
                raise ValueError('expected {"advance": SECONDS}')
            return 200, {"clock_offset": self.books.advance_clock(float(seconds))}
        if route == ("POST", "/_sim/reset"):
            what = (
                data.get("what", ["books", "stats", "faults"]) if isinstance(data, dict) else None
            )
            if not isinstance(what, list) or not set(what) <= {"books", "stats", "faults"}:
                raise ValueError("what is a list of books, stats, faults")
            if "books" in what:
                self.books.reset()
                self._seed_ledgers()
            if "stats" in what:
                self.traffic.reset()
            if "faults" in what:
                self.faults.replace([])
            return 200, {"reset": what}
        return 404, {"error": f"no admin route {method} {path}"}

    def _config(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {
            **asdict(self.books.config),
            "rate_limit": self.traffic.limit,
            "latency": self.timing.latency,
            "hang": self.timing.hang,
            "idle_timeout": self.idle_timeout,
            "clock_offset": self.books.clock_offset,
            "cert_mode": self.keys.cert_mode,
        }


def _bad(message: str) -> Any:
    raise ValueError(message)


__all__ = ["ApiError", "Reply", "Simulator"]

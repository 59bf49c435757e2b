"""A webhook receiver as an app would write one (standard library only, no wxrecon import):
verify the signature, deduplicate by event id, answer 2xx.

Used in-process by the relay tests (``Receiver``, with scripted answers) and as a process
by the end-to-end test: ``python tests/webhook_receiver.py PORT SECRET LOG [FAIL_EVERY]``
answers 500 to every FAIL_EVERY-th delivery (before looking at it) and appends each accepted
event to LOG as one JSON line, with whether it was a duplicate.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_BODY = 1 << 20


def verified(secret: bytes, headers: Any, body: bytes, tolerance: int = 300) -> bool:
    """The README's receiver check, in a few lines."""
    stamp = headers.get("Wxrecon-Timestamp", "")
    given = headers.get("Wxrecon-Signature", "")
    if not stamp.isdigit() or abs(time.time() - int(stamp)) > tolerance:
        return False
    mac = hmac.new(secret, stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(f"v1={mac}", given)


class Receiver(ThreadingHTTPServer):
    """Records every request; ``answer(n)`` (n: the request's 1-based number) picks the
    status, or a number of seconds to stall (a float) before answering 200."""

    daemon_threads = True

    def __init__(
        self,
        secret: bytes,
        answer: Callable[[int], int | float] = lambda n: 200,
        on_event: Callable[[dict[str, Any], bool], None] | None = None,
        port: int = 0,
    ) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.secret = secret
        self.answer = answer
        self.on_event = on_event
        self.lock = threading.Lock()
        self.arrivals = 0
        self.connections = 0  # TCP connections accepted (a client reusing one makes one)
        self.reply = b""  # the body of every answer
        self.requests: list[tuple[dict[str, str], bytes, int]] = []  # headers, body, status
        self.seen: set[str] = set()
        self.accepted: list[dict[str, Any]] = []  # first deliveries, in order

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hooks/wxrecon"

    def start(self) -> Receiver:
        # A short poll: shutdown() waits for it (the default, 0.5 s, at every test end).
        threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self


class _Handler(BaseHTTPRequestHandler):
    server: Receiver
    protocol_version = "HTTP/1.1"  # keep-alive, as a business app's server would

    def log_message(self, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections += 1

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(min(length, MAX_BODY))
        with self.server.lock:
            self.server.arrivals += 1
            planned = self.server.answer(self.server.arrivals)
        if isinstance(planned, float):
            time.sleep(planned)
            planned = 200
        status = planned
        if status == 200 and not verified(self.server.secret, self.headers, body):
            status = 401
        if status == 200:
            event = json.loads(body)
            with self.server.lock:
                duplicate = event["event_id"] in self.server.seen
                self.server.seen.add(event["event_id"])
                if not duplicate:
                    self.server.accepted.append(event)
            if self.server.on_event is not None:
                self.server.on_event(event, duplicate)
        with self.server.lock:
            self.server.requests.append((dict(self.headers), body, status))
        self.send_response(status)
        self.send_header("Content-Length", str(len(self.server.reply)))
        self.end_headers()
        self.wfile.write(self.server.reply)


def main() -> None:
    port, secret, log_path = int(sys.argv[1]), sys.argv[2].encode(), sys.argv[3]
    fail_every = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    out = open(log_path, "a", buffering=1)  # noqa: SIM115 - one line per event, for the life

    def record(event: dict[str, Any], duplicate: bool) -> None:
        out.write(json.dumps({"event": event, "duplicate": duplicate}) + "\n")

    def answer(n: int) -> int:
        return 500 if fail_every and n % fail_every == 0 else 200

    server = Receiver(secret, answer, record, port=port)
    print(f"listening on {port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

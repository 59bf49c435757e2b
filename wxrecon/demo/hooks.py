"""The demo's own outcome receiver: a webhook endpoint on a loopback port, in the demo's
process, as an app would run one: it verifies each delivery's signature (the per-run secret),
deduplicates by event id and answers 2xx. The live view and the verdict count what arrived."""

from __future__ import annotations

import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from wxrecon.outbound.webhook import verify

MAX_BODY = 1 << 20


class Hooks(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.secret = secrets.token_urlsafe(32)  # per run; never printed
        self.lock = threading.Lock()
        self.final: dict[tuple[str, str], str] = {}  # (kind, number) -> last state told
        self.seen: set[str] = set()
        self.duplicates = 0
        self.refused = 0  # bad signature

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hooks/wxrecon"

    def start(self) -> Hooks:
        # A short poll: close() waits for it (the default, 0.5 s, at the end of every run).
        threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def close(self) -> None:
        self.shutdown()
        self.server_close()

    def counts(self) -> tuple[int, int]:
        """(distinct events received, duplicates)."""
        with self.lock:
            return len(self.seen), self.duplicates

    def told(self, kind: str, number: str) -> str | None:
        with self.lock:
            return self.final.get((kind, number))


class _Handler(BaseHTTPRequestHandler):
    server: Hooks

    def log_message(self, *args: Any) -> None:
        pass  # the live view owns the terminal

    def do_POST(self) -> None:
        length = min(int(self.headers.get("Content-Length") or 0), MAX_BODY)
        body = self.rfile.read(length)
        if not verify(self.server.secret, dict(self.headers.items()), body):
            with self.server.lock:
                self.server.refused += 1
            self.send_response(401)
        else:
            event = json.loads(body)
            with self.server.lock:
                if event.get("event_id") in self.server.seen:
                    self.server.duplicates += 1
                else:
                    self.server.seen.add(event.get("event_id"))
                    number = event.get("out_request_no") or event.get("out_bill_no")
                    if event.get("kind") and number and event.get("state"):
                        self.server.final[(event["kind"], number)] = event["state"]
            self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

"""The delivery phase's webhook receiver: ``python -m benchmarks.receiver PORT SECRET LOG``.

The checks of ``tests/webhook_receiver.py`` (the signature and its timestamp, deduplication by
event id, one JSON line per accepted event in LOG, with whether it was a duplicate) on a lean
asyncio HTTP/1.1 server (a protocol, not streams) instead of ``http.server``, whose request
parsing cost 0.27 ms of CPU per event. A business app's receiver runs on its own machines;
this one shares the benchmark's two cores, so what it spends is taken from the engine's
throughput.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import IO, Any

from wxrecon.outbound.webhook import verify

MAX_HEAD = 16 << 10
MAX_BODY = 1 << 20
ANSWERS = {200: b"OK", 400: b"Bad Request", 401: b"Unauthorized"}


class Headers(dict[str, str]):
    """By lower-case name; ``get`` takes any case (what ``verify`` needs)."""

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)


class Receiver:
    def __init__(self, secret: str, out: IO[str]) -> None:
        self.secret, self.out = secret, out
        self.seen: set[str] = set()

    def accept(self, headers: Headers, body: bytes) -> int:
        if not verify(self.secret, headers, body):
            return 401
        event = json.loads(body)
        duplicate = event["event_id"] in self.seen
        self.seen.add(event["event_id"])
        self.out.write(json.dumps({"event": event, "duplicate": duplicate}) + "\n")
        return 200


class Connection(asyncio.Protocol):
    """One kept-alive connection: requests parsed straight off the bytes received (an
    ``asyncio.Protocol``; streams cost a task switch and a buffer copy per read)."""

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEAD:
                    self.answer(400)
                return
            headers = Headers()
            for line in self.buffer[:end].decode("latin-1").split("\r\n")[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            length = headers.get("content-length", "0")
            if not length.isdigit() or int(length) > MAX_BODY:
                self.answer(400)
                return
            start, stop = end + 4, end + 4 + int(length)
            if len(self.buffer) < stop:
                return  # the rest of the body is on its way
            body, self.buffer = self.buffer[start:stop], self.buffer[stop:]
            self.answer(self.receiver.accept(headers, body))

    def answer(self, status: int) -> None:
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Length: 0\r\n\r\n" % (status, ANSWERS[status])
        )
        if status == 400:  # what no client sends: the connection goes
            self.transport.close()
            self.transport = None


async def main(port: int, secret: str, log: str) -> None:
    with open(log, "a", buffering=1) as out:  # one line per event, flushed
        receiver = Receiver(secret, out)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: Connection(receiver), "127.0.0.1", port)
        print(f"listening on {port}", flush=True)
        async with server:
            await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3]))

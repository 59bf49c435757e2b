"""Test doubles at the wire seam, for tests anywhere (the client's, the engine's, the CLI's).

:class:`ScriptedWire` plays scripted replies and failures and records what was sent. Its
failures are built with :func:`wxrecon.wechatpay.wire.failure`, the one place that decides
what a failure means (connect-level, maybe sent, garbled), so the client under test meets
exactly the values the production wire raises.

:class:`TransportWire` adapts an httpx transport (``httpx.MockTransport``) for tests written
before the scripted wire; the client builds one only when it is given ``transport=``. No
production path uses it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import httpx

from wxrecon.wechatpay.wire import Origin, Reply, ReplyHeaders, WireError, failure


@dataclass(frozen=True)
class Sent:
    """One request as it reached the wire: the signed target and body bytes, verbatim."""

    method: str
    origin: Origin
    target: str
    headers: list[tuple[bytes, bytes]]
    body: bytes

    @property
    def host(self) -> str:
        return self.origin.host

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def params(self) -> dict[str, str]:
        return dict(parse_qsl(self.target.partition("?")[2]))

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.decode().lower() == name.lower():
                return value.decode()
        return None


Step = Reply | WireError | Callable[[Sent], "Reply | WireError"]


def reply(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, ReplyHeaders.of((headers or {}).items()), body)


def json_reply(status: int, data: Any, headers: dict[str, str] | None = None) -> Reply:
    return reply(status, json.dumps(data, ensure_ascii=False).encode(), headers)


class ScriptedWire:
    """Plays ``steps`` in order, one per request; the last step repeats for ever. A step is a
    :class:`Reply`, a :class:`WireError` (from ``failure(name)``) to raise, or a function of
    the :class:`Sent` request returning either."""

    def __init__(self, *steps: Step) -> None:
        self.steps: list[Step] = list(steps)
        self.sent: list[Sent] = []
        self.closed = False

    def play(self, *steps: Step) -> None:
        self.steps = list(steps)

    @property
    def hosts(self) -> list[str]:
        return [s.host for s in self.sent]

    def send(
        self,
        method: str,
        origin: Origin,
        target: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> Reply:
        sent = Sent(method, origin, target, list(headers), body)
        self.sent.append(sent)
        step = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
        outcome = step(sent) if callable(step) else step
        if isinstance(outcome, WireError):  # a fresh copy: one value may be raised many times
            raise failure(outcome.name, status=outcome.status, headers=outcome.headers)
        return outcome

    def close(self) -> None:
        self.closed = True


class TransportWire:
    """Any httpx transport, for tests written against ``httpx.MockTransport``."""

    def __init__(self, transport: httpx.BaseTransport) -> None:
        self.transport = transport

    def send(
        self,
        method: str,
        origin: Origin,
        target: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> Reply:
        request = httpx.Request(method, origin.url + target, headers=headers, content=body or None)
        if request.url.raw_path != target.encode():  # what was signed must be what is sent
            raise ValueError("the request target would be re-encoded on the wire")
        try:
            response = self.transport.handle_request(request)
            try:
                response.read()
            finally:
                response.close()
        except httpx.HTTPError as exc:  # httpx's names are the wire's: one table decides
            raise failure(type(exc).__name__) from None
        return Reply(
            response.status_code, ReplyHeaders.of(response.headers.multi_items()), response.content
        )

    def close(self) -> None:
        self.transport.close()

"""The paths that move money, each test body run twice: on the scripted wire and on real
sockets (the production wire against a loopback server). A step is a reply, or one of the
ways a real exchange goes wrong; on the scripted wire it becomes the failure the production
wire names for it, so the two runs check that both wires lead the client to the same answer.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.fixtures_keys import BAL_ACCOUNT_NO, MCHID, KeySet, reduction_answer
from tests.integration.test_wire import _read_request, accept_until
from tests.unit.test_client import BALANCE, _request, signed_response
from wxrecon.demo.env import free_port
from wxrecon.wechatpay.client import RetryPolicy, Timeouts, WeChatPayClient
from wxrecon.wechatpay.errors import GarbledResponse, NetworkError, OutcomeUnknown
from wxrecon.wechatpay.keys import Credentials
from wxrecon.wechatpay.resources import ReductionState
from wxrecon.wechatpay.testing import ScriptedWire
from wxrecon.wechatpay.wire import Reply, WireError, failure

MiB = 1 << 20


@dataclass(frozen=True)
class Then:
    """A reply, after which the server closes the kept-alive connection (a stale idle one)."""

    reply: Reply


# A step: a Reply, a Then, or one of these failures. Each failure's scripted twin is the
# failure the production wire raises for it.
SCRIPTED = {
    "refused": failure("ConnectError"),  # nobody listens: nothing sent
    "reset": failure("ReadError"),  # the request was read, then the connection reset
    "silent": failure("ReadTimeout"),  # the request was read, no answer comes
    "dribble": failure("DeadlineExceeded"),  # an answer a byte at a time, never ending
    "huge": failure("BodyTooLarge", status=200),  # an answer that never ends
}
Step = Reply | Then | str


def _http(reply: Reply) -> bytes:
    head = f"HTTP/1.1 {reply.status} X\r\n".encode()
    for name, value in reply.headers.items():
        head += f"{name}: {value}\r\n".encode()
    return head + b"Content-Length: %d\r\n\r\n" % len(reply.body) + reply.body


class Loopback:
    """An HTTP/1.1 server on loopback playing one step per request, one connection at a
    time; it records each request's bytes and counts the body bytes it streamed."""

    def __init__(self, steps: list[Step]) -> None:
        self.steps = steps
        self.requests: list[bytes] = []
        self.connections = 0
        self.hung_up = threading.Semaphore(0)  # released as each connection is closed
        self.streamed = 0
        self._stop = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        accept_until(self.sock, self._stop, self._serve_one)

    def _serve_one(self, conn: socket.socket) -> None:
        self.connections += 1
        with conn, contextlib.suppress(OSError):  # OSError: the client hung up first
            self._converse(conn)
        self.hung_up.release()

    def _converse(self, conn: socket.socket) -> None:
        conn.settimeout(0.05)
        while not self._stop.is_set():
            raw = _read_request(conn)
            if raw == b"idle":
                continue
            if not raw:
                return
            self.requests.append(raw)
            step = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
            if isinstance(step, Reply):
                conn.sendall(_http(step))
            elif isinstance(step, Then):
                conn.sendall(_http(step.reply))
                return
            else:
                getattr(self, f"_{step}")(conn)
                return

    def _reset(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def _silent(self, conn: socket.socket) -> None:
        self._stop.wait(5)

    def _dribble(self, conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        for _ in range(200):  # 10 s at most: a client without a deadline fails, not hangs
            conn.sendall(b"a")
            if self._stop.wait(0.05):
                return

    def _huge(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")  # a body until close
        chunk = b"0" * 65536
        while self.streamed < 4096 * MiB and not self._stop.is_set():
            conn.sendall(chunk)  # raises once the client has closed the connection
            self.streamed += len(chunk)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


class Harness:
    """One wire: ``play`` scripts the provider, ``client`` builds a client on it, and
    ``received`` lists the request bodies that reached the provider."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.scripted: ScriptedWire | None = None
        self.server: Loopback | None = None
        self.refused = False

    def play(self, *steps: Step) -> None:
        self.refused = steps == ("refused",)
        if self.kind == "scripted":
            self.scripted = ScriptedWire(*(self._twin(s) for s in steps))
        elif not self.refused:
            self.server = Loopback(list(steps))

    @staticmethod
    def _twin(step: Step) -> Reply | WireError:
        if isinstance(step, Then):
            return step.reply
        return SCRIPTED[step] if isinstance(step, str) else step

    def client(self, credentials: Credentials, attempts: int = 1, **kw: Any) -> WeChatPayClient:
        kw.setdefault("timeouts", Timeouts(connect=1.0, read=0.5, total=1.5))
        if self.scripted is not None:
            base, kw["wire"] = "http://127.0.0.1:1", self.scripted
        else:
            base = f"http://127.0.0.1:{free_port()}" if self.refused else self._server.url
        retry = RetryPolicy(attempts=attempts, initial_wait=0, max_wait=0)
        return WeChatPayClient(credentials, base_url=base, backup_url=None, retry=retry, **kw)

    @property
    def _server(self) -> Loopback:
        assert self.server is not None
        return self.server

    @property
    def received(self) -> list[bytes]:
        if self.scripted is not None:
            return [] if self.refused else [s.body for s in self.scripted.sent]
        if self.server is None:
            return []
        return [raw.partition(b"\r\n\r\n")[2] for raw in self.server.requests]

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture(params=["scripted", "socket"])
def wire(request: pytest.FixtureRequest) -> Iterator[Harness]:
    harness = Harness(request.param)
    yield harness
    harness.close()


def _accepted(keys: KeySet, out_request_no: str = "M1") -> Reply:
    answer = reduction_answer(keys, out_request_no, extra={"amount": 100})
    return signed_response(keys, answer, request_id="RID-OK")


def test_an_answered_post_is_sent_once(
    wire: Harness, keys: KeySet, credentials: Credentials
) -> None:
    wire.play(_accepted(keys))
    with wire.client(credentials, attempts=3) as client:
        result = client.submit_special_reduction(_request("M1"))
    assert result.state is ReductionState.PROCESSING and result.request_id == "RID-OK"
    assert result.missing_identity() == ()
    (body,) = wire.received
    assert json.loads(body)["out_request_no"] == "M1"


def test_a_refused_post_was_not_sent(wire: Harness, credentials: Credentials) -> None:
    wire.play("refused")
    with wire.client(credentials, attempts=2) as client, pytest.raises(OutcomeUnknown) as info:
        client.submit_special_reduction(_request("M1"))
    assert info.value.maybe_sent is False and isinstance(info.value.cause, NetworkError)
    assert wire.received == []


def test_a_reset_after_the_post_was_sent_may_have_landed(
    wire: Harness, credentials: Credentials
) -> None:
    wire.play("reset")
    with wire.client(credentials, attempts=2) as client, pytest.raises(OutcomeUnknown) as info:
        client.submit_special_reduction(_request("M1"))
    assert info.value.maybe_sent is True and isinstance(info.value.cause, NetworkError)
    first, second = wire.received  # each attempt reached the provider, byte for byte alike
    assert first == second


def test_a_read_timeout_after_a_post_may_have_landed(
    wire: Harness, credentials: Credentials
) -> None:
    wire.play("silent")
    with wire.client(credentials) as client, pytest.raises(OutcomeUnknown) as info:
        client.submit_special_reduction(_request("M1"))
    assert info.value.maybe_sent is True and "ReadTimeout" in str(info.value)
    assert len(wire.received) == 1


def test_an_answer_dribbled_past_the_deadline_may_have_landed(
    wire: Harness, credentials: Credentials
) -> None:
    """A byte every 0.05 s never trips the 0.5 s read timeout; the 1.5 s deadline ends it."""
    wire.play("dribble")
    with wire.client(credentials) as client, pytest.raises(OutcomeUnknown) as info:
        client.submit_special_reduction(_request("M1"))
    assert info.value.maybe_sent is True and isinstance(info.value.cause, NetworkError)
    assert "DeadlineExceeded" in str(info.value)


def test_a_get_dribbled_past_the_deadline_is_a_network_error(
    wire: Harness, credentials: Credentials
) -> None:
    wire.play("dribble")
    with wire.client(credentials) as client, pytest.raises(NetworkError) as info:
        client.query_balance(mchid=MCHID, bal_account_no=BAL_ACCOUNT_NO)
    assert info.value.maybe_sent and "DeadlineExceeded" in str(info.value)


def test_an_endless_answer_is_garbled_and_read_only_to_the_cap(
    wire: Harness, credentials: Credentials
) -> None:
    wire.play("huge")
    with (
        wire.client(credentials, max_body=MiB) as client,
        pytest.raises(OutcomeUnknown) as info,
    ):
        client.submit_special_reduction(_request("M1"))
    assert isinstance(info.value.cause, GarbledResponse) and info.value.maybe_sent
    assert info.value.status == 200 and "larger than 1048576 bytes" in str(info.value)
    if wire.server is not None:
        wire.server.close()  # the server stops streaming once the client has hung up
        # Up to the cap, plus what the kernel's socket buffers held: nowhere near 4 GiB.
        assert wire.server.streamed < 64 * MiB


def test_a_stale_kept_alive_connection_is_replaced_before_sending(
    wire: Harness, keys: KeySet, credentials: Credentials
) -> None:
    wire.play(Then(_accepted(keys, "M1")), _accepted(keys, "M2"))
    with wire.client(credentials) as client:  # one attempt: nothing may need a retry
        assert client.submit_special_reduction(_request("M1")).out_request_no == "M1"
        if wire.server is not None:  # the server closes the idle connection
            assert wire.server.hung_up.acquire(timeout=5)
            threading.Event().wait(0.05)  # its FIN reaches our socket
        assert client.submit_special_reduction(_request("M2")).out_request_no == "M2"
    assert [json.loads(b)["out_request_no"] for b in wire.received] == ["M1", "M2"]
    if wire.server is not None:
        assert wire.server.connections == 2


def test_a_query_answer_about_another_order_is_garbled(
    wire: Harness, keys: KeySet, credentials: Credentials
) -> None:
    wire.play(_accepted(keys, "OTHER"))
    with wire.client(credentials, attempts=2) as client, pytest.raises(GarbledResponse) as info:
        client.query_special_reduction("M1", mchid=MCHID, bal_account_no=BAL_ACCOUNT_NO)
    assert "another out_request_no" in str(info.value) and info.value.request_id == "RID-OK"
    assert info.value.retryable  # by the engine, later: the order is not touched
    assert len(wire.received) == 1


def test_refused_primary_fails_over_to_the_backup_and_keeps_alive(
    keys: KeySet, credentials: Credentials
) -> None:
    backup = Loopback([signed_response(keys, BALANCE)])
    dead = f"http://127.0.0.1:{free_port()}"
    try:
        client = WeChatPayClient(
            credentials,
            base_url=dead,
            backup_url=backup.url,
            retry=RetryPolicy(attempts=2, initial_wait=0, max_wait=0),
            timeouts=Timeouts(connect=1.0, read=2.0),
        )
        with client:
            for _ in range(3):
                assert client.query_balance(mchid=MCHID, bal_account_no=BAL_ACCOUNT_NO)
            assert client.using_backup
        assert len(backup.requests) == 3
        assert backup.connections == 1  # one kept-alive connection served all three
        # The query went out percent-encoded, exactly as signed.
        assert all(b"&bal_account_no=" in r and b"%3D" in r for r in backup.requests)
    finally:
        backup.close()

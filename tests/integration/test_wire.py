"""The production wire against real sockets: what goes out byte for byte, how failures are
named, and how every answer is bounded in size and time; a proxy is a CONNECT tunnel on it."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import string
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from tests.fixtures_keys import (
    BAL_ACCOUNT_NO,
    MCHID,
    PUB_KEY_ID,
    KeySet,
    cert_pem,
    new_rsa_key,
    pkcs8_pem,
    reduction_answer,
)
from tests.unit.test_client import signed_response
from wxrecon.demo.env import free_port
from wxrecon.wechatpay import signing
from wxrecon.wechatpay.client import RetryPolicy, Timeouts, WeChatPayClient
from wxrecon.wechatpay.errors import OutcomeUnknown
from wxrecon.wechatpay.keys import Credentials
from wxrecon.wechatpay.resources import ReductionType, SpecialReductionRequest
from wxrecon.wechatpay.urls import query
from wxrecon.wechatpay.wire import (
    FAILURES,
    Origin,
    PoolWire,
    Proxy,
    Reply,
    ReplyHeaders,
    WireError,
    failure,
)

# A server's behaviour: given the raw request bytes it read, the bytes to answer (None: stay
# silent until the client gives up).
Behaviour = Callable[[bytes], bytes | None]


class RawServer:
    """One-connection-at-a-time HTTP/1.1 server on loopback that records raw requests."""

    def __init__(self, behaviour: Behaviour, tls: ssl.SSLContext | None = None) -> None:
        self.behaviour = behaviour
        self.tls = tls
        self.requests: list[bytes] = []
        self.connections = 0
        self.current: socket.socket | None = None
        self._drop = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            if self.tls is not None:
                try:
                    conn = self.tls.wrap_socket(conn, server_side=True)
                except (ssl.SSLError, OSError):  # a client that does not trust us hangs up
                    conn.close()
                    continue
            self.current = conn
            with conn:
                conn.settimeout(0.05)
                while not self._drop.is_set():
                    raw = _read_request(conn)
                    if raw == b"idle":
                        continue
                    if not raw:
                        break
                    self.requests.append(raw)
                    answer = self.behaviour(raw)
                    if answer is None:
                        self._stop.wait(3)
                        break
                    try:
                        conn.sendall(answer)
                    except OSError:  # the client gave up first
                        break
                    conn.settimeout(0.05)
                    if not answer or b"Connection: close" in answer:
                        break
            self._drop.clear()

    def drop_connections(self) -> None:
        """Close the connection being kept alive (as a server retiring it would)."""
        self._drop.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def accept_until(
    sock: socket.socket, stop: threading.Event, handle: Callable[[socket.socket], None]
) -> None:
    """Hand each connection accepted on ``sock`` (timeout set) to ``handle`` until ``stop``."""
    while not stop.is_set():
        try:
            conn, _ = sock.accept()
        except TimeoutError:
            continue
        handle(conn)


def _read_request(conn: socket.socket) -> bytes:
    """One request's bytes; b"" when the client closed; b"idle" when nothing came yet."""
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                if data:
                    raise
                return b"idle"
            if not chunk:
                return data
            data += chunk
            conn.settimeout(5)  # a request has begun: wait for the rest of it
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            body += conn.recv(65536)
    except (TimeoutError, ConnectionError):
        return data
    return head + b"\r\n\r\n" + body


def _http(response: Reply) -> bytes:
    head = f"HTTP/1.1 {response.status} OK\r\n".encode()
    for name, value in response.headers.items():
        head += f"{name}: {value}\r\n".encode()
    return head + b"Content-Length: %d\r\n\r\n" % len(response.body) + response.body


@pytest.fixture
def serve() -> Iterator[Callable[..., RawServer]]:
    servers: list[RawServer] = []

    def start(behaviour: Behaviour, tls: ssl.SSLContext | None = None) -> RawServer:
        servers.append(RawServer(behaviour, tls))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def _client(credentials: Credentials, base: str, **kw: object) -> WeChatPayClient:
    kw.setdefault("retry", RetryPolicy(attempts=1))
    kw.setdefault("timeouts", Timeouts(connect=1, read=0.5))
    return WeChatPayClient(credentials, base_url=base, backup_url=None, **kw)  # type: ignore[arg-type]


def _request() -> SpecialReductionRequest:
    return SpecialReductionRequest.create(
        mchid=MCHID,
        bal_account_no=BAL_ACCOUNT_NO,
        out_request_no="W0001",
        reduction_type=ReductionType.FINANCIAL_PENALTY,
        amount=100,
        reason="penalty",
    )


def _signed_by(
    credentials: Credentials, authorization: str, method: str, target: str, body: bytes
) -> bool:
    auth = signing.parse_authorization(authorization)
    message = signing.request_message(method, target, auth.timestamp, auth.nonce_str, body)
    return signing.verify(credentials.private_key.public_key(), message, auth.signature)


def test_pool_wire_sends_the_signed_target_and_body_verbatim(
    credentials: Credentials, keys: KeySet, serve: Callable[..., RawServer]
) -> None:
    answer = reduction_answer(keys, "W0001")
    server = serve(lambda raw: _http(signed_response(keys, answer)))
    with _client(credentials, server.url) as client:
        assert isinstance(client._current_wire(), PoolWire)
        client.submit_special_reduction(_request())
        client.query_special_reduction("W0001", mchid=MCHID, bal_account_no=BAL_ACCOUNT_NO)
    post, get = server.requests
    head, _, body = post.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v3/aggracct-bc/wb-channel/special-reduction HTTP/1.1"
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
    assert headers["host"] == f"127.0.0.1:{server.port}"
    assert headers["content-length"] == str(len(body))
    assert headers["content-type"] == "application/json"
    assert headers["wechatpay-serial"] == PUB_KEY_ID
    assert headers["user-agent"].startswith("wxrecon/") and headers["accept"] == "application/json"
    # The signature covers exactly the request line's target and the body bytes sent.
    signed_target = lines[0].split(" ")[1]
    assert _signed_by(credentials, headers["authorization"], "POST", signed_target, body)
    get_line = get.split(b"\r\n", 1)[0].decode()
    target = get_line.split(" ")[1]
    assert target.startswith("/v3/aggracct-bc/wb-channel/special-reduction/W0001?mchid=" + MCHID)
    ciphertext = target.split("&bal_account_no=", 1)[1]
    assert ciphertext.endswith("%3D") and not any(c in ciphertext for c in "+/=")
    get_headers = dict(
        line.split(": ", 1) for line in get.partition(b"\r\n\r\n")[0].decode().split("\r\n")[1:]
    )
    assert "Content-Length" not in get_headers and "Content-Type" not in get_headers
    assert _signed_by(credentials, get_headers["Authorization"], "GET", target, b"")


def test_refused_connection_is_connect_level_and_not_sent(credentials: Credentials) -> None:
    port = free_port()  # nobody listens there
    wire = PoolWire(connect=1, read=1, max_connections=2, keepalive_expiry=5)
    with pytest.raises(WireError) as caught:
        wire.send("GET", Origin.parse(f"http://127.0.0.1:{port}"), "/x", [], b"")
    assert caught.value.name == "ConnectError"
    assert caught.value.connect_level and not caught.value.sent
    with _client(credentials, f"http://127.0.0.1:{port}") as client, pytest.raises(OutcomeUnknown):
        client.submit_special_reduction(_request())  # a POST's failure is always reported so
    wire.close()


def test_a_connection_closed_without_an_answer_may_have_landed(
    serve: Callable[..., RawServer],
) -> None:
    server = serve(lambda raw: b"")
    wire = PoolWire(connect=1, read=1, max_connections=2, keepalive_expiry=5)
    with pytest.raises(WireError) as caught:
        wire.send("POST", Origin.parse(server.url), "/x", [], b"{}")
    assert caught.value.name == "RemoteProtocolError"
    assert caught.value.sent and not caught.value.connect_level
    wire.close()


def test_reply_headers_are_case_insensitive_and_join_repeats() -> None:
    h = ReplyHeaders.of([("Request-ID", "abc"), ("X-A", "1"), ("x-a", "2")])
    assert h.get("request-id") == h["REQUEST-ID"] == "abc"
    assert h.get("X-A") == "1, 2" and h.get("missing") is None


def test_origin_keeps_a_base_path_and_port() -> None:
    o = Origin.parse("https://api.example.test:8443/prefix/")
    assert (o.scheme, o.host, o.port, o.prefix) == ("https", "api.example.test", 8443, "/prefix")
    assert o.host_header == b"api.example.test:8443"
    assert Origin.parse("https://api.example.test").port is None


@given(st.text(max_size=60) | st.text(alphabet=string.ascii_letters + string.digits + "+/="))
def test_query_encoding_equals_quote(value: str) -> None:
    assert query({"k": value, "mchid": "1900"}) == f"?k={quote(value, safe='')}&mchid=1900"


def _ok(raw: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def _get(wire: PoolWire, server: RawServer) -> int:
    return wire.send("GET", Origin.parse(server.url), "/x", [], b"").status


def test_pool_wire_keeps_connections_alive_and_retires_them(
    serve: Callable[..., RawServer],
) -> None:
    server = serve(_ok)
    wire = PoolWire(connect=1, read=1, max_connections=2, keepalive_expiry=0.3)
    assert [_get(wire, server) for _ in range(3)] == [200, 200, 200]
    assert server.connections == 1  # one TCP connection carried all three
    time.sleep(0.4)  # idle past keepalive_expiry: retired, a new one is opened
    assert _get(wire, server) == 200 and server.connections == 2
    wire.close()


def test_an_answer_off_the_common_shape_is_read_by_http_client_on_the_same_connection(
    serve: Callable[..., RawServer],
) -> None:
    """Chunked, HTTP/1.0, a HEAD's length without a body: read right (through http.client,
    with what the common path had read), and a kept-alive connection stays usable."""
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    answers = iter([chunked, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", _ok(b"")])
    server = serve(lambda raw: next(answers))
    wire = PoolWire(connect=1, read=1, max_connections=1, keepalive_expiry=5)
    origin = Origin.parse(server.url)
    assert wire.send("GET", origin, "/x", [], b"").body == b"ok"
    head = wire.send("HEAD", origin, "/x", [], b"")
    assert (head.status, head.body, head.headers["content-length"]) == (200, b"", "5")
    assert wire.send("GET", origin, "/x", [], b"").body == b"ok"
    assert server.connections == 1
    wire.close()


def test_pool_wire_replaces_an_idle_connection_the_server_closed(
    serve: Callable[..., RawServer],
) -> None:
    closing = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    server = serve(lambda raw: closing if len(server.requests) == 1 else _ok(raw))
    wire = PoolWire(connect=1, read=1, max_connections=2, keepalive_expiry=5)
    assert _get(wire, server) == 200  # "Connection: close": not put back in the pool
    assert _get(wire, server) == 200 and server.connections == 2
    time.sleep(0.1)
    server.drop_connections()  # the server closes the idle keep-alive connection
    time.sleep(0.1)
    assert _get(wire, server) == 200  # noticed before sending: no error, a fresh connection
    assert server.connections == 3
    wire.close()


def test_pool_wire_waits_for_a_free_slot_then_times_out() -> None:
    wire = PoolWire(connect=1, read=0.2, max_connections=1, keepalive_expiry=5)
    assert wire._slots.acquire(timeout=0)  # the only slot is busy
    with pytest.raises(WireError) as caught:
        wire.send("GET", Origin.parse("http://127.0.0.1:9"), "/x", [], b"")
    assert caught.value.name == "PoolTimeout" and not caught.value.sent


@pytest.fixture
def localhost_cert(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost (its own CA) and its key, as PEM files."""
    key = new_rsa_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(cert_pem(cert))
    (tmp_path / "key.pem").write_bytes(pkcs8_pem(key))
    return tmp_path / "cert.pem", tmp_path / "key.pem"


def test_pool_wire_speaks_tls(
    localhost_cert: tuple[Path, Path], serve: Callable[..., RawServer]
) -> None:
    cert, key = localhost_cert
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(cert, key)
    server = serve(_ok, server_side)
    context = ssl.create_default_context(cafile=str(cert))
    wire = PoolWire(connect=1, read=1, max_connections=2, keepalive_expiry=5, ssl_context=context)
    https = Origin.parse(server.url.replace("http://127.0.0.1", "https://localhost"))
    assert wire.send("GET", https, "/x", [], b"").status == 200
    wire.close()  # the server serves one connection at a time
    untrusted = PoolWire(connect=1, read=1, max_connections=2, keepalive_expiry=5)
    with pytest.raises(WireError) as caught:  # certifi's roots do not know our test CA
        untrusted.send("GET", https, "/x", [], b"")
    assert caught.value.name == "ConnectError" and caught.value.connect_level


# -- bounded answers ------------------------------------------------------------------------

MiB = 1 << 20


def _wire(**kw: object) -> PoolWire:
    options: dict[str, object] = {
        "connect": 1,
        "read": 1,
        "max_connections": 2,
        "keepalive_expiry": 5,
    }
    options.update(kw)
    return PoolWire(**options)  # type: ignore[arg-type]


def _failure_of(wire: PoolWire, server: RawServer) -> WireError:
    with pytest.raises(WireError) as caught:
        wire.send("GET", Origin.parse(server.url), "/x", [], b"")
    return caught.value


def test_a_declared_length_over_the_cap_is_refused_unread(
    serve: Callable[..., RawServer],
) -> None:
    head = b"HTTP/1.1 200 OK\r\nRequest-ID: R-BIG\r\nContent-Length: 419430400\r\n\r\n"
    server = serve(lambda raw: head + b"x" * 1024)  # it claims 400 MB and sends 1 kB
    wire = _wire(max_body=MiB)
    error = _failure_of(wire, server)
    assert error.name == "BodyTooLarge" and error.garbled and error.sent
    assert error.status == 200 and error.headers is not None
    assert error.headers["Request-ID"] == "R-BIG"
    assert wire._idle == {}  # the connection is dropped, not pooled with a body unread
    wire.close()


@pytest.mark.parametrize("size", [MiB, MiB + 1])
@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
def test_the_cap_is_exact_whatever_the_framing(
    serve: Callable[..., RawServer], size: int, framing: str
) -> None:
    body = b"7" * size
    if framing == "length":
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (size, body)
    elif framing == "chunked":
        half = size // 2
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (body[:half], body[half:]))
        answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
    else:
        answer = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body
    server = serve(lambda raw: answer)
    wire = _wire(max_body=MiB)
    if size <= MiB:
        assert wire.send("GET", Origin.parse(server.url), "/x", [], b"").body == body
    else:
        assert _failure_of(wire, server).name == "BodyTooLarge"
    wire.close()


def test_a_short_body_is_a_protocol_error_not_an_answer(
    serve: Callable[..., RawServer],
) -> None:
    server = serve(
        lambda raw: b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\n12345"
    )
    error = _failure_of(_wire(), server)
    assert error.name == "RemoteProtocolError" and error.sent and not error.garbled


def test_the_deadline_bounds_a_slow_answer_whose_every_read_is_quick(
    serve: Callable[..., RawServer],
) -> None:
    """Headers a byte every 0.05 s for up to 10 s: the 0.5 s read timeout never trips."""

    def dribble(raw: bytes) -> bytes | None:
        conn = server.current
        assert conn is not None
        for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 200:
            try:
                conn.sendall(bytes([byte]))
            except OSError:
                return b""
            time.sleep(0.05)
        return b""

    server = serve(dribble)
    error = _failure_of(_wire(read=0.5, deadline=1.0), server)
    assert error.name == "DeadlineExceeded" and error.sent and not error.connect_level


def test_every_failure_is_named_in_one_table() -> None:
    assert set(FAILURES) >= {"ConnectError", "ReadTimeout", "DeadlineExceeded", "BodyTooLarge"}
    for name, (connect_level, sent, garbled) in FAILURES.items():
        error = failure(name)
        assert (error.name, error.connect_level, error.sent, error.garbled) == (
            name,
            connect_level,
            sent,
            garbled,
        )
        assert not (connect_level and sent)  # a host we never reached got nothing
    unknown = failure("SomethingNew")
    assert unknown.sent and not unknown.connect_level  # never guess that nothing went out


# -- a proxy is an HTTP CONNECT tunnel on the same wire --------------------------------------


class TunnelProxy:
    """A CONNECT proxy on loopback that records each CONNECT head and pipes the bytes."""

    def __init__(self, refuse: bytes | None = None) -> None:
        self.refuse = refuse
        self.heads: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        accept_until(self.sock, self._stop, self._start_tunnel)
        self.sock.close()

    def _start_tunnel(self, conn: socket.socket) -> None:
        threading.Thread(target=self._tunnel, args=(conn,), daemon=True).start()

    def _tunnel(self, conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            self.heads.append(head)
            if self.refuse is not None:
                conn.sendall(self.refuse)
                return
            host, _, port = head.split(b" ")[1].decode().rpartition(":")
            with socket.create_connection((host, int(port))) as upstream:
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                relay = threading.Thread(target=_pipe, args=(upstream, conn), daemon=True)
                relay.start()
                _pipe(conn, upstream)
                relay.join(2)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while chunk := src.recv(65536):
            dst.sendall(chunk)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


@pytest.fixture
def proxy() -> Iterator[Callable[..., TunnelProxy]]:
    proxies: list[TunnelProxy] = []

    def start(refuse: bytes | None = None) -> TunnelProxy:
        proxies.append(TunnelProxy(refuse))
        return proxies[-1]

    yield start
    for p in proxies:
        p.close()


def test_a_proxy_tunnels_the_signed_request_verbatim(
    credentials: Credentials,
    keys: KeySet,
    serve: Callable[..., RawServer],
    proxy: Callable[..., TunnelProxy],
) -> None:
    answer = reduction_answer(keys, "W0001")
    server = serve(lambda raw: _http(signed_response(keys, answer)))
    tunnel = proxy()
    url = tunnel.url.replace("http://", "http://agent:s%40cret@")
    with _client(credentials, server.url, proxy=url) as client:
        client.submit_special_reduction(_request())
        client.query_special_reduction("W0001", mchid=MCHID, bal_account_no=BAL_ACCOUNT_NO)
    (head,) = tunnel.heads  # one tunnel, kept alive for both requests
    assert head.startswith(b"CONNECT 127.0.0.1:%d HTTP/1." % server.port)
    assert b"Proxy-Authorization: Basic YWdlbnQ6c0BjcmV0" in head  # agent:s@cret
    post, get = server.requests
    assert post.startswith(b"POST /v3/aggracct-bc/wb-channel/special-reduction HTTP/1.1")
    assert b"Host: 127.0.0.1:%d" % server.port in post
    assert get.startswith(b"GET /v3/aggracct-bc/wb-channel/special-reduction/W0001?mchid=")


def test_a_proxy_that_refuses_the_tunnel_is_connect_level(
    proxy: Callable[..., TunnelProxy],
) -> None:
    tunnel = proxy(refuse=b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
    wire = _wire(proxy=Proxy.parse(tunnel.url))
    with pytest.raises(WireError) as caught:
        wire.send("POST", Origin.parse("https://api.example.test"), "/x", [], b"{}")
    assert caught.value.name == "ConnectError"
    assert caught.value.connect_level and not caught.value.sent
    assert tunnel.heads[0].startswith(b"CONNECT api.example.test:443 HTTP/1.")


def test_tls_goes_end_to_end_through_the_tunnel(
    localhost_cert: tuple[Path, Path],
    serve: Callable[..., RawServer],
    proxy: Callable[..., TunnelProxy],
) -> None:
    cert, key = localhost_cert
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(cert, key)
    server = serve(_ok, server_side)
    tunnel = proxy()
    context = ssl.create_default_context(cafile=str(cert))
    wire = _wire(proxy=Proxy.parse(tunnel.url), ssl_context=context)
    https = Origin.parse(f"https://localhost:{server.port}")
    assert wire.send("GET", https, "/x", [], b"").status == 200
    assert tunnel.heads[0].startswith(b"CONNECT localhost:%d" % server.port)
    wire.close()

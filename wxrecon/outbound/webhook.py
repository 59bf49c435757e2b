"""The webhook target: ``POST`` of the event's JSON, signed like Stripe's and hyperswitch's
(an HMAC-SHA256 over ``"<timestamp>.<raw body>"``), over verified HTTPS.

Headers: ``Wxrecon-Event-Id``, ``Wxrecon-Timestamp`` (unix seconds) and
``Wxrecon-Signature: v1=<hex>``. Any 2xx answer is delivered; anything else, or no answer
within the timeout, is a failure the relay retries. The answer's body is never looked at:
up to ``KEEP_BODY`` bytes of it are read and dropped, so the connection is reused; a longer
one is dropped with its connection.

It goes out on the provider client's wire (``wechatpay.wire.PoolWire``: kept-alive
``http.client`` connections, verified TLS, one deadline over the whole attempt), not httpx:
httpx's request path was half of the relay's CPU per event (docs/benchmarks.md). Like
provider calls, it reads no proxy from the environment.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from wxrecon.outbound import DeliveryFailed
from wxrecon.wechatpay.wire import Origin, PoolWire, WireError

SCHEME = "v1"
EVENT_ID_HEADER = "Wxrecon-Event-Id"
TIMESTAMP_HEADER = "Wxrecon-Timestamp"
SIGNATURE_HEADER = "Wxrecon-Signature"
DEFAULT_TOLERANCE = 300  # seconds a receiver accepts a timestamp away from its clock
KEEP_BODY = 4096  # bytes of an answer read so its connection is reused; more: it is closed
KEEPALIVE = 4.0  # seconds an idle connection is kept: under the 5 s many servers close at
_HEADERS = [(b"Content-Type", b"application/json"), (b"User-Agent", b"wxrecon-webhook/1")]


def sign(secret: str | bytes, timestamp: int, body: bytes) -> str:
    """The ``Wxrecon-Signature`` header value of ``body`` sent at ``timestamp``."""
    key = secret.encode() if isinstance(secret, str) else secret
    message = str(int(timestamp)).encode() + b"." + body
    return f"{SCHEME}=" + hmac.new(key, message, hashlib.sha256).hexdigest()


def verify(
    secret: str | bytes,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float | None = None,
    tolerance: int = DEFAULT_TOLERANCE,
) -> bool:
    """A receiver's check: the signature matches and the timestamp is recent (a replay of
    an old delivery is refused). ``headers`` must look names up case-insensitively."""
    stamp = headers.get(TIMESTAMP_HEADER, "")
    given = headers.get(SIGNATURE_HEADER, "")
    if not stamp.isdigit() or len(stamp) > 12:
        return False
    if abs((time.time() if now is None else now) - int(stamp)) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, int(stamp), body), given)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_url(url: str, *, allow_http: bool = False) -> str:
    """The webhook URL if it is usable: ``https://``, or ``http://`` to a loopback address
    (or anywhere with ``allow_http``); ValueError (one line, no query string) otherwise."""
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError("must be an http(s):// URL with a host")
    if parts.username or parts.password:
        raise ValueError("must not carry credentials (sign with WXRECON_WEBHOOK_SECRET)")
    if not url.isascii() or not url.isprintable() or " " in url:
        raise ValueError("must be ASCII with no spaces or control characters (percent-encode)")
    if parts.scheme == "http" and not (allow_http or _loopback(parts.hostname)):
        raise ValueError(
            "must be https:// (http:// only to a loopback address, "
            "or with WXRECON_WEBHOOK_ALLOW_HTTP=1)"
        )
    return url


# What a failure of the wire is worth telling the relay (it is the event's last_error).
_NO_ANSWER = frozenset(
    {"ConnectTimeout", "PoolTimeout", "WriteTimeout", "ReadTimeout", "DeadlineExceeded"}
)


class WebhookTarget:
    """Sends events to one URL on a small pool of kept-alive connections."""

    name = "webhook"

    def __init__(
        self,
        url: str,
        secret: str,
        *,
        timeout: float,
        allow_http: bool = False,
        clock: Callable[[], float] = time.time,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.url = check_url(url, allow_http=allow_http)
        self._secret = secret
        self._clock = clock
        self._origin = Origin.parse(self.url)
        parts = urlsplit(self.url)
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._wire = PoolWire(
            connect=timeout,
            read=timeout,
            deadline=timeout,  # no answer within it, however the time went: a failure
            max_connections=2,
            keepalive_expiry=KEEPALIVE,
            max_body=KEEP_BODY,
            ssl_context=ssl_context,
        )

    def send(self, event: Mapping[str, Any], body: bytes) -> None:
        stamp = int(self._clock())
        headers = [
            *_HEADERS,
            (EVENT_ID_HEADER.encode(), str(event["event_id"]).encode()),
            (TIMESTAMP_HEADER.encode(), str(stamp).encode()),
            (SIGNATURE_HEADER.encode(), sign(self._secret, stamp, body).encode()),
        ]
        try:
            status = self._wire.send("POST", self._origin, self._target, headers, body).status
        except WireError as exc:
            if exc.name == "BodyTooLarge" and exc.status is not None:
                status = exc.status  # it answered; the long body went with its connection
            elif exc.name in _NO_ANSWER:
                raise DeliveryFailed("webhook: no answer within the timeout") from None
            else:
                raise DeliveryFailed(f"webhook: {exc.name}") from None
        if not 200 <= status < 300:
            raise DeliveryFailed(f"webhook: HTTP {status}")

    def close(self) -> None:
        self._wire.close()

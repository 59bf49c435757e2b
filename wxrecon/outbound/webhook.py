"""The webhook target: ``POST`` of the event's JSON, signed like Stripe's and hyperswitch's
(an HMAC-SHA256 over ``"<timestamp>.<raw body>"``), over verified HTTPS.

Headers: ``Wxrecon-Event-Id``, ``Wxrecon-Timestamp`` (unix seconds) and
``Wxrecon-Signature: v1=<hex>``. Any 2xx answer is delivered; anything else, or no answer
within the timeout, is a failure the relay retries. The answer's body is never looked at:
up to ``KEEP_BODY`` bytes of it are read and dropped, so the connection is reused.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from wxrecon.outbound import DeliveryFailed

SCHEME = "v1"
EVENT_ID_HEADER = "Wxrecon-Event-Id"
TIMESTAMP_HEADER = "Wxrecon-Timestamp"
SIGNATURE_HEADER = "Wxrecon-Signature"
DEFAULT_TOLERANCE = 300  # seconds a receiver accepts a timestamp away from its clock
KEEP_BODY = 4096  # bytes of an answer read so its connection is reused; more: it is closed


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
    parts = urlsplit(url.strip())
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError("must be an http(s):// URL with a host")
    if parts.username or parts.password:
        raise ValueError("must not carry credentials (sign with WXRECON_WEBHOOK_SECRET)")
    if parts.scheme == "http" and not (allow_http or _loopback(parts.hostname)):
        raise ValueError(
            "must be https:// (http:// only to a loopback address, "
            "or with WXRECON_WEBHOOK_ALLOW_HTTP=1)"
        )
    return url.strip()


class WebhookTarget:
    """Sends events to one URL with one HTTP client (a verified TLS context, pooled)."""

    name = "webhook"

    def __init__(
        self,
        url: str,
        secret: str,
        *,
        timeout: float,
        allow_http: bool = False,
        clock: Callable[[], float] = time.time,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = check_url(url, allow_http=allow_http)
        self._secret = secret
        self._timeout = timeout
        self._clock = clock
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout),
            verify=True,
            follow_redirects=False,  # a redirect is not a delivery
            transport=transport,
            headers={"User-Agent": "wxrecon-webhook/1"},
        )

    def send(self, event: Mapping[str, Any], body: bytes) -> None:
        stamp = int(self._clock())
        headers = {
            "Content-Type": "application/json",
            EVENT_ID_HEADER: str(event["event_id"]),
            TIMESTAMP_HEADER: str(stamp),
            SIGNATURE_HEADER: sign(self._secret, stamp, body),
        }
        try:
            with self._client.stream("POST", self.url, content=body, headers=headers) as answer:
                status = answer.status_code
                # A short body is read to its end so the connection is kept for the next
                # event (one left unread is closed); a longer one is dropped with it.
                read, until = 0, time.monotonic() + self._timeout
                for part in answer.iter_raw():
                    read += len(part)
                    if read > KEEP_BODY or time.monotonic() > until:
                        break
        except httpx.TimeoutException:
            raise DeliveryFailed("webhook: no answer within the timeout") from None
        except httpx.HTTPError as exc:
            raise DeliveryFailed(f"webhook: {type(exc).__name__}") from None
        if not 200 <= status < 300:
            raise DeliveryFailed(f"webhook: HTTP {status}")

    def close(self) -> None:
        self._client.close()

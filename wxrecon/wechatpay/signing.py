"""APIv3 request signing and response verification, as pure functions.

The signed message is always lines joined and terminated by ``\\n``. Requests sign
``METHOD, PATH_AND_QUERY, TIMESTAMP, NONCE, BODY``; responses sign
``TIMESTAMP, NONCE, BODY``. PATH_AND_QUERY and BODY must be the exact bytes on the wire,
so callers pass what the HTTP library will send (or received), never a re-serialisation.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

AUTH_SCHEMA = "WECHATPAY2-SHA256-RSA2048"
SIGNTEST_PREFIX = "WECHATPAY/SIGNTEST/"
MAX_CLOCK_SKEW = 300  # seconds, the provider's own limit for both directions

_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_AUTH_PARAM = re.compile(r'\s*([a-z_]+)="([^"]*)"\s*(?:,|$)')
AUTH_FIELDS = ("mchid", "nonce_str", "signature", "timestamp", "serial_no")


class _Random:
    """The operating system's random bytes, 4 KiB per system call instead of 16 bytes (a
    call releases the interpreter lock, a switch between a worker's threads); a forked
    child drops what its parent read, so two processes never share a nonce."""

    SIZE = 4096

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._forget()
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._bytes, self._at = b"", 0

    def take(self, n: int) -> bytes:
        with self._lock:
            if self._at + n > len(self._bytes):
                self._bytes, self._at = secrets.token_bytes(max(self.SIZE, n)), 0
            self._at += n
            return self._bytes[self._at - n : self._at]


_RANDOM = _Random()


def new_nonce(length: int = 32) -> str:
    """Random upper-case hex (``length`` characters; 32 gives 128 bits)."""
    return _RANDOM.take((length + 1) // 2).hex()[:length].upper()


def request_message(
    method: str, path_and_query: str, timestamp: str | int, nonce: str, body: bytes | str
) -> bytes:
    if isinstance(body, str):
        body = body.encode()
    head = f"{method.upper()}\n{path_and_query}\n{timestamp}\n{nonce}\n".encode()
    return head + body + b"\n"


def response_message(timestamp: str | int, nonce: str, body: bytes | str) -> bytes:
    if isinstance(body, str):
        body = body.encode()
    return f"{timestamp}\n{nonce}\n".encode() + body + b"\n"


# SHA256withRSA's parameters, made once (both are stateless).
_PKCS1, _SHA256 = padding.PKCS1v15(), hashes.SHA256()


def sign(private_key: rsa.RSAPrivateKey, message: bytes) -> str:
    """SHA256withRSA (PKCS#1 v1.5), base64."""
    raw = private_key.sign(message, _PKCS1, _SHA256)
    return base64.b64encode(raw).decode("ascii")


def verify(public_key: rsa.RSAPublicKey, message: bytes, signature: str) -> bool:
    if signature.startswith(SIGNTEST_PREFIX):
        return False  # the provider's deliberate probe: never a valid signature
    try:
        raw = base64.b64decode(signature, validate=True)
    except ValueError:
        return False
    try:
        public_key.verify(raw, message, _PKCS1, _SHA256)
    except InvalidSignature:
        return False
    return True


@dataclass(frozen=True, slots=True)
class Authorization:
    mchid: str
    nonce_str: str
    signature: str
    timestamp: str
    serial_no: str

    def header(self) -> str:
        return (
            f'{AUTH_SCHEMA} mchid="{self.mchid}",nonce_str="{self.nonce_str}",'
            f'signature="{self.signature}",timestamp="{self.timestamp}",'
            f'serial_no="{self.serial_no}"'
        )


def build_authorization(
    *,
    mchid: str,
    serial_no: str,
    private_key: rsa.RSAPrivateKey,
    method: str,
    path_and_query: str,
    body: bytes | str,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> Authorization:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    nonce = nonce or new_nonce()
    signature = sign(private_key, request_message(method, path_and_query, ts, nonce, body))
    return Authorization(mchid, nonce, signature, ts, serial_no)


class AuthorizationParseError(ValueError):
    pass


def parse_authorization(header: str) -> Authorization:
    """Parse an ``Authorization`` header; raises AuthorizationParseError saying what is wrong."""
    schema, _, params = header.strip().partition(" ")
    if schema != AUTH_SCHEMA:
        raise AuthorizationParseError(f"unsupported authorization schema {schema[:40]!r}")
    found: dict[str, str] = {}
    pos = 0
    while pos < len(params):
        m = _AUTH_PARAM.match(params, pos)
        if not m:
            raise AuthorizationParseError("malformed authorization parameters")
        if m.group(1) in found:
            raise AuthorizationParseError(f"duplicate authorization parameter {m.group(1)}")
        found[m.group(1)] = m.group(2)
        pos = m.end()
    missing = [f for f in AUTH_FIELDS if not found.get(f)]
    if missing:
        raise AuthorizationParseError(f"authorization lacks {', '.join(missing)}")
    return Authorization(**{f: found[f] for f in AUTH_FIELDS})


RESPONSE_HEADERS = (
    "Wechatpay-Timestamp",
    "Wechatpay-Nonce",
    "Wechatpay-Signature",
    "Wechatpay-Serial",
)


def normalise_serial(serial: str) -> str:
    """A certificate serial as :func:`keys.certificate_serial` writes it (upper-case hex, no
    leading zeros); anything that is not hex (a ``PUB_KEY_ID_…``) is returned unchanged."""
    if len(serial) > 64:
        return serial
    try:
        return format(int(serial, 16), "X")
    except ValueError:
        return serial


class VerificationError(ValueError):
    """Why a response could not be verified: it is then no result at all."""


def check_response_signature(
    headers: Mapping[str, str],
    body: bytes,
    keys: Mapping[str, rsa.RSAPublicKey],
    *,
    now: float | None = None,
    max_skew: int = MAX_CLOCK_SKEW,
) -> str:
    """Verify a 2xx response; returns the serial that verified it or raises VerificationError.

    ``headers`` must be case-insensitive (httpx.Headers is). ``keys`` maps a public-key id or a
    platform certificate serial to its public key; both kinds may be present at once.
    """
    values = {}
    for name in RESPONSE_HEADERS:
        value = headers.get(name)
        if not value:
            raise VerificationError(f"response lacks the {name} header")
        values[name] = value
    serial = values["Wechatpay-Serial"]
    key = keys.get(serial)
    if key is None:
        key = keys.get(normalise_serial(serial))
    if key is None:
        raise VerificationError(f"response signed with unknown serial {serial[:64]!r}")
    ts = values["Wechatpay-Timestamp"]
    if not _TIMESTAMP.fullmatch(ts):
        raise VerificationError("response timestamp is not a number of seconds")
    ts_int = int(ts)
    now = time.time() if now is None else now
    if abs(now - ts_int) > max_skew:
        raise VerificationError(f"response timestamp {ts_int} is more than {max_skew}s from now")
    signature = values["Wechatpay-Signature"]
    if signature.startswith(SIGNTEST_PREFIX):
        raise VerificationError("response carries a WECHATPAY/SIGNTEST probe signature")
    if not verify(key, response_message(ts, values["Wechatpay-Nonce"], body), signature):
        raise VerificationError("response signature does not verify")
    return serial

"""``bal_account_no`` sealed at rest: AES-256-GCM under a named data key, bound to its row.

A sealed value is ``v1:<key id>:<base64url(nonce ‖ ciphertext ‖ tag)>``. The associated data
is the row's ``(mchid, out_request_no)``, so a ciphertext copied onto another row does not
open. The key id travels with the value, so several keys can be live during a rotation
(``WXRECON_DATA_KEYS="new:…,old:…"``: the first seals, every one opens) and ``wxrecon db
rotate-key`` re-seals what an older key sealed.

Look-ups and uniqueness use an HMAC-SHA256 of the plaintext under a separate lookup key
(``WXRECON_LOOKUP_KEY``), which is not rotated with the data keys: a hash derived from the
current data key would change with every rotation and break the unique index mid-way.

AES-GCM is cryptography's ``AESGCM`` (a well-kept, audited implementation), never hand-rolled.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from wxrecon.domain.errors import WxreconError

if TYPE_CHECKING:
    from wxrecon.config import Settings

VERSION = "v1"
NONCE_BYTES = 12
KEY_BYTES = 32
MAX_PLAINTEXT = 128  # the column's plaintext bound (an account number is far shorter)
_KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")
_AAD_PREFIX = b"wxrecon/bal_account_no/v1\0"


class SealError(WxreconError):
    """A sealed value that does not open, or a bad key setting (one line, no secret in it)."""


class UnknownKey(SealError):
    """Sealed under a key id this process does not hold (a configuration matter, not the
    row's fault: the engine leaves such an order alone rather than sending it to review)."""


def generate_key() -> str:
    """A new random 256-bit key, base64 (for ``WXRECON_DATA_KEYS`` or ``WXRECON_LOOKUP_KEY``)."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()


def _decode_key(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SealError(f"{what} is not base64") from None
    if len(raw) != KEY_BYTES:
        raise SealError(f"{what} must be {KEY_BYTES} bytes (256 bits), not {len(raw)}")
    return raw


def parse_data_keys(setting: str) -> list[tuple[str, bytes]]:
    """``id1:base64,id2:base64`` -> [(id, key)], the first being current."""
    keys: list[tuple[str, bytes]] = []
    for n, item in enumerate((i for i in setting.split(",") if i.strip()), start=1):
        key_id, sep, encoded = item.strip().partition(":")
        if not sep or not _KEY_ID.fullmatch(key_id):
            raise SealError(
                f"WXRECON_DATA_KEYS entry {n} must be <id>:<base64 key> with an id of 1-32 "
                "letters, digits, '_' or '-'"
            )
        if any(key_id == k for k, _ in keys):
            raise SealError(f"WXRECON_DATA_KEYS names key {key_id!r} twice")
        keys.append((key_id, _decode_key(encoded, f"WXRECON_DATA_KEYS key {key_id!r}")))
    if not keys:
        raise SealError("WXRECON_DATA_KEYS is empty")
    return keys


@functools.lru_cache(maxsize=16)
def _aead(key: bytes) -> AESGCM:
    """One cipher object a key (building it costs more than sealing a ledger number)."""
    return AESGCM(key)


def _aad(mchid: str, out_request_no: str) -> bytes:
    return _AAD_PREFIX + mchid.encode() + b"\0" + out_request_no.encode()


@dataclass(frozen=True)
class Keyring:
    """The data keys (first = current) and the lookup key."""

    keys: tuple[tuple[str, bytes], ...]
    lookup_key: bytes

    @classmethod
    def from_settings(cls, data_keys: str, lookup_key: str) -> Keyring:
        return cls(tuple(parse_data_keys(data_keys)), _decode_key(lookup_key, "WXRECON_LOOKUP_KEY"))

    @property
    def current(self) -> str:
        return self.keys[0][0]

    def _key(self, key_id: str) -> bytes:
        for kid, key in self.keys:
            if kid == key_id:
                return key
        raise UnknownKey(f"sealed under key {key_id!r}, which WXRECON_DATA_KEYS does not hold")

    def seal(self, plaintext: str, mchid: str, out_request_no: str) -> str:
        if not plaintext or len(plaintext) > MAX_PLAINTEXT:
            raise SealError(f"a ledger number must be 1-{MAX_PLAINTEXT} characters")
        nonce = os.urandom(NONCE_BYTES)  # random 96-bit nonces: safe far beyond 2^32 seals
        key_id, key = self.keys[0]
        sealed = _aead(key).encrypt(nonce, plaintext.encode(), _aad(mchid, out_request_no))
        body = base64.urlsafe_b64encode(nonce + sealed).decode()
        return f"{VERSION}:{key_id}:{body}"

    def open(self, sealed: str, mchid: str, out_request_no: str) -> str:
        """The plaintext; SealError when the value is not sealed, was sealed for another
        row, was altered, or names a key not configured."""
        key_id, blob = _split(sealed)
        try:
            plain = _aead(self._key(key_id)).decrypt(
                blob[:NONCE_BYTES], blob[NONCE_BYTES:], _aad(mchid, out_request_no)
            )
        except InvalidTag:
            raise SealError(
                f"the ledger number of {mchid}/{out_request_no} does not open: altered, or "
                "sealed for another row"
            ) from None
        return plain.decode()

    def needs_reseal(self, sealed: str) -> bool:
        """Not (validly framed and) under the current key: what rotate-key re-seals."""
        try:
            return _split(sealed)[0] != self.current
        except SealError:
            return True

    def lookup_hash(self, plaintext: str) -> str:
        """HMAC-SHA256 of the plaintext, hex (64 characters): equal plaintexts, equal hashes."""
        return hmac.new(self.lookup_key, plaintext.encode(), hashlib.sha256).hexdigest()


def open_rows(keys: Keyring, rows: Iterable[Any]) -> None:
    """Open each reduction row's ledger number in place; one that does not open keeps an
    empty number and the reason in ``unopened`` (the engine decides what follows)."""
    for row in rows:
        try:
            row.bal_account_no = keys.open(row.bal_account_no, row.mchid, row.out_request_no)
        except SealError as exc:
            row.bal_account_no = ""
            row.unopened = exc


def is_sealed(value: str) -> bool:
    return value.startswith(VERSION + ":")


def key_id_of(sealed: str) -> str:
    return _split(sealed)[0]


def _split(sealed: str) -> tuple[str, bytes]:
    version, _, rest = sealed.partition(":")
    key_id, _, body = rest.partition(":")
    if version != VERSION or not _KEY_ID.fullmatch(key_id) or not body:
        raise SealError("not a sealed ledger number")
    try:
        blob = base64.urlsafe_b64decode(body.encode())
    except (binascii.Error, ValueError):
        raise SealError("not a sealed ledger number") from None
    if len(blob) < NONCE_BYTES + 16:
        raise SealError("not a sealed ledger number")
    return key_id, blob


def keyring(settings: Settings) -> Keyring:
    """The keyring the settings name; SealError (one line) when either key is missing or bad."""
    if settings.data_keys is None or settings.lookup_key is None:
        raise SealError(
            "WXRECON_DATA_KEYS and WXRECON_LOOKUP_KEY must both be set (ledger numbers are "
            "sealed at rest; `wxrecon db keygen` prints fresh ones)"
        )
    return Keyring.from_settings(
        settings.data_keys.get_secret_value(), settings.lookup_key.get_secret_value()
    )


_process: tuple[object, Keyring] | None = None


def current() -> Keyring:
    """The process's keyring, from :func:`wxrecon.config.get_settings` (rebuilt when those
    are reloaded); SealError (one line) when the keys are missing or bad."""
    global _process
    from wxrecon.config import get_settings

    settings = get_settings()
    if _process is None or _process[0] is not settings:
        _process = (settings, keyring(settings))
    return _process[1]


def key_setting(key_id: str = "k1") -> dict[str, str]:
    """Fresh settings for a new installation: one data key named ``key_id`` and a look-up
    key, as environment variables (``wxrecon db keygen``, the demo, ``wxrecon sim init``)."""
    return {
        "WXRECON_DATA_KEYS": f"{key_id}:{generate_key()}",
        "WXRECON_LOOKUP_KEY": generate_key(),
    }

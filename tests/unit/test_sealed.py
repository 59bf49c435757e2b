"""Sealing the ledger number: round trip, row binding, tampering, rotation, key settings."""

from __future__ import annotations

import base64

import pytest

from wxrecon.store.sealed import (
    Keyring,
    SealError,
    generate_key,
    is_sealed,
    key_id_of,
    parse_data_keys,
)

BAL = "6222021234567890123"
# Fixed keys (test-only): parametrized ids must be the same in every xdist worker.
OLD = base64.b64encode(bytes(range(32))).decode()
NEW = base64.b64encode(bytes(range(32, 64))).decode()
LOOKUP = base64.b64encode(bytes(range(64, 96))).decode()


def ring(setting: str) -> Keyring:
    return Keyring.from_settings(setting, LOOKUP)


def test_round_trip_and_nothing_plain_in_the_sealed_value() -> None:
    keys = ring(f"k1:{OLD}")
    sealed = keys.seal(BAL, "1900000109", "R1")
    assert is_sealed(sealed) and key_id_of(sealed) == "k1" and BAL not in sealed
    assert keys.open(sealed, "1900000109", "R1") == BAL
    assert keys.seal(BAL, "1900000109", "R1") != sealed  # a fresh nonce each time


@pytest.mark.parametrize(("mchid", "no"), [("1900000109", "R2"), ("1900000110", "R1")])
def test_a_ciphertext_moved_to_another_row_does_not_open(mchid: str, no: str) -> None:
    keys = ring(f"k1:{OLD}")
    sealed = keys.seal(BAL, "1900000109", "R1")
    with pytest.raises(SealError, match="sealed for another row") as info:
        keys.open(sealed, mchid, no)
    assert sealed not in str(info.value) and BAL not in str(info.value)


def test_an_altered_ciphertext_does_not_open() -> None:
    keys = ring(f"k1:{OLD}")
    sealed = keys.seal(BAL, "1900000109", "R1")
    head, body = sealed.rsplit(":", 1)
    raw = bytearray(base64.urlsafe_b64decode(body))
    raw[-1] ^= 1
    with pytest.raises(SealError):
        keys.open(f"{head}:{base64.urlsafe_b64encode(bytes(raw)).decode()}", "1900000109", "R1")
    for bad in (BAL, "v1:k1:", "v2:k1:AAAA", "v1:k1:%%%"):
        with pytest.raises(SealError, match="not a sealed"):
            keys.open(bad, "1900000109", "R1")


def test_rotation_new_key_seals_old_key_still_opens() -> None:
    before = ring(f"old:{OLD}")
    sealed = before.seal(BAL, "1900000109", "R1")
    during = ring(f"new:{NEW},old:{OLD}")
    assert during.open(sealed, "1900000109", "R1") == BAL
    assert during.needs_reseal(sealed) and during.needs_reseal(BAL)
    resealed = during.seal(during.open(sealed, "1900000109", "R1"), "1900000109", "R1")
    assert key_id_of(resealed) == "new" and not during.needs_reseal(resealed)
    after = ring(f"new:{NEW}")
    assert after.open(resealed, "1900000109", "R1") == BAL
    with pytest.raises(SealError, match="'old', which WXRECON_DATA_KEYS does not hold"):
        after.open(sealed, "1900000109", "R1")


def test_lookup_hash_is_stable_across_rotation_and_keyed() -> None:
    a, b = ring(f"old:{OLD}"), ring(f"new:{NEW},old:{OLD}")
    assert a.lookup_hash(BAL) == b.lookup_hash(BAL) and len(a.lookup_hash(BAL)) == 64
    assert a.lookup_hash(BAL) != a.lookup_hash(BAL + "0")
    other = Keyring.from_settings(f"old:{OLD}", generate_key())
    assert other.lookup_hash(BAL) != a.lookup_hash(BAL)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("", "empty"),
        ("nokey", "must be <id>:<base64 key>"),
        ("bad id:" + OLD, "must be <id>:<base64 key>"),
        ("k1:not base64!", "not base64"),
        ("k1:" + base64.b64encode(b"short").decode(), "must be 32 bytes"),
        (f"k1:{OLD},k1:{NEW}", "twice"),
    ],
)
def test_bad_key_settings_are_one_line_and_show_no_key(setting: str, message: str) -> None:
    with pytest.raises(SealError, match=message) as info:
        parse_data_keys(setting)
    assert "\n" not in str(info.value) and OLD not in str(info.value)


def test_plaintext_bounds() -> None:
    keys = ring(f"k1:{OLD}")
    for bad in ("", "1" * 129):
        with pytest.raises(SealError):
            keys.seal(bad, "1900000109", "R1")

"""Key loading, credential cross-checks, OAEP and masking; provider.load_credentials."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fixtures_keys import (
    MCHID,
    PUB_KEY_ID,
    KeySet,
    cert_pem,
    new_rsa_key,
    pkcs1_pem,
    pkcs8_pem,
    public_pem,
    self_signed_cert,
)
from wxrecon.config import Settings
from wxrecon.provider import load_credentials
from wxrecon.wechatpay import keys as k
from wxrecon.wechatpay.keys import CredentialError, Credentials


def _load(keys: KeySet, **overrides: Any) -> Credentials:
    kw: dict[str, Any] = {
        "mchid": MCHID,
        "cert_serial": keys.cert_serial,
        "private_key_path": keys.merchant_key_path,
        "public_key_id": PUB_KEY_ID,
        "public_key_path": keys.wechatpay_public_key_path,
        "platform_cert_paths": None,
        "mch_cert_path": keys.merchant_cert_path,
    }
    kw.update(overrides)
    return Credentials.load(**kw)


def _error(keys: KeySet, **overrides: Any) -> str:
    with pytest.raises(CredentialError) as info:
        _load(keys, **overrides)
    message = str(info.value)
    assert "\n" not in message
    assert "-----" not in message and "BEGIN" not in message  # never PEM material
    return message


def test_pkcs8_and_pkcs1_pem_load_the_same_key(keys: KeySet) -> None:
    a = k.load_private_key(keys.merchant_key_path, "S")
    b = k.load_private_key(keys.merchant_key_pkcs1_path, "S")
    assert keys.merchant_key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert keys.merchant_key_pkcs1_path.read_bytes().startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    assert a.private_numbers() == b.private_numbers() == keys.merchant_key.private_numbers()
    creds = _load(keys, private_key_path=keys.merchant_key_pkcs1_path)
    assert creds.cert_serial == keys.cert_serial


def test_full_credentials(keys: KeySet) -> None:
    creds = _load(keys)
    assert creds.mchid == MCHID
    assert creds.encrypt_serial == PUB_KEY_ID
    assert set(creds.verify_keys) == {PUB_KEY_ID}
    assert "PRIVATE" not in repr(creds) and "private_key" not in repr(creds)


def test_missing_private_key_setting(keys: KeySet) -> None:
    assert _error(keys, private_key_path=None) == "WXRECON_MCH_PRIVATE_KEY_PATH is not set"


def test_missing_private_key_file(keys: KeySet, tmp_path: Path) -> None:
    message = _error(keys, private_key_path=tmp_path / "nope.pem")
    assert message.startswith("WXRECON_MCH_PRIVATE_KEY_PATH: cannot read")
    assert "No such file" in message


def test_private_key_path_is_a_directory(keys: KeySet, tmp_path: Path) -> None:
    assert _error(keys, private_key_path=tmp_path).startswith("WXRECON_MCH_PRIVATE_KEY_PATH")


def test_garbage_private_key_file(keys: KeySet, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(
        b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0IGJ5dGVz\n-----END PRIVATE KEY-----\n"
    )
    message = _error(keys, private_key_path=garbage)
    assert message == "WXRECON_MCH_PRIVATE_KEY_PATH: not an unencrypted PEM private key"
    assert "c2VjcmV0" not in message
    garbage.write_bytes(bytes(range(256)))
    assert _error(keys, private_key_path=garbage).startswith("WXRECON_MCH_PRIVATE_KEY_PATH")


def test_encrypted_private_key(keys: KeySet, tmp_path: Path) -> None:
    path = tmp_path / "enc.pem"
    path.write_bytes(
        keys.merchant_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    assert "not an unencrypted PEM private key" in _error(keys, private_key_path=path)


def test_non_rsa_private_key(keys: KeySet, tmp_path: Path) -> None:
    path = tmp_path / "ec.pem"
    path.write_bytes(pkcs8_pem(ec.generate_private_key(ec.SECP256R1())))
    assert _error(keys, private_key_path=path) == "WXRECON_MCH_PRIVATE_KEY_PATH: not an RSA key"


def test_short_rsa_private_key(keys: KeySet, tmp_path: Path) -> None:
    path = tmp_path / "short.pem"
    path.write_bytes(pkcs1_pem(new_rsa_key(1024)))
    assert "1024 bits, 2048 needed" in _error(keys, private_key_path=path)


def test_key_and_certificate_mismatch(keys: KeySet, tmp_path: Path) -> None:
    # A certificate for another key, carrying the configured serial.
    other_cert = self_signed_cert(keys.other_key, "other", keys.merchant_cert.serial_number)
    path = tmp_path / "other_cert.pem"
    path.write_bytes(cert_pem(other_cert))
    assert _error(keys, mch_cert_path=path) == (
        "WXRECON_MCH_PRIVATE_KEY_PATH does not match the certificate in WXRECON_MCH_CERT_PATH"
    )


def test_serial_and_certificate_mismatch(keys: KeySet) -> None:
    assert _error(keys, cert_serial="ABCDEF") == (
        "WXRECON_MCH_CERT_SERIAL does not match the serial of WXRECON_MCH_CERT_PATH"
    )
    # Case and leading zeros do not matter.
    assert _load(keys, cert_serial="00" + keys.cert_serial.lower()).mchid == MCHID


def test_garbage_merchant_certificate(keys: KeySet, tmp_path: Path) -> None:
    path = tmp_path / "cert.pem"
    path.write_text("not a certificate")
    assert _error(keys, mch_cert_path=path) == (
        "WXRECON_MCH_CERT_PATH: not a PEM X.509 certificate"
    )


@pytest.mark.parametrize(
    ("field", "value", "setting"),
    [
        ("mchid", "", "WXRECON_MCHID is not set"),
        ("mchid", "19000x", "WXRECON_MCHID must be 1 to 32 digits"),
        ("cert_serial", "", "WXRECON_MCH_CERT_SERIAL is not set"),
        ("cert_serial", 'AB"C', "WXRECON_MCH_CERT_SERIAL must be a hexadecimal"),
        ("public_key_id", "KEY_1", "WXRECON_WECHATPAY_PUBLIC_KEY_ID must look like PUB_KEY_ID_"),
        ("public_key_id", None, "WXRECON_WECHATPAY_PUBLIC_KEY_ID is not set"),
        ("public_key_path", None, "WXRECON_WECHATPAY_PUBLIC_KEY_PATH is not set"),
    ],
)
def test_setting_errors_name_the_setting(
    keys: KeySet, field: str, value: object, setting: str
) -> None:
    overrides: dict[str, Any] = {field: value}
    if field == "cert_serial" and value:
        overrides["mch_cert_path"] = None  # reach the format check, not the cert comparison
    assert _error(keys, **overrides).startswith(setting)


def test_no_wechatpay_key_at_all(keys: KeySet) -> None:
    message = _error(keys, public_key_id=None, public_key_path=None)
    assert "WXRECON_WECHATPAY_PUBLIC_KEY_ID" in message
    assert "WXRECON_PLATFORM_CERT_PATHS" in message


def test_garbage_and_non_rsa_public_key(keys: KeySet, tmp_path: Path) -> None:
    path = tmp_path / "pub.pem"
    path.write_text("garbage")
    assert _error(keys, public_key_path=path) == (
        "WXRECON_WECHATPAY_PUBLIC_KEY_PATH: not a PEM public key"
    )
    path.write_bytes(public_pem(ec.generate_private_key(ec.SECP256R1()).public_key()))
    assert _error(keys, public_key_path=path) == "WXRECON_WECHATPAY_PUBLIC_KEY_PATH: not an RSA key"


def test_merchant_key_configured_as_wechatpay_key(keys: KeySet, tmp_path: Path) -> None:
    path = tmp_path / "own.pem"
    path.write_bytes(public_pem(keys.merchant_key.public_key()))
    assert "merchant's own public key" in _error(keys, public_key_path=path)
    assert "merchant's own certificate" in _error(
        keys, platform_cert_paths=[str(keys.merchant_cert_path)]
    )


def test_platform_certificate_errors(keys: KeySet, tmp_path: Path) -> None:
    assert _error(keys, platform_cert_paths=[str(tmp_path / "none.pem")]).startswith(
        "WXRECON_PLATFORM_CERT_PATHS: cannot read"
    )
    bad = tmp_path / "bad.pem"
    bad.write_text("x")
    assert _error(keys, platform_cert_paths=[str(bad)]) == (
        "WXRECON_PLATFORM_CERT_PATHS: not a PEM X.509 certificate"
    )
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_cert = tmp_path / "ec.pem"
    ec_cert.write_bytes(cert_pem(self_signed_cert(ec_key, "ec", 77)))
    assert _error(keys, platform_cert_paths=[str(ec_cert)]) == (
        "WXRECON_PLATFORM_CERT_PATHS: certificate key is not RSA"
    )


def test_newest_platform_certificate_encrypts(keys: KeySet, tmp_path: Path) -> None:
    older = self_signed_cert(keys.other_key, "older", 0x1234)
    path = tmp_path / "older.pem"
    path.write_bytes(cert_pem(older))
    # Both valid for a year from "now", but the fixture's was made earlier in the session:
    # compare by expiry, the later wins.
    creds = _load(
        keys,
        public_key_id=None,
        public_key_path=None,
        platform_cert_paths=[str(keys.platform_cert_path), str(path)],
    )
    newest = max(
        [
            (keys.platform_cert.not_valid_after_utc, keys.platform_serial),
            (older.not_valid_after_utc, "1234"),
        ]
    )[1]
    assert set(creds.verify_keys) == {keys.platform_serial, "1234"}
    assert creds.encrypt_serial == newest


# -- OAEP ----------------------------------------------------------------------------------


def test_oaep_round_trip_and_randomised(keys: KeySet) -> None:
    creds = _load(keys)
    a, b = creds.encrypt("6222021234567890"), creds.encrypt("6222021234567890")
    assert a != b  # never compare ciphertexts
    assert (
        k.decrypt(keys.wechatpay_key, a) == k.decrypt(keys.wechatpay_key, b) == "6222021234567890"
    )
    ct = keys.encrypt_for_merchant("中文 ledger")
    assert creds.decrypt(ct) == "中文 ledger"


@pytest.mark.parametrize("ciphertext", ["", "!!!", "AAAA", "QUJD" * 100])
def test_decrypt_garbage_is_value_error(keys: KeySet, ciphertext: str) -> None:
    with pytest.raises(ValueError, match="does not decrypt"):
        k.decrypt(keys.merchant_key, ciphertext)


def test_decrypt_with_the_wrong_key(keys: KeySet) -> None:
    ct = keys.encrypt_for_merchant("secret")
    with pytest.raises(ValueError, match="does not decrypt"):
        k.decrypt(keys.other_key, ct)


@settings(max_examples=25, deadline=None)
@given(st.text(min_size=1, max_size=60))
def test_oaep_property(keys: KeySet, plaintext: str) -> None:
    if len(plaintext.encode("utf-8", "surrogatepass")) > 150 or any(
        0xD800 <= ord(c) <= 0xDFFF for c in plaintext
    ):
        return
    assert (
        k.decrypt(keys.wechatpay_key, k.encrypt(keys.wechatpay_key.public_key(), plaintext))
        == plaintext
    )


# -- masking -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("secret", "masked"),
    [
        (None, ""),
        ("", ""),
        ("1234", "****"),
        ("12345678", "********"),
        ("6222021234567890", "6222…7890"),
    ],
)
def test_mask(secret: str | None, masked: str) -> None:
    assert k.mask(secret) == masked


# -- provider.load_credentials -------------------------------------------------------------


def _settings(keys: KeySet, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "mchid": MCHID,
        "mch_cert_serial": keys.cert_serial,
        "mch_private_key_path": keys.merchant_key_path,
        "mch_cert_path": keys.merchant_cert_path,
        "wechatpay_public_key_id": PUB_KEY_ID,
        "wechatpay_public_key_path": keys.wechatpay_public_key_path,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_load_credentials_from_settings(keys: KeySet) -> None:
    creds = load_credentials(_settings(keys))
    assert creds.mchid == MCHID and creds.encrypt_serial == PUB_KEY_ID
    both = load_credentials(_settings(keys, platform_cert_paths=str(keys.platform_cert_path)))
    assert set(both.verify_keys) == {PUB_KEY_ID, keys.platform_serial}
    certs = load_credentials(
        _settings(
            keys,
            wechatpay_public_key_id=None,
            wechatpay_public_key_path=None,
            platform_cert_paths=f" {keys.platform_cert_path} , ",
        )
    )
    assert certs.encrypt_serial == keys.platform_serial


@pytest.mark.parametrize(
    ("overrides", "setting"),
    [
        ({"mchid": ""}, "WXRECON_MCHID"),
        ({"mch_private_key_path": None}, "WXRECON_MCH_PRIVATE_KEY_PATH"),
        ({"mch_private_key_path": "/nonexistent/key.pem"}, "WXRECON_MCH_PRIVATE_KEY_PATH"),
        ({"mch_cert_serial": ""}, "WXRECON_MCH_CERT_SERIAL"),
        (
            {"wechatpay_public_key_path": "/nonexistent/pub.pem"},
            "WXRECON_WECHATPAY_PUBLIC_KEY_PATH",
        ),
        ({"platform_cert_paths": "/nonexistent/cert.pem"}, "WXRECON_PLATFORM_CERT_PATHS"),
    ],
)
def test_load_credentials_errors_name_the_setting(
    keys: KeySet, overrides: dict[str, Any], setting: str
) -> None:
    with pytest.raises(CredentialError) as info:
        load_credentials(_settings(keys, **overrides))
    assert setting in str(info.value)
    assert "\n" not in str(info.value)


def test_private_key_material_never_in_errors(keys: KeySet, tmp_path: Path) -> None:
    # A PEM file that holds the key under the wrong label: the message must not echo it.
    pem = pkcs1_pem(keys.merchant_key).replace(b"RSA PRIVATE KEY", b"CERTIFICATE")
    path = tmp_path / "swapped.pem"
    path.write_bytes(pem)
    message = _error(keys, mch_cert_path=path)
    body = pem.splitlines()[1].decode()
    assert body not in message

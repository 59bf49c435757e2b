"""Key material: loading PEM files, RSA-OAEP for sensitive fields, merchant credentials.

Every loading error is a CredentialError whose message names the setting at fault and never
includes key bytes.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from wxrecon.wechatpay import signing

_OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)  # noqa: S303 - the provider's scheme


_MCHID = re.compile(r"[0-9]{1,32}")
_CERT_SERIAL = re.compile(r"[0-9A-Fa-f]{1,64}")
_PUB_KEY_ID = re.compile(r"PUB_KEY_ID_[0-9A-Za-z_]{1,64}")
_PARSE_ERRORS = (ValueError, TypeError, UnsupportedAlgorithm)


class CredentialError(ValueError):
    """A key or certificate setting is missing, unreadable or inconsistent."""


def _read(path: str | Path | None, setting: str) -> bytes:
    if not path:
        raise CredentialError(f"{setting} is not set")
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CredentialError(f"{setting}: cannot read {path}: {exc.strerror}") from None


def parse_private_key(pem: bytes, setting: str = "private key") -> rsa.RSAPrivateKey:
    """PKCS#8 (``BEGIN PRIVATE KEY``) or PKCS#1 (``BEGIN RSA PRIVATE KEY``) PEM."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except _PARSE_ERRORS:
        raise CredentialError(f"{setting}: not an unencrypted PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise CredentialError(f"{setting}: not an RSA key")
    if key.key_size < 2048:
        raise CredentialError(f"{setting}: RSA key of {key.key_size} bits, 2048 needed")
    return key


def parse_public_key(pem: bytes, setting: str = "public key") -> rsa.RSAPublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except _PARSE_ERRORS:
        raise CredentialError(f"{setting}: not a PEM public key") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise CredentialError(f"{setting}: not an RSA key")
    return key


def parse_certificate(pem: bytes, setting: str = "certificate") -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except _PARSE_ERRORS:
        raise CredentialError(f"{setting}: not a PEM X.509 certificate") from None


def certificate_serial(cert: x509.Certificate) -> str:
    """The serial as the provider writes it: upper-case hex, no separators."""
    return format(cert.serial_number, "X")


def certificate_key(cert: x509.Certificate, setting: str) -> rsa.RSAPublicKey:
    try:
        key = cert.public_key()
    except _PARSE_ERRORS:
        raise CredentialError(f"{setting}: certificate key cannot be read") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise CredentialError(f"{setting}: certificate key is not RSA")
    return key


def load_private_key(path: str | Path | None, setting: str) -> rsa.RSAPrivateKey:
    return parse_private_key(_read(path, setting), setting)


def load_public_key(path: str | Path | None, setting: str) -> rsa.RSAPublicKey:
    return parse_public_key(_read(path, setting), setting)


def load_certificate(path: str | Path | None, setting: str) -> x509.Certificate:
    return parse_certificate(_read(path, setting), setting)


def same_key(a: rsa.RSAPublicKey, b: rsa.RSAPublicKey) -> bool:
    return a.public_numbers() == b.public_numbers()


def encrypt(public_key: rsa.RSAPublicKey, plaintext: str) -> str:
    """RSAES-OAEP (SHA-1, MGF1-SHA-1), base64. Randomised: never compare ciphertexts."""
    return base64.b64encode(public_key.encrypt(plaintext.encode(), _OAEP)).decode("ascii")


def decrypt(private_key: rsa.RSAPrivateKey, ciphertext: str) -> str:
    """Inverse of :func:`encrypt`; raises ValueError on anything that is not our ciphertext."""
    try:
        raw = base64.b64decode(ciphertext, validate=True)
        return private_key.decrypt(raw, _OAEP).decode()
    except (ValueError, TypeError, UnicodeDecodeError):
        raise ValueError("ciphertext does not decrypt with this key") from None


def mask(secret: str | None, keep: int = 4) -> str:
    """``6222…1234``-style masking for display; short values are masked whole."""
    if not secret:
        return ""
    if len(secret) <= keep * 2:
        return "*" * len(secret)
    return f"{secret[:keep]}…{secret[-keep:]}"


@dataclass(frozen=True)
class Credentials:
    """Everything needed to sign requests, encrypt fields and verify responses.

    ``verify_keys`` maps each accepted ``Wechatpay-Serial`` (a ``PUB_KEY_ID_…`` or a platform
    certificate serial) to its public key; ``encrypt_serial`` names the one used to encrypt
    outgoing fields and sent as ``Wechatpay-Serial``.
    """

    mchid: str
    cert_serial: str
    private_key: rsa.RSAPrivateKey = field(repr=False)
    verify_keys: Mapping[str, rsa.RSAPublicKey] = field(repr=False)
    encrypt_serial: str

    def __post_init__(self) -> None:
        if not self.mchid:
            raise CredentialError("WXRECON_MCHID is not set")
        if not _MCHID.fullmatch(self.mchid):
            raise CredentialError("WXRECON_MCHID must be 1 to 32 digits")
        if not self.cert_serial:
            raise CredentialError("WXRECON_MCH_CERT_SERIAL is not set")
        if not _CERT_SERIAL.fullmatch(self.cert_serial):
            raise CredentialError("WXRECON_MCH_CERT_SERIAL must be a hexadecimal serial number")
        if self.encrypt_serial not in self.verify_keys:
            raise CredentialError(
                "no WeChat Pay public key or platform certificate is configured "
                "(set WXRECON_WECHATPAY_PUBLIC_KEY_ID and WXRECON_WECHATPAY_PUBLIC_KEY_PATH, "
                "or WXRECON_PLATFORM_CERT_PATHS)"
            )

    @property
    def encrypt_key(self) -> rsa.RSAPublicKey:
        return self.verify_keys[self.encrypt_serial]

    def encrypt(self, plaintext: str) -> str:
        return encrypt(self.encrypt_key, plaintext)

    def decrypt(self, ciphertext: str) -> str:
        return decrypt(self.private_key, ciphertext)

    def authorization(self, method: str, path_and_query: str, body: bytes) -> str:
        return signing.build_authorization(
            mchid=self.mchid,
            serial_no=self.cert_serial,
            private_key=self.private_key,
            method=method,
            path_and_query=path_and_query,
            body=body,
        ).header()

    @classmethod
    def load(
        cls,
        *,
        mchid: str,
        cert_serial: str,
        private_key_path: str | Path | None,
        public_key_id: str | None = None,
        public_key_path: str | Path | None = None,
        platform_cert_paths: list[str] | None = None,
        mch_cert_path: str | Path | None = None,
    ) -> Credentials:
        """Load and cross-check every configured file; a problem names its setting."""
        mchid = (mchid or "").strip()
        cert_serial = (cert_serial or "").strip()
        if not mchid:
            raise CredentialError("WXRECON_MCHID is not set")
        if not cert_serial:
            raise CredentialError("WXRECON_MCH_CERT_SERIAL is not set")
        private_key = load_private_key(private_key_path, "WXRECON_MCH_PRIVATE_KEY_PATH")
        merchant_public = private_key.public_key()
        if mch_cert_path:
            cert = load_certificate(mch_cert_path, "WXRECON_MCH_CERT_PATH")
            if certificate_serial(cert) != signing.normalise_serial(cert_serial):
                raise CredentialError(
                    "WXRECON_MCH_CERT_SERIAL does not match the serial of WXRECON_MCH_CERT_PATH"
                )
            if not same_key(certificate_key(cert, "WXRECON_MCH_CERT_PATH"), merchant_public):
                raise CredentialError(
                    "WXRECON_MCH_PRIVATE_KEY_PATH does not match the certificate in "
                    "WXRECON_MCH_CERT_PATH"
                )
        keys: dict[str, rsa.RSAPublicKey] = {}
        encrypt_serial = ""
        newest: tuple[datetime, str] | None = None
        if public_key_id or public_key_path:
            if not public_key_id:
                raise CredentialError("WXRECON_WECHATPAY_PUBLIC_KEY_ID is not set")
            public_key_id = public_key_id.strip()
            if not _PUB_KEY_ID.fullmatch(public_key_id):
                raise CredentialError(
                    "WXRECON_WECHATPAY_PUBLIC_KEY_ID must look like PUB_KEY_ID_ followed by "
                    "letters and digits"
                )
            key = load_public_key(public_key_path, "WXRECON_WECHATPAY_PUBLIC_KEY_PATH")
            if same_key(key, merchant_public):
                raise CredentialError(
                    "WXRECON_WECHATPAY_PUBLIC_KEY_PATH holds the merchant's own public key, "
                    "not the WeChat Pay public key"
                )
            keys[public_key_id] = key
            encrypt_serial = public_key_id
        for path in platform_cert_paths or []:
            # The public key (recommended by the provider) stays the one used for encryption;
            # platform certificates are accepted for verification alongside it.
            cert = load_certificate(path, "WXRECON_PLATFORM_CERT_PATHS")
            serial = certificate_serial(cert)
            key = certificate_key(cert, "WXRECON_PLATFORM_CERT_PATHS")
            if same_key(key, merchant_public):
                raise CredentialError(
                    f"WXRECON_PLATFORM_CERT_PATHS: {path} is the merchant's own certificate, "
                    "not a WeChat Pay platform certificate"
                )
            keys[serial] = key
            if newest is None or cert.not_valid_after_utc > newest[0]:
                newest = (cert.not_valid_after_utc, serial)
        if not encrypt_serial and newest is not None:
            encrypt_serial = newest[1]  # without a public key, encrypt for the newest certificate
        return cls(
            mchid=mchid,
            cert_serial=cert_serial.upper(),
            private_key=private_key,
            verify_keys=keys,
            encrypt_serial=encrypt_serial,
        )

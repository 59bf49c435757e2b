"""Generating a simulated merchant's and provider's RSA keys and self-signed certificates."""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from wxrecon.simulator.layout import DEFAULT_MCHID


def _pkcs8(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _spki(key: rsa.RSAPublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _certificate(
    key: rsa.RSAPrivateKey, subject: list[x509.NameAttribute[str]]
) -> x509.Certificate:
    name = x509.Name(subject)
    now = dt.datetime.now(dt.UTC)
    # A 40-hex-digit serial like the provider's (top nibble set so no digit is dropped).
    serial = (0x4 << 156) | secrets.randbits(156)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=5 * 365))
        .sign(key, hashes.SHA256())
    )


@dataclass(frozen=True)
class KeyMaterial:
    """Every key and certificate of one simulated merchant and provider, as PEM bytes."""

    mchid: str
    merchant_key: bytes = field(repr=False)
    merchant_cert: bytes
    wechatpay_private_key: bytes = field(repr=False)
    wechatpay_public_key: bytes
    public_key_id: str
    platform_private_key: bytes = field(repr=False)
    platform_cert: bytes

    @staticmethod
    def merchant(mchid: str) -> tuple[bytes, bytes]:
        """Another merchant's API key and certificate (PEM): e.g. a platform merchant."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        cert = _certificate(
            key,
            [
                x509.NameAttribute(NameOID.COMMON_NAME, mchid),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "wxrecon simulated merchant"),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Tenpay.com CA Center"),
            ],
        )
        return _pkcs8(key), cert.public_bytes(serialization.Encoding.PEM)

    @classmethod
    def generate(cls, mchid: str = DEFAULT_MCHID) -> KeyMaterial:
        merchant = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        wechatpay = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        platform = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        merchant_cert = _certificate(
            merchant,
            [
                x509.NameAttribute(NameOID.COMMON_NAME, mchid),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "wxrecon simulated merchant"),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Tenpay.com CA Center"),
            ],
        )
        platform_cert = _certificate(
            platform,
            [
                x509.NameAttribute(NameOID.COMMON_NAME, "Tenpay.com sign (wxrecon simulator)"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tenpay.com"),
            ],
        )
        key_id = "PUB_KEY_ID_01" + "".join(secrets.choice("0123456789") for _ in range(26))
        return cls(
            mchid=mchid,
            merchant_key=_pkcs8(merchant),
            merchant_cert=merchant_cert.public_bytes(serialization.Encoding.PEM),
            wechatpay_private_key=_pkcs8(wechatpay),
            wechatpay_public_key=_spki(wechatpay.public_key()),
            public_key_id=key_id,
            platform_private_key=_pkcs8(platform),
            platform_cert=platform_cert.public_bytes(serialization.Encoding.PEM),
        )

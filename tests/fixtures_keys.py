"""Test key material, made once per session (2048-bit RSA keys are slow to generate).

``KeySet`` holds a merchant key with a self-signed merchant API certificate, a WeChat Pay
public key (with its ``PUB_KEY_ID_…``) and a platform certificate, each with the private half
a fake provider needs to sign answers, all written as PEM files. ``signed_headers`` and
``signed_response`` build provider answers for ``httpx.MockTransport`` handlers.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from tests.services import SEALING_ENV
from wxrecon.wechatpay import signing
from wxrecon.wechatpay.client import RetryPolicy, WeChatPayClient
from wxrecon.wechatpay.keys import Credentials, certificate_serial

MCHID = "1900016681"
PUB_KEY_ID = "PUB_KEY_ID_0114232134912410000000000000"
BAL_ACCOUNT_NO = "8609cb22e1774a50a930e414cc71eca06121bc"


def new_rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def pkcs8_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def pkcs1_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def public_pem(key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def self_signed_cert(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, common_name: str, serial: int
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class KeySet:
    merchant_key: rsa.RSAPrivateKey
    merchant_cert: x509.Certificate
    wechatpay_key: rsa.RSAPrivateKey  # the provider's half of the WeChat Pay public key
    platform_key: rsa.RSAPrivateKey  # the provider's half of the platform certificate
    platform_cert: x509.Certificate
    other_key: rsa.RSAPrivateKey  # belongs to nobody configured
    dir: Path

    @property
    def cert_serial(self) -> str:
        return certificate_serial(self.merchant_cert)

    @property
    def platform_serial(self) -> str:
        return certificate_serial(self.platform_cert)

    def path(self, name: str) -> Path:
        return self.dir / name

    @property
    def merchant_key_path(self) -> Path:
        return self.path("apiclient_key.pem")

    @property
    def merchant_key_pkcs1_path(self) -> Path:
        return self.path("apiclient_key_pkcs1.pem")

    @property
    def merchant_cert_path(self) -> Path:
        return self.path("apiclient_cert.pem")

    @property
    def wechatpay_public_key_path(self) -> Path:
        return self.path("wxp_pub.pem")

    @property
    def platform_cert_path(self) -> Path:
        return self.path("wechatpay_platform.pem")

    def credentials(self, *, public_key: bool = True, platform_cert: bool = False) -> Credentials:
        return Credentials.load(
            mchid=MCHID,
            cert_serial=self.cert_serial,
            private_key_path=self.merchant_key_path,
            public_key_id=PUB_KEY_ID if public_key else None,
            public_key_path=self.wechatpay_public_key_path if public_key else None,
            platform_cert_paths=[str(self.platform_cert_path)] if platform_cert else None,
            mch_cert_path=self.merchant_cert_path,
        )

    def env(self) -> dict[str, str]:
        """``WXRECON_*`` settings for these keys (public-key mode)."""
        return {
            "WXRECON_MCHID": MCHID,
            "WXRECON_MCH_CERT_SERIAL": self.cert_serial,
            "WXRECON_MCH_PRIVATE_KEY_PATH": str(self.merchant_key_path),
            "WXRECON_MCH_CERT_PATH": str(self.merchant_cert_path),
            "WXRECON_WECHATPAY_PUBLIC_KEY_ID": PUB_KEY_ID,
            "WXRECON_WECHATPAY_PUBLIC_KEY_PATH": str(self.wechatpay_public_key_path),
            **SEALING_ENV,
        }

    def signer(self, serial: str) -> rsa.RSAPrivateKey:
        return {PUB_KEY_ID: self.wechatpay_key, self.platform_serial: self.platform_key}[serial]

    def encrypt_for_merchant(self, plaintext: str) -> str:
        """What the provider does to encrypted response fields."""
        raw = self.merchant_key.public_key().encrypt(
            plaintext.encode(),
            padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None),  # noqa: S303
        )
        return base64.b64encode(raw).decode()


@cache
def _keyset(directory: str) -> KeySet:
    d = Path(directory)
    merchant = new_rsa_key()
    merchant_cert = self_signed_cert(
        merchant, "wxrecon test merchant", 0x3775B6A45ACD588826D15E583A95F5DD
    )
    wechatpay = new_rsa_key()
    platform = new_rsa_key()
    platform_cert = self_signed_cert(
        platform, "Tenpay.com Root CA test", 0x5157F09EFDC096DE15EBE81A47057A7232F1B8E1
    )
    ks = KeySet(merchant, merchant_cert, wechatpay, platform, platform_cert, new_rsa_key(), d)
    ks.merchant_key_path.write_bytes(pkcs8_pem(merchant))
    ks.merchant_key_pkcs1_path.write_bytes(pkcs1_pem(merchant))
    ks.merchant_cert_path.write_bytes(cert_pem(merchant_cert))
    ks.wechatpay_public_key_path.write_bytes(public_pem(wechatpay.public_key()))
    ks.platform_cert_path.write_bytes(cert_pem(platform_cert))
    return ks


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeySet:
    return _keyset(str(tmp_path_factory.mktemp("keys")))


@pytest.fixture(scope="session")
def credentials(keys: KeySet) -> Credentials:
    return keys.credentials()


# -- a fake provider for MockTransport handlers ------------------------------------------------


def signed_headers(
    keys: KeySet,
    body: bytes,
    *,
    serial: str = PUB_KEY_ID,
    signer: rsa.RSAPrivateKey | None = None,
    timestamp: int | None = None,
    nonce: str = "5K8264ILTKCH16CQ2502SI8ZNMTM67VS",
    request_id: str = "08F78BB5AF0610D302A4F4B8F7D6F2B1D5B8",
) -> dict[str, str]:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    key = signer or keys.signer(serial)
    return {
        "Content-Type": "application/json",
        "Request-ID": request_id,
        "Wechatpay-Timestamp": ts,
        "Wechatpay-Nonce": nonce,
        "Wechatpay-Serial": serial,
        "Wechatpay-Signature": signing.sign(key, signing.response_message(ts, nonce, body)),
        "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048",
    }


def signed_response(
    keys: KeySet, data: Any, status: int = 200, *, raw: bytes | None = None, **kw: Any
) -> httpx.Response:
    body = raw if raw is not None else json.dumps(data, ensure_ascii=False).encode()
    return httpx.Response(status, content=body, headers=signed_headers(keys, body, **kw))


def error_response(
    status: int, code: str | None, message: str = "", request_id: str = "REQ-ERR-1"
) -> httpx.Response:
    payload: dict[str, Any] = {"message": message}
    if code is not None:
        payload["code"] = code
    return httpx.Response(status, json=payload, headers={"Request-ID": request_id})


Handler = Callable[[httpx.Request], httpx.Response]


def mock_client(
    credentials: Credentials,
    handler: Handler,
    *,
    retry: RetryPolicy | None = None,
    **kw: Any,
) -> WeChatPayClient:
    """A client on ``httpx.MockTransport`` that never sleeps between retries."""
    return WeChatPayClient(
        credentials,
        transport=httpx.MockTransport(handler),
        retry=retry or RetryPolicy(attempts=3, initial_wait=0, max_wait=0),
        **kw,
    )


def reduction_answer(
    keys: KeySet,
    out_request_no: str,
    state: str = "PROCESSING",
    *,
    bal_account_no: str = BAL_ACCOUNT_NO,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "mchid": MCHID,
        "bal_account_no": keys.encrypt_for_merchant(bal_account_no),
        "out_request_no": out_request_no,
        "state": state,
    }
    data.update(extra or {})
    return data

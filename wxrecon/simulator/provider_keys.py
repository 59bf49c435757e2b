"""The key objects the running simulator signs, verifies and decrypts with."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric import rsa

from wxrecon.simulator.layout import (
    MERCHANT_CERT,
    PLATFORM_PRIVATE_KEY,
    SIM_JSON,
    SP_MERCHANT_CERT,
    WECHATPAY_PRIVATE_KEY,
    SimDirError,
)
from wxrecon.wechatpay import keys

if TYPE_CHECKING:
    from wxrecon.simulator.material import SimDir


@lru_cache(maxsize=32)
def _parse_private_key(pem: bytes, setting: str) -> rsa.RSAPrivateKey:
    # Parsing validates the key (tens of ms); identical bytes give an identical, immutable key.
    return keys.parse_private_key(pem, setting)


def _private_key(path: Path, setting: str) -> rsa.RSAPrivateKey:
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise SimDirError(f"{path}: cannot read ({exc.strerror})") from None
    return _parse_private_key(pem, setting)


@dataclass(frozen=True)
class ProviderKeys:
    """The key objects the simulator uses, parsed once (RSA parsing is not free)."""

    merchant_mchid: str
    merchant_serial: str
    merchant_public: rsa.RSAPublicKey = field(repr=False)
    public_key_id: str
    wechatpay_private: rsa.RSAPrivateKey = field(repr=False)
    platform_serial: str
    platform_private: rsa.RSAPrivateKey = field(repr=False)
    cert_mode: bool
    role: str = "any"  # the first merchant's
    # Every merchant that may sign: mchid -> (certificate serial, public key, role).
    merchants: Mapping[str, tuple[str, rsa.RSAPublicKey, str]] = field(
        default_factory=dict, repr=False
    )

    def merchant(self, mchid: str) -> tuple[str, rsa.RSAPublicKey, str] | None:
        if mchid == self.merchant_mchid:
            return self.merchant_serial, self.merchant_public, self.role
        return self.merchants.get(mchid)

    @classmethod
    def load(cls, sim: SimDir) -> ProviderKeys:
        cert = keys.load_certificate(sim.file(MERCHANT_CERT), MERCHANT_CERT)
        serial = keys.certificate_serial(cert)
        if serial != sim.mch_cert_serial.upper():
            raise SimDirError(f"{SIM_JSON}: mch_cert_serial does not match {MERCHANT_CERT}")
        merchants: dict[str, tuple[str, rsa.RSAPublicKey, str]] = {}
        if sim.sp_mchid is not None and sim.sp_cert_serial is not None:
            sp_cert = keys.load_certificate(sim.file(SP_MERCHANT_CERT), SP_MERCHANT_CERT)
            if keys.certificate_serial(sp_cert) != sim.sp_cert_serial.upper():
                raise SimDirError(f"{SIM_JSON}: sp_cert_serial does not match {SP_MERCHANT_CERT}")
            public = keys.certificate_key(sp_cert, SP_MERCHANT_CERT)
            merchants[sim.sp_mchid] = (sim.sp_cert_serial.upper(), public, "platform")
        return cls(
            role=sim.role,
            merchants=merchants,
            merchant_mchid=sim.mchid,
            merchant_serial=serial,
            merchant_public=keys.certificate_key(cert, MERCHANT_CERT),
            public_key_id=sim.wechatpay_public_key_id,
            wechatpay_private=_private_key(sim.file(WECHATPAY_PRIVATE_KEY), WECHATPAY_PRIVATE_KEY),
            platform_serial=sim.platform_cert_serial,
            platform_private=_private_key(sim.file(PLATFORM_PRIVATE_KEY), PLATFORM_PRIVATE_KEY),
            cert_mode=sim.cert_mode,
        )

    def private_key_for(self, serial: str | None) -> tuple[str, rsa.RSAPrivateKey] | None:
        """The provider key a ``Wechatpay-Serial`` names, or None when it names none."""
        if serial == self.public_key_id:
            return self.public_key_id, self.wechatpay_private
        if serial and serial.upper() == self.platform_serial:
            return self.platform_serial, self.platform_private
        return None

    def default_signer(self) -> tuple[str, rsa.RSAPrivateKey]:
        """A merchant without a WeChat Pay public key gets platform-certificate signatures."""
        if self.cert_mode:
            return self.platform_serial, self.platform_private
        return self.public_key_id, self.wechatpay_private

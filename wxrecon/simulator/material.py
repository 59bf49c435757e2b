"""The simulator's directory: key material, certificates, ledger seed and ``client.env``.

Keys are generated in :mod:`.keygen` and parsed for serving in :mod:`.provider_keys`.

``init_dir`` writes everything a simulator and a client need; ``SimDir.load`` reads it back.
Layout (private keys are mode 0600)::

    sim.json                    mchid, serials, key id, mode, port
    apiclient_key.pem           merchant API private key (the client's)
    apiclient_cert.pem          merchant API certificate (serial = WXRECON_MCH_CERT_SERIAL)
    wechatpay_pub_key.pem       WeChat Pay public key (the client's, id PUB_KEY_ID_…)
    wechatpay_private_key.pem   its private half (the simulator's)
    platform_cert.pem           platform certificate (the client's, certificate mode)
    platform_private_key.pem    its private half (the simulator's)
    sp_apiclient_key.pem        the platform merchant's API private key (a second identity)
    sp_apiclient_cert.pem       its API certificate
    ledgers.json                optional ledger seed
    callers.toml                the client's platform caller profile (WXRECON_CALLERS_FILE)
    sealing.json                the client's keys sealing bal_account_no at rest (kept by
                                ``--force``: a database sealed with them stays readable)
    client.env                  every WXRECON_* setting a client needs (0600: holds those keys)

With a platform merchant (``sim init`` makes one) the first merchant is an ordinary one:
like the provider, the simulator answers ``403 NO_AUTH`` to a bill query from it and to a
reduction, its query or a balance query from the platform merchant. A directory without one
(``sp_mchid=None``) has a single merchant allowed everything (role ``any``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from wxrecon.filemodes import private_dir
from wxrecon.simulator.keygen import KeyMaterial
from wxrecon.simulator.layout import (
    CALLERS_TOML,
    CLIENT_ENV,
    DEFAULT_MCHID,
    DEFAULT_PORT,
    DEFAULT_SP_MCHID,
    LEDGERS_JSON,
    MERCHANT_CERT,
    MERCHANT_KEY,
    PLATFORM_CERT,
    PLATFORM_PRIVATE_KEY,
    SEALING_JSON,
    SIM_JSON,
    SP_MERCHANT_CERT,
    SP_MERCHANT_KEY,
    WECHATPAY_PRIVATE_KEY,
    WECHATPAY_PUBLIC_KEY,
    SimDirError,
)
from wxrecon.simulator.provider_keys import ProviderKeys
from wxrecon.store.sealed import key_setting
from wxrecon.wechatpay import keys
from wxrecon.wechatpay.errors import InvalidRequest
from wxrecon.wechatpay.keys import Credentials
from wxrecon.wechatpay.resources import check_bal_account_no, check_mchid

__all__ = [
    "CLIENT_ENV",
    "DEFAULT_MCHID",
    "DEFAULT_PORT",
    "LEDGERS_JSON",
    "MERCHANT_CERT",
    "MERCHANT_KEY",
    "PLATFORM_CERT",
    "PLATFORM_PRIVATE_KEY",
    "SIM_JSON",
    "WECHATPAY_PRIVATE_KEY",
    "WECHATPAY_PUBLIC_KEY",
    "KeyMaterial",
    "LedgerSeed",
    "ProviderKeys",
    "SimDir",
    "SimDirError",
    "init_dir",
]


@dataclass(frozen=True)
class LedgerSeed:
    mchid: str
    bal_account_no: str = field(repr=False)
    balance: int

    @classmethod
    def parse(cls, spec: str) -> LedgerSeed:
        """``MCHID:BAL_ACCOUNT_NO:BALANCE`` (the account number may itself contain ``:``)."""
        mchid, sep1, rest = spec.partition(":")
        bal, sep2, balance = rest.rpartition(":")
        if not (sep1 and sep2):
            raise SimDirError("a ledger is MCHID:BAL_ACCOUNT_NO:BALANCE")
        return cls.create(mchid, bal, balance)

    @classmethod
    def create(cls, mchid: object, bal_account_no: object, balance: object) -> LedgerSeed:
        try:
            check_mchid(mchid)
            check_bal_account_no(bal_account_no)
        except InvalidRequest as exc:
            raise SimDirError(f"ledger: {exc}") from None
        if isinstance(balance, str) and balance.strip().isdigit():
            balance = int(balance)
        if isinstance(balance, bool) or not isinstance(balance, int) or balance < 0:
            raise SimDirError("ledger: balance must be a non-negative integer number of fen")
        assert isinstance(mchid, str) and isinstance(bal_account_no, str)
        return cls(mchid, bal_account_no, balance)

    def to_json(self) -> dict[str, Any]:
        return {"mchid": self.mchid, "bal_account_no": self.bal_account_no, "balance": self.balance}


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o600 if private else 0o644)  # umask may have narrowed the public ones
    os.replace(tmp, path)


def init_dir(
    directory: str | Path,
    *,
    mchid: str = DEFAULT_MCHID,
    port: int = DEFAULT_PORT,
    host: str = "127.0.0.1",
    cert_mode: bool = False,
    ledgers: Iterable[LedgerSeed] = (),
    material: KeyMaterial | None = None,
    force: bool = False,
    sp_mchid: str | None = DEFAULT_SP_MCHID,
    sp_material: tuple[bytes, bytes] | None = None,
) -> SimDir:
    """Create a simulator directory; refuses to overwrite one unless ``force``.
    ``sp_mchid``: also a platform merchant (its own key, ``sp_material`` to reuse one), the
    first one then an ordinary merchant; None: one merchant allowed everything."""
    try:
        check_mchid(mchid)
        if sp_mchid is not None:
            check_mchid(sp_mchid)
    except InvalidRequest as exc:
        raise SimDirError(str(exc)) from None
    if sp_mchid == mchid:
        raise SimDirError("the platform merchant needs its own mchid")
    if not 0 <= port <= 65535:
        raise SimDirError(f"port {port} is out of range")
    root = Path(directory).expanduser().resolve()
    if (root / SIM_JSON).exists() and not force:
        raise SimDirError(f"{root} is already a simulator directory (use --force to replace it)")
    if root.exists() and not root.is_dir():
        raise SimDirError(f"{root} exists and is not a directory")
    ledgers = list(ledgers)
    if material is None or material.mchid != mchid:
        material = KeyMaterial.generate(mchid)
    private_dir(root)  # holds private keys
    _write(root / MERCHANT_KEY, material.merchant_key, private=True)
    _write(root / MERCHANT_CERT, material.merchant_cert)
    _write(root / WECHATPAY_PRIVATE_KEY, material.wechatpay_private_key, private=True)
    _write(root / WECHATPAY_PUBLIC_KEY, material.wechatpay_public_key)
    _write(root / PLATFORM_PRIVATE_KEY, material.platform_private_key, private=True)
    _write(root / PLATFORM_CERT, material.platform_cert)
    merchant_cert = keys.parse_certificate(material.merchant_cert)
    platform_cert = keys.parse_certificate(material.platform_cert)
    platform_merchant: dict[str, Any] = {}
    if sp_mchid is not None:
        sp_key, sp_cert = sp_material or KeyMaterial.merchant(sp_mchid)
        _write(root / SP_MERCHANT_KEY, sp_key, private=True)
        _write(root / SP_MERCHANT_CERT, sp_cert)
        serial = keys.certificate_serial(keys.parse_certificate(sp_cert))
        platform_merchant = {"sp_mchid": sp_mchid, "sp_cert_serial": serial}
    meta = {
        **platform_merchant,
        "role": "ordinary" if sp_mchid is not None else "any",
        "mchid": mchid,
        "mch_cert_serial": keys.certificate_serial(merchant_cert),
        "wechatpay_public_key_id": material.public_key_id,
        "platform_cert_serial": keys.certificate_serial(platform_cert),
        "cert_mode": cert_mode,
        "host": host,
        "port": port,
    }
    _write(root / SIM_JSON, (json.dumps(meta, indent=2) + "\n").encode())
    if ledgers:
        # Holds plaintext account numbers: private like the keys.
        data = json.dumps([seed.to_json() for seed in ledgers], indent=2) + "\n"
        _write(root / LEDGERS_JSON, data.encode(), private=True)
    elif (root / LEDGERS_JSON).exists():
        (root / LEDGERS_JSON).unlink()
    if not (root / SEALING_JSON).exists():
        _write(root / SEALING_JSON, (json.dumps(key_setting()) + "\n").encode(), private=True)
    sim = SimDir.load(root)
    sim.write_client_env()
    return sim


@dataclass(frozen=True)
class SimDir:
    """A loaded simulator directory (paths are absolute)."""

    path: Path
    mchid: str
    mch_cert_serial: str
    wechatpay_public_key_id: str
    platform_cert_serial: str
    cert_mode: bool
    host: str
    port: int
    role: str = "any"  # the first merchant's (layout.ROLES)
    sp_mchid: str | None = None  # the platform merchant, if any
    sp_cert_serial: str | None = None

    @classmethod
    def load(cls, directory: str | Path) -> SimDir:
        root = Path(directory).expanduser().resolve()
        try:
            meta = json.loads((root / SIM_JSON).read_text())
        except FileNotFoundError:
            raise SimDirError(
                f"{root} is not a simulator directory (run `sim init` first)"
            ) from None
        except (OSError, ValueError) as exc:
            raise SimDirError(f"{root / SIM_JSON}: unreadable ({type(exc).__name__})") from None
        try:
            sim = cls(
                path=root,
                mchid=str(meta["mchid"]),
                mch_cert_serial=str(meta["mch_cert_serial"]),
                wechatpay_public_key_id=str(meta["wechatpay_public_key_id"]),
                platform_cert_serial=str(meta["platform_cert_serial"]),
                cert_mode=bool(meta.get("cert_mode", False)),
                host=str(meta.get("host", "127.0.0.1")),
                port=int(meta.get("port", DEFAULT_PORT)),
                role=str(meta.get("role", "any")),
                sp_mchid=str(meta["sp_mchid"]) if meta.get("sp_mchid") else None,
                sp_cert_serial=str(meta["sp_cert_serial"]) if meta.get("sp_mchid") else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SimDirError(f"{root / SIM_JSON}: missing or bad field {exc}") from None
        for name in (
            MERCHANT_KEY,
            MERCHANT_CERT,
            WECHATPAY_PRIVATE_KEY,
            WECHATPAY_PUBLIC_KEY,
            PLATFORM_PRIVATE_KEY,
            PLATFORM_CERT,
        ):
            if not (root / name).is_file():
                raise SimDirError(f"{root} lacks {name} (run `sim init --force` to recreate it)")
        if sim.sp_mchid is not None and not (root / SP_MERCHANT_KEY).is_file():
            raise SimDirError(f"{root} lacks {SP_MERCHANT_KEY} (run `sim init --force`)")
        return sim

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        return f"http://{host}:{self.port}"

    def client_env(self, base_url: str | None = None) -> dict[str, str]:
        """Every ``WXRECON_*`` setting a client needs to talk to this simulator."""
        env = {
            "WXRECON_MCHID": self.mchid,
            "WXRECON_MCH_CERT_SERIAL": self.mch_cert_serial,
            "WXRECON_MCH_PRIVATE_KEY_PATH": str(self.file(MERCHANT_KEY)),
            "WXRECON_MCH_CERT_PATH": str(self.file(MERCHANT_CERT)),
        }
        if self.cert_mode:
            env["WXRECON_PLATFORM_CERT_PATHS"] = str(self.file(PLATFORM_CERT))
        else:
            env["WXRECON_WECHATPAY_PUBLIC_KEY_ID"] = self.wechatpay_public_key_id
            env["WXRECON_WECHATPAY_PUBLIC_KEY_PATH"] = str(self.file(WECHATPAY_PUBLIC_KEY))
        env["WXRECON_WECHATPAY_BASE_URL"] = base_url or self.base_url
        env["WXRECON_WECHATPAY_BACKUP_URL"] = ""
        if self.sp_mchid is not None:  # two identities: bills are the platform merchant's
            env["WXRECON_CALLERS_FILE"] = str(self.file(CALLERS_TOML))
            env["WXRECON_REDUCTION_CALLER"] = "default"
            env["WXRECON_BILL_CALLER"] = "platform"
        env.update(self.sealing_keys())
        return env

    def callers_toml(self) -> str:
        """The platform merchant as a caller profile (wxrecon/callers.py)."""
        lines = [
            "# Written by `wxrecon sim`: the platform merchant, which queries compensation bills.",
            "[callers.platform]",
            f'mchid = "{self.sp_mchid}"',
            f'cert_serial = "{self.sp_cert_serial}"',
            f"private_key_path = {json.dumps(str(self.file(SP_MERCHANT_KEY)))}",
            f"cert_path = {json.dumps(str(self.file(SP_MERCHANT_CERT)))}",
        ]
        if self.cert_mode:
            lines.append(f"platform_cert_paths = [{json.dumps(str(self.file(PLATFORM_CERT)))}]")
        else:
            lines.append(f'wechatpay_public_key_id = "{self.wechatpay_public_key_id}"')
            path = json.dumps(str(self.file(WECHATPAY_PUBLIC_KEY)))
            lines.append(f"wechatpay_public_key_path = {path}")
        return "\n".join(lines) + "\n"

    def sealing_keys(self) -> dict[str, str]:
        """WXRECON_DATA_KEYS and WXRECON_LOOKUP_KEY made by ``init`` (none in an older dir)."""
        try:
            keys = json.loads(self.file(SEALING_JSON).read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise SimDirError(
                f"{self.file(SEALING_JSON)}: unreadable ({type(exc).__name__})"
            ) from None
        names = ("WXRECON_DATA_KEYS", "WXRECON_LOOKUP_KEY")
        if not isinstance(keys, dict) or not all(isinstance(keys.get(n), str) for n in names):
            raise SimDirError(f"{self.file(SEALING_JSON)}: missing or bad keys")
        return {n: keys[n] for n in names}

    def write_client_env(self, base_url: str | None = None) -> Path:
        lines = [
            "# Written by `wxrecon sim`: the settings a client needs to talk to this simulator.",
            *(f"{k}={v}" for k, v in self.client_env(base_url).items()),
        ]
        target = self.file(CLIENT_ENV)
        if self.sp_mchid is not None:
            _write(self.file(CALLERS_TOML), self.callers_toml().encode())
        _write(target, ("\n".join(lines) + "\n").encode(), private=True)  # holds data keys
        return target

    def credentials(self, *, cert_mode: bool | None = None) -> Credentials:
        """The client's credentials (public-key mode unless this dir or ``cert_mode`` says so)."""
        use_cert = self.cert_mode if cert_mode is None else cert_mode
        return Credentials.load(
            mchid=self.mchid,
            cert_serial=self.mch_cert_serial,
            private_key_path=self.file(MERCHANT_KEY),
            public_key_id=None if use_cert else self.wechatpay_public_key_id,
            public_key_path=None if use_cert else self.file(WECHATPAY_PUBLIC_KEY),
            platform_cert_paths=[str(self.file(PLATFORM_CERT))] if use_cert else None,
            mch_cert_path=self.file(MERCHANT_CERT),
        )

    def platform_credentials(self, *, cert_mode: bool | None = None) -> Credentials:
        """The platform merchant's credentials (SimDirError when there is none)."""
        if self.sp_mchid is None or self.sp_cert_serial is None:
            raise SimDirError(f"{self.path} has no platform merchant")
        use_cert = self.cert_mode if cert_mode is None else cert_mode
        return Credentials.load(
            mchid=self.sp_mchid,
            cert_serial=self.sp_cert_serial,
            private_key_path=self.file(SP_MERCHANT_KEY),
            public_key_id=None if use_cert else self.wechatpay_public_key_id,
            public_key_path=None if use_cert else self.file(WECHATPAY_PUBLIC_KEY),
            platform_cert_paths=[str(self.file(PLATFORM_CERT))] if use_cert else None,
            mch_cert_path=self.file(SP_MERCHANT_CERT),
        )

    def ledger_seed(self) -> list[LedgerSeed]:
        target = self.file(LEDGERS_JSON)
        if not target.exists():
            return []
        try:
            rows = json.loads(target.read_text())
        except (OSError, ValueError) as exc:
            raise SimDirError(f"{target}: unreadable ({type(exc).__name__})") from None
        if not isinstance(rows, list):
            raise SimDirError(f"{target}: expected a JSON list of ledgers")
        out = []
        for row in rows:
            if not isinstance(row, Mapping):
                raise SimDirError(f"{target}: every ledger is an object")
            out.append(
                LedgerSeed.create(row.get("mchid"), row.get("bal_account_no"), row.get("balance"))
            )
        return out

    @cached_property
    def provider_keys(self) -> ProviderKeys:
        return ProviderKeys.load(self)

"""Caller profiles: the merchant identities wxrecon signs with, and which one an order uses.

The provider says who may call what: a special reduction, its query and the channel balance
are for an ordinary merchant, the compensation bill query for a platform merchant. So a
deployment may sign with several identities. The single-identity settings (``WXRECON_MCHID``,
…) form the profile ``default``; ``WXRECON_CALLERS_FILE`` names a TOML file with more::

    [callers.platform]
    mchid = "1900000009"
    cert_serial = "5157F09E…"
    private_key_path = "/etc/wxrecon/platform_key.pem"
    wechatpay_public_key_id = "PUB_KEY_ID_…"
    wechatpay_public_key_path = "/etc/wxrecon/wxp_pub.pem"

:func:`profiles_from` is pure (parsed TOML + settings -> profiles); only :func:`load_profiles`
reads the file. Every problem is one line naming the profile and the field.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wxrecon.config import Settings, SettingsError
from wxrecon.wechatpay.errors import InvalidRequest

DEFAULT = "default"
MAX_NAME = 32  # the ``caller`` column's width
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")
MAX_FILE_BYTES = 1 << 20
MAX_PROFILES = 100
MAX_PLATFORM_CERTS = 20

STRING_FIELDS = ("mchid", "cert_serial", "wechatpay_public_key_id")
PATH_FIELDS = ("private_key_path", "cert_path", "wechatpay_public_key_path")
FIELDS = frozenset((*STRING_FIELDS, *PATH_FIELDS, "platform_cert_paths"))
REQUIRED = ("mchid", "cert_serial", "private_key_path")

# How a credential message names a field: the setting for ``default``, the TOML key otherwise.
SETTING_OF = {
    "mchid": "WXRECON_MCHID",
    "cert_serial": "WXRECON_MCH_CERT_SERIAL",
    "private_key_path": "WXRECON_MCH_PRIVATE_KEY_PATH",
    "cert_path": "WXRECON_MCH_CERT_PATH",
    "wechatpay_public_key_id": "WXRECON_WECHATPAY_PUBLIC_KEY_ID",
    "wechatpay_public_key_path": "WXRECON_WECHATPAY_PUBLIC_KEY_PATH",
    "platform_cert_paths": "WXRECON_PLATFORM_CERT_PATHS",
}


class CallerError(SettingsError):
    """A caller profile (or the callers file) is malformed; one line naming it."""


@dataclass(frozen=True)
class Profile:
    """One merchant identity: its id, its signing key and the provider keys it trusts."""

    name: str
    mchid: str
    cert_serial: str
    private_key_path: Path | None
    cert_path: Path | None = None
    wechatpay_public_key_id: str | None = None
    wechatpay_public_key_path: Path | None = None
    platform_cert_paths: tuple[str, ...] = field(default_factory=tuple)

    def names(self, message: str) -> str:
        """A credential message about this profile: the ``default`` one names settings, the
        others ``caller 'name': field``."""
        if self.name == DEFAULT:
            return message
        for key, setting in sorted(SETTING_OF.items(), key=lambda kv: -len(kv[1])):
            message = message.replace(setting, key)
        return f"caller {self.name!r}: {message}"


def check_name(value: object, what: str = "caller") -> str:
    """A caller's name: 1-32 of a-z 0-9 _ - (InvalidRequest otherwise, value not echoed
    when it is not even a string)."""
    if not isinstance(value, str):
        raise InvalidRequest(f"{what} must be a string")
    if not 0 < len(value) <= MAX_NAME or not set(value) <= NAME_CHARS:
        raise InvalidRequest(f"{what} must be 1-{MAX_NAME} of a-z 0-9 _ -")
    return value


def default_profile(settings: Settings) -> Profile:
    return Profile(
        name=DEFAULT,
        mchid=settings.mchid,
        cert_serial=settings.mch_cert_serial,
        private_key_path=settings.mch_private_key_path,
        cert_path=settings.mch_cert_path,
        wechatpay_public_key_id=settings.wechatpay_public_key_id or None,
        wechatpay_public_key_path=settings.wechatpay_public_key_path,
        platform_cert_paths=tuple(settings.platform_cert_paths),
    )


def profiles_from(parsed: Mapping[str, Any], settings: Settings) -> dict[str, Profile]:
    """The profiles of a parsed callers file, with ``default`` from the settings (a file may
    not redefine it). CallerError names the first bad profile and field."""
    unknown = sorted(str(k)[:40] for k in parsed if k != "callers")
    if unknown:
        raise CallerError(f"WXRECON_CALLERS_FILE: unknown table(s): {', '.join(unknown[:5])}")
    tables = parsed.get("callers", {})
    if not isinstance(tables, Mapping):
        raise CallerError("WXRECON_CALLERS_FILE: callers must be a table of [callers.<name>]")
    if len(tables) > MAX_PROFILES:
        raise CallerError(f"WXRECON_CALLERS_FILE: at most {MAX_PROFILES} callers")
    profiles = {DEFAULT: default_profile(settings)}
    for name, table in tables.items():
        try:
            check_name(name, "the name")
        except InvalidRequest as exc:
            raise CallerError(f"WXRECON_CALLERS_FILE: caller {str(name)[:40]!r}: {exc}") from None
        if name == DEFAULT:
            raise CallerError(
                "WXRECON_CALLERS_FILE: caller 'default' is the WXRECON_MCHID settings; "
                "name the file's callers otherwise"
            )
        profiles[name] = _profile(name, table)
    return profiles


def _profile(name: str, table: object) -> Profile:
    def bad(why: str) -> CallerError:
        return CallerError(f"WXRECON_CALLERS_FILE: caller {name!r}: {why}")

    if not isinstance(table, Mapping):
        raise bad("must be a table")
    unknown = sorted(str(k)[:40] for k in table if k not in FIELDS)
    if unknown:
        raise bad(f"unknown field(s): {', '.join(unknown[:5])}")
    for key in REQUIRED:
        if not table.get(key):
            raise bad(f"{key} is not set")
    values: dict[str, Any] = {}
    for key in (*STRING_FIELDS, *PATH_FIELDS):
        value = table.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not 0 < len(value) <= 4096:
            raise bad(f"{key} must be a non-empty string")
        values[key] = Path(value) if key in PATH_FIELDS else value
    certs = table.get("platform_cert_paths", [])
    if not isinstance(certs, list) or not all(isinstance(p, str) and p for p in certs):
        raise bad("platform_cert_paths must be a list of paths")
    if len(certs) > MAX_PLATFORM_CERTS:
        raise bad(f"platform_cert_paths: at most {MAX_PLATFORM_CERTS}")
    if not certs and not (
        values.get("wechatpay_public_key_id") or values.get("wechatpay_public_key_path")
    ):
        raise bad(
            "no way to verify the provider (set wechatpay_public_key_id and "
            "wechatpay_public_key_path, or platform_cert_paths)"
        )
    return Profile(name=name, platform_cert_paths=tuple(certs), **values)


def parse_file(text: bytes) -> dict[str, Any]:
    """A callers file's TOML (CallerError on bad syntax or encoding, no content echoed)."""
    if len(text) > MAX_FILE_BYTES:
        raise CallerError(f"WXRECON_CALLERS_FILE: larger than {MAX_FILE_BYTES} bytes")
    try:
        return tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError:
        raise CallerError("WXRECON_CALLERS_FILE: not UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        where = str(exc).split("(", 1)[-1].rstrip(")") if "(" in str(exc) else "syntax"
        raise CallerError(f"WXRECON_CALLERS_FILE: not valid TOML ({where})") from None


def load_profiles(settings: Settings) -> dict[str, Profile]:
    """Every profile: ``default`` and, with WXRECON_CALLERS_FILE, the file's."""
    path = settings.callers_file
    if path is None:
        return {DEFAULT: default_profile(settings)}
    try:
        with open(path, "rb") as f:
            text = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise CallerError(f"WXRECON_CALLERS_FILE: cannot read {path} ({exc.strerror})") from None
    return profiles_from(parse_file(text), settings)


_LOADED: dict[int, tuple[Settings, dict[str, Profile]]] = {}


def profiles_of(settings: Settings) -> dict[str, Profile]:
    """:func:`load_profiles`, once per settings object (settings are frozen)."""
    found = _LOADED.get(id(settings))
    if found is None or found[0] is not settings:
        if len(_LOADED) > 8:
            _LOADED.clear()
        found = _LOADED[id(settings)] = (settings, load_profiles(settings))
    return found[1]


def default_for(settings: Settings, kind: object) -> str:
    """The caller of an order of ``kind`` that names none (WXRECON_<KIND>_CALLER)."""
    return settings.bill_caller if str(kind) == "bill" else settings.reduction_caller


def resolve(kind: object, caller: object, known: Mapping[str, Any], settings: Settings) -> str:
    """The caller an order of ``kind`` is signed by: ``caller`` when given, else the kind's
    default; InvalidRequest when it is not a known profile (checked before any write)."""
    name = default_for(settings, kind) if caller is None or caller == "" else caller
    name = check_name(name)
    if name not in known:
        raise InvalidRequest(f"unknown caller {name!r} (known: {', '.join(sorted(known))})")
    return name
